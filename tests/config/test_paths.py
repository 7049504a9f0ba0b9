"""Relative paths in a config file mean the file's directory (proxy.config.paths), whatever the
directory the proxy was started in."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from proxy.config import ConfigError, load, load_text

CONFIG = """\
admin:
  socket: run/admin.sock
listeners:
  - name: web
    address: 127.0.0.1:8080
    protocol: http1
    route: main
    access_log:
      - {path: logs/access.log}
      - {path: ../shared/./access.log}
      - {path: /var/log/proxy/access.log}
      - {path: stdout}
      - {path: stderr}
      - {}
routes:
  main:
    virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: /}, direct_response: {status: 200}}]}]
diagnostics:
  directory: diag
"""


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config in tmp/etc/proxy/, loaded from tmp/launch/ by a relative path."""
    (tmp_path / "etc" / "proxy").mkdir(parents=True)
    (tmp_path / "launch").mkdir()
    monkeypatch.chdir(tmp_path / "launch")
    return tmp_path


def test_relative_paths_mean_the_config_files_directory(elsewhere: Path) -> None:
    (elsewhere / "etc" / "proxy" / "proxy.yaml").write_text(CONFIG)
    config = load("../etc/proxy/proxy.yaml")
    here = str(elsewhere / "etc" / "proxy")
    assert [log.path for log in config.listeners[0].access_log] == [
        f"{here}/logs/access.log",
        f"{elsewhere}/etc/shared/access.log",
        "/var/log/proxy/access.log",  # absolute: as written
        "stdout",  # streams, not files
        "stderr",
        "stdout",  # the default
    ]
    assert config.diagnostics is not None and config.diagnostics.directory == f"{here}/diag"
    assert config.admin.socket == f"{here}/run/admin.sock"


def test_json_too(elsewhere: Path) -> None:
    path = elsewhere / "etc" / "proxy" / "proxy.json"
    path.write_text(json.dumps({"diagnostics": {"directory": "diag"}}))
    assert load(os.path.relpath(path)).diagnostics.directory == f"{elsewhere}/etc/proxy/diag"  # type: ignore[union-attr]


def test_text_without_a_directory_keeps_them_as_written(elsewhere: Path) -> None:
    config = load_text(CONFIG.replace("socket: run/admin.sock", "socket: /run/admin.sock"))
    assert config.listeners[0].access_log[0].path == "logs/access.log"
    assert load_text(CONFIG, base_dir="/etc/proxy").listeners[0].access_log[0].path == "/etc/proxy/logs/access.log"


def test_an_admin_socket_written_as_an_address_is_still_an_error(elsewhere: Path) -> None:
    (elsewhere / "etc" / "proxy" / "proxy.yaml").write_text("admin:\n  socket: unix:run/admin.sock\n")
    with pytest.raises(ConfigError) as info:
        load("../etc/proxy/proxy.yaml")
    [issue] = info.value.issues
    assert (issue.path, issue.line) == ("admin.socket", 2)
    assert issue.message == "admin socket must be an absolute path, got 'unix:run/admin.sock'"


def test_a_resolved_admin_socket_longer_than_a_unix_path_is_refused(elsewhere: Path) -> None:
    deep = elsewhere / "etc" / "proxy" / ("d" * 60)
    deep.mkdir()
    (deep / "proxy.yaml").write_text("admin:\n  socket: " + "s" * 40 + ".sock\n")
    with pytest.raises(ConfigError) as info:
        load(deep / "proxy.yaml")
    [issue] = info.value.issues
    assert (issue.path, issue.line) == ("admin.socket", 2)
    assert issue.message.startswith("admin socket path is longer than 107 bytes: '/")


def test_tls_files_are_resolved_too(elsewhere: Path) -> None:
    import trustme

    here = elsewhere / "etc" / "proxy"
    (here / "certs").mkdir()
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(here / "certs" / "clients.pem"))
    cert = ca.issue_cert("a.example.com")
    cert.cert_chain_pems[0].write_to_path(str(here / "certs" / "a.pem"))
    cert.private_key_pem.write_to_path(str(here / "certs" / "a.key"))
    tls = "    tls: {certificates: [{cert: certs/a.pem, key: certs/a.key}], client_certificate: require, client_ca: certs/clients.pem}\n"
    (here / "proxy.yaml").write_text(CONFIG.replace("    access_log:\n", tls + "    access_log:\n", 1))
    config = load("../etc/proxy/proxy.yaml")
    listener_tls = config.listeners[0].tls
    assert listener_tls is not None
    assert (listener_tls.certificates[0].cert, listener_tls.certificates[0].key) == (f"{here}/certs/a.pem", f"{here}/certs/a.key")
    assert listener_tls.client_ca == f"{here}/certs/clients.pem"
