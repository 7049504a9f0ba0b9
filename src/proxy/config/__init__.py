"""Config: a YAML or JSON file becomes the frozen typed model, or a ConfigError listing every
problem in the file with its path and line.

    from proxy.config import load, load_text, ConfigError
    cfg = load("config/proxy.yaml")
"""

from proxy.config.errors import ConfigError, ConfigIssue
from proxy.config.loader import load, load_text, read
from proxy.config.model import Admin, Cluster, Config, Host, Listener, Logging, Runtime
from proxy.config.values import Address, Duration

__all__ = [
    "Address",
    "Admin",
    "Cluster",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "Duration",
    "Host",
    "Listener",
    "Logging",
    "Runtime",
    "load",
    "load_text",
    "read",
]
