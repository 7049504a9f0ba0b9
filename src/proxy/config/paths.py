"""Relative paths in a config file mean the file's directory: resolved when it is loaded.

`access_log: [{path: logs/access.log}]` in /etc/proxy/proxy.yaml is /etc/proxy/logs/access.log,
whichever directory `proxy run` was started in, and still after the daemon's chdir("/"): the
keeper, its workers and every reload resolve against the same directory (`config_dir` of the
path they were given; `proxy run --daemon` makes that absolute before it detaches).

The paths, every path-valued field of the model (`proxy.config.model`):
  listeners[].access_log[].path   except "stdout" and "stderr"
  listeners[].tls.certificates[].cert and .key, listeners[].tls.client_ca
  listeners[].tls.on_demand.issuer.cert and .key
  (and the same in listeners[].filter_chains[].tls)
  clusters[].tls.ca, .cert and .key
  diagnostics.directory
  admin.socket                    so `proxy ctl -c FILE` finds the socket from anywhere
Listener and host addresses are not here: a `unix:` address must be absolute already.

This runs on the raw parsed data, before the structural and semantic checks, so they see the
paths as they will be used; a value of the wrong type is left for them to report.
"""

from __future__ import annotations

import os
from typing import Any

STREAMS = ("stdout", "stderr")  # access log targets that are not files


def config_dir(path: str) -> str:
    """The directory relative paths in the config file at `path` are resolved against."""
    return os.path.dirname(os.path.abspath(path))


def resolve(raw: Any, base_dir: str) -> None:
    """Make every relative path in `raw` (the parsed config) absolute against `base_dir`, in place."""
    if not isinstance(raw, dict):
        return
    for listener in _dicts(raw.get("listeners")):
        for log in _dicts(listener.get("access_log")):
            if log.get("path") not in STREAMS:
                _resolve_key(log, "path", base_dir)
        for tls in [listener.get("tls")] + [c.get("tls") for c in _dicts(listener.get("filter_chains"))]:
            if not isinstance(tls, dict):
                continue
            for cert in _dicts(tls.get("certificates")):
                _resolve_key(cert, "cert", base_dir)
                _resolve_key(cert, "key", base_dir)
            on_demand = tls.get("on_demand")
            issuer = on_demand.get("issuer") if isinstance(on_demand, dict) else None
            if isinstance(issuer, dict):
                _resolve_key(issuer, "cert", base_dir)
                _resolve_key(issuer, "key", base_dir)
            _resolve_key(tls, "client_ca", base_dir)
    for cluster in _dicts(raw.get("clusters")):
        tls = cluster.get("tls")
        if isinstance(tls, dict):
            for key in ("ca", "cert", "key"):
                _resolve_key(tls, key, base_dir)
    for key, field in (("diagnostics", "directory"), ("admin", "socket")):
        section = raw.get(key)
        if isinstance(section, dict):
            _resolve_key(section, field, base_dir)


def _resolve_key(mapping: dict[str, Any], key: str, base_dir: str) -> None:
    value = mapping.get(key)
    # 'unix:/run/x.sock' where a plain path belongs: the semantic check says so, unresolved.
    if isinstance(value, str) and value and not os.path.isabs(value) and not value.startswith("unix:"):
        mapping[key] = os.path.normpath(os.path.join(base_dir, value))


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []
