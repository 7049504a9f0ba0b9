"""Valid configs load into the typed, frozen model."""

from __future__ import annotations

import json
import socket
from textwrap import dedent

import pytest

from proxy.config import Address, Config, ConfigError, ConfigIssue, Duration, load, load_text
from tests.config.helpers import VALID

FULL = """\
admin:
  socket: /run/proxy/admin.sock
runtime:
  workers: auto
  drain_timeout: 45s
logging:
  level: debug
  format: json
listeners:
  - name: web
    address: 0.0.0.0:8080
    protocol: tcp
    cluster: backend
    max_connections: 10000
    idle_timeout: 5m
    max_connect_attempts: 2
    relay: splice
    backlog: 4096
  - name: v6
    address: "[::1]:8443"
    protocol: tcp
    cluster: backend
    idle_timeout: null
  - name: local
    address: unix:/run/proxy/local.sock
    protocol: tcp
    cluster: other
clusters:
  - name: backend
    lb: random
    connect_timeout: 250ms
    hosts:
      - address: 10.0.0.1:80
        weight: 3
        metadata: {zone: a, rack: "7"}
      - address: backend.internal:80
  - name: other
    hosts:
      - address: unix:/run/app.sock
"""


def test_full_config_round_trip() -> None:
    cfg = load_text(FULL, filename="full.yaml")
    assert isinstance(cfg, Config)
    assert cfg.admin.socket == "/run/proxy/admin.sock"
    assert cfg.runtime.workers == "auto"
    assert isinstance(cfg.runtime.drain_timeout, Duration) and isinstance(cfg.runtime.drain_timeout, float)
    assert cfg.runtime.drain_timeout == 45.0
    assert (cfg.logging.level, cfg.logging.format) == ("debug", "json")

    web, v6, local = cfg.listeners
    assert (web.name, web.protocol, web.cluster) == ("web", "tcp", "backend")
    assert isinstance(web.address, Address)
    assert (web.address.host, web.address.port, web.address.family) == ("0.0.0.0", 8080, socket.AF_INET)
    assert (web.max_connections, web.max_connect_attempts, web.relay, web.backlog) == (10000, 2, "splice", 4096)
    assert web.idle_timeout == 300.0 and isinstance(web.idle_timeout, Duration)
    assert (v6.address.host, v6.address.port, v6.address.family) == ("::1", 8443, socket.AF_INET6)
    assert v6.idle_timeout is None
    assert local.address.is_unix and local.address.path == "/run/proxy/local.sock"
    assert local.address.family == socket.AF_UNIX
    # Defaults fill what the file leaves out.
    assert (v6.max_connections, v6.max_connect_attempts, v6.relay, v6.backlog) == (None, 3, "auto", 1024)
    assert local.idle_timeout == 3600.0

    backend = cfg.cluster("backend")
    assert backend.lb == "random"
    assert backend.connect_timeout == pytest.approx(0.25) and isinstance(backend.connect_timeout, Duration)
    first, second = backend.hosts
    assert (first.address.host, first.address.port, first.weight) == ("10.0.0.1", 80, 3)
    assert first.metadata == {"zone": "a", "rack": "7"}
    assert (second.address.host, second.address.family, second.weight) == ("backend.internal", socket.AF_UNSPEC, 1)
    other = cfg.cluster("other")
    assert (other.lb, other.connect_timeout) == ("round_robin", 5.0)  # Envoy's default
    assert other.hosts[0].address.path == "/run/app.sock"

    with pytest.raises(AttributeError):
        cfg.runtime = cfg.runtime  # type: ignore[misc]  # frozen


def test_json_round_trip_matches_yaml() -> None:
    import yaml

    as_json = json.dumps(yaml.safe_load(FULL))
    assert load_text(as_json, filename="full.json", fmt="json") == load_text(FULL)


def test_empty_file_is_all_defaults() -> None:
    for text in ("", "\n", "# only a comment\n", "~\n", "---\n"):
        cfg = load_text(text, filename="empty.yaml")
        assert cfg == Config()
    assert load_text("", fmt="json") == Config()
    cfg = Config()
    assert (cfg.runtime.workers, cfg.runtime.drain_timeout, cfg.listeners, cfg.clusters) == (1, 30.0, [], [])


def test_load_from_files(tmp_path) -> None:
    yaml_file = tmp_path / "proxy.yaml"
    yaml_file.write_text(VALID)
    json_file = tmp_path / "proxy.json"
    json_file.write_text(json.dumps({"clusters": [{"name": "back", "hosts": [{"address": "10.0.0.1:80"}]}]}))
    assert load(yaml_file).listeners[0].cluster == "back"
    assert load(str(json_file)).clusters[0].hosts[0].address.port == 80
    # A UTF-8 byte order mark is fine, for JSON too.
    json_file.write_bytes(b"\xef\xbb\xbf" + json_file.read_bytes())
    assert load(json_file).clusters[0].name == "back"


def test_format_follows_filename_unless_given() -> None:
    with pytest.raises(ConfigError) as info:  # YAML text parsed as JSON: a JSON syntax error
        load_text(VALID, filename="x.json")
    assert "invalid JSON" in str(info.value)
    assert load_text('{"logging": {"level": "error"}}', filename="x.json").logging.level == "error"
    assert load_text('{"logging": {"level": "error"}}', filename="x.txt", fmt="json").logging.level == "error"
    with pytest.raises(ValueError, match="unknown config format"):
        load_text("", fmt="toml")  # type: ignore[arg-type]


def test_anchors_aliases_and_merge_keys() -> None:
    cfg = load_text(
        dedent("""\
        clusters:
          - name: a
            lb: random
            connect_timeout: 2s
            hosts: &hosts
              - address: 10.0.0.1:80
              - address: 10.0.0.2:80
          - &b
            name: b
            hosts: *hosts
          - <<: *b
            name: c
            connect_timeout: 3s
          - <<: [{lb: random, connect_timeout: 4s}, {lb: round_robin, name: zzz}]
            name: d
            hosts: [{address: "10.0.0.9:80"}]
        """)
    )
    a, b, c, d = cfg.clusters
    assert [h.address.text for h in b.hosts] == ["10.0.0.1:80", "10.0.0.2:80"] == [h.address.text for h in a.hosts]
    assert (c.name, c.connect_timeout, len(c.hosts)) == ("c", 3.0, 2)  # own keys beat merged ones
    assert (d.name, d.lb, d.connect_timeout) == ("d", "random", 4.0)  # the first merged mapping wins


def test_issue_and_error_text() -> None:
    issue = ConfigIssue("clusters[1].hosts[0].address", "bad", 12, "proxy.yaml")
    assert str(issue) == "proxy.yaml:12: clusters[1].hosts[0].address: bad"
    no_line = ConfigIssue("<root>", "cannot read", None, "proxy.json")
    assert str(no_line) == "proxy.json: <root>: cannot read"
    error = ConfigError([issue, no_line])
    assert error.issues == [issue, no_line]
    assert str(error) == f"{issue}\n{no_line}"
