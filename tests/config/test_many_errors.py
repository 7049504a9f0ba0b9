"""One config with many different errors: all are reported at once, each at its path and line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from proxy.config import ConfigError, load
from proxy.config import loader as loader_module

BAD = Path(__file__).parent / "bad"

MANY = """\
admin:
  socket: unix:proxy.sock
runtime:
  workers: 0
  drain_timeout: 5 parsecs
logging:
  level: verbose
listeners:
  - name: web
    address: 0.0.0.0:8080
    protocol: tcp
    cluster: backend
    backlog: true
  - name: web
    address: 0.0.0.0:8080
    protocol: tcp
    cluster: nowhere
  - name: admin-in
    address: nohost
    protocol: tcp
clusters:
  - name: backend
    lb: roundrobin
    conect_timeout: 2s
    hosts:
      - address: 10.0.0.1:80
        weight: -1
      - address: 1.2.3.4:99999
      - address: 10.0.0.1:80
  - name: backend
    hosts: []
  - name: empty
    name: again
"""

# (path, line, words in the message): the line is checked against the text too.
EXPECTED = [
    ("admin.socket", 2, "absolute path"),
    ("runtime.workers", 4, "expected an integer >= 1 or 'auto', got 0"),
    ("runtime.drain_timeout", 5, "invalid duration '5 parsecs'"),
    ("logging.level", 7, "expected one of 'debug', 'info', 'warning', 'error', got 'verbose'"),
    ("listeners[0].backlog", 13, "got a boolean (true)"),
    ("listeners[1].name", 14, "duplicate listener name 'web' (first at listeners[0].name)"),
    ("listeners[1].address", 15, "duplicate listener address '0.0.0.0:8080' (first at listeners[0].address)"),
    ("listeners[1].cluster", 17, "unknown cluster 'nowhere'; defined clusters: backend, empty"),
    ("listeners[2]", 18, "a tcp listener needs a 'cluster'"),
    ("listeners[2].address", 19, "invalid address 'nohost'"),
    ("clusters[0].lb", 23, "did you mean 'round_robin'?"),
    ("clusters[0].conect_timeout", 24, "unknown key 'conect_timeout'; did you mean 'connect_timeout'?"),
    ("clusters[0].hosts[0].weight", 27, "expected an integer from 1 to 1000000, got -1"),
    ("clusters[0].hosts[1].address", 28, "port 99999 is out of range"),
    ("clusters[0].hosts[2].address", 29, "duplicate host address '10.0.0.1:80' (first at clusters[0].hosts[0].address)"),
    ("clusters[1].name", 30, "duplicate cluster name 'backend' (first at clusters[0].name)"),
    ("clusters[1].hosts", 31, "needs at least 1 item"),
    ("clusters[2]", 32, "missing required key 'hosts'"),
    ("clusters[2].name", 33, "duplicate key 'name' (first on line 32)"),
]


def _check(error: ConfigError, text: str, filename: str) -> None:
    lines = text.splitlines()
    got = [(issue.path, issue.line) for issue in error.issues]
    assert got == [(path, line) for path, line, _ in EXPECTED], "\n" + str(error)
    for issue, (path, line, words) in zip(error.issues, EXPECTED, strict=True):
        assert words in issue.message, issue
        assert issue.filename == filename
        # The line really is where the path's key (or list item) is written.
        last = path.rsplit(".", 1)[-1].split("[")[0] if not path.endswith("]") else "- "
        assert last in lines[line - 1], (issue, lines[line - 1])
    assert len(str(error).splitlines()) == len(EXPECTED)


@pytest.mark.parametrize("yaml_loader", ["libyaml", "python"])
def test_every_error_is_reported_with_path_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, yaml_loader: str) -> None:
    if yaml_loader == "python":
        monkeypatch.setattr(loader_module, "_YamlLoader", yaml.SafeLoader)
    path = tmp_path / "many.yaml"
    path.write_text(MANY)
    with pytest.raises(ConfigError) as info:
        load(path)
    _check(info.value, MANY, str(path))


def test_json_file_errors_from_fixture() -> None:
    path = BAD / "unknown_cluster.json"
    with pytest.raises(ConfigError) as info:
        load(path)
    assert [(i.path, i.line, i.message) for i in info.value.issues] == [
        ("clusters[0].hosts[0].address", None, "invalid address 'unix:relative': a unix socket path must be absolute, e.g. 'unix:/run/proxy.sock'"),
        ("listeners[0].cluster", None, "unknown cluster 'api'; defined clusters: backend"),
        ("listeners[0].idle_timeout", None, "duration 5 needs a unit, e.g. '5s' or '5ms'"),
        ("runtime.workers", None, "expected an integer >= 1 or 'auto', got 'all'"),
    ]
    assert str(info.value.issues[1]) == f"{path}: listeners[0].cluster: unknown cluster 'api'; defined clusters: backend"


def test_yaml_syntax_error_from_fixture() -> None:
    path = BAD / "syntax.yaml"
    with pytest.raises(ConfigError) as info:
        load(path)
    [issue] = info.value.issues
    assert (issue.path, issue.line) == ("<root>", 6)
    assert issue.message.startswith("invalid YAML:")
