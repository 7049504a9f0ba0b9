"""Unit tests for the admin API helpers, the in-process admin server and the `proxy ctl` client."""

from __future__ import annotations

import json
import os
import socket
import stat
from types import SimpleNamespace

import pytest
import trio

from proxy.admin import client
from proxy.admin.server import (
    REDACTED,
    AdminServer,
    HttpError,
    _parse_head,
    config_json,
    flatten_stats,
    is_secret_key,
    redact,
    task_tree,
    to_jsonable,
)
from proxy.config import load_text
from proxy.config.values import Address, Duration
from proxy.stats import ListenerStats
from proxy.upstream.cluster import Cluster

CONFIG = """
listeners:
  - {name: front, address: "127.0.0.1:0", protocol: tcp, cluster: up, idle_timeout: 250ms}
clusters:
  - name: up
    connect_timeout: 2m
    hosts:
      - {address: "127.0.0.1:7001", metadata: {api_key: abc, zone: a}}
      - {address: "127.0.0.1:7002", weight: 3}
"""


# ---------------------------------------------------------------- redaction / config


@pytest.mark.parametrize("name", ["secret", "client_secret", "password", "db_password", "token", "auth_token", "key", "tls_key", "api_key", "apikey", "private_key", "key_file", "Password"])
def test_secret_names(name):
    assert is_secret_key(name)


@pytest.mark.parametrize("name", ["keepalive", "monkey", "name", "hosts", "zone"])
def test_non_secret_names(name):
    assert not is_secret_key(name)


def test_redact_nested():
    value = {"a": 1, "tls": {"certificates": [{"cert": "a.pem", "key": "a.key"}]}, "token": {"deep": 1}, "list": [{"password": "x", "ok": "y"}]}
    assert redact(value) == {
        "a": 1,
        "tls": {"certificates": [{"cert": "a.pem", "key": REDACTED}]},
        "token": REDACTED,
        "list": [{"password": REDACTED, "ok": "y"}],
    }


def test_to_jsonable_durations_and_addresses():
    assert to_jsonable(Duration(0.25)) == "0.25s"
    assert to_jsonable(Duration(120.0)) == "120s"
    assert to_jsonable(Address.parse("unix:/tmp/x.sock")) == "unix:/tmp/x.sock"
    assert to_jsonable({"d": [Duration(1.0)], "n": None, "b": True}) == {"d": ["1s"], "n": None, "b": True}


def test_config_json_round_trips_through_json_and_redacts():
    config = load_text(CONFIG)
    out = config_json(config)
    json.dumps(out)  # plain JSON values only
    assert out["listeners"][0]["address"] == "127.0.0.1:0"
    assert out["listeners"][0]["idle_timeout"] == "0.25s"
    assert out["clusters"][0]["connect_timeout"] == "120s"
    assert out["clusters"][0]["hosts"][0]["metadata"] == {"api_key": REDACTED, "zone": "a"}
    assert out["clusters"][0]["hosts"][1]["weight"] == 3
    assert out["admin"] == {"socket": None, "allowed_uids": [], "metrics": None}


# ---------------------------------------------------------------- stats


def _worker(config_text: str = CONFIG) -> SimpleNamespace:
    config = load_text(config_text)
    clusters = {c.name: Cluster(c) for c in config.clusters}
    listener = SimpleNamespace(config=config.listeners[0], stats=ListenerStats(), address="127.0.0.1:4000")
    return SimpleNamespace(config=config, clusters=clusters, listeners=[listener], state="serving", drain_called=False)


def test_flatten_stats_names_and_values():
    worker = _worker()
    worker.listeners[0].stats.downstream_cx_total = 3
    worker.clusters["up"].stats.upstream_cx_total = 2
    worker.clusters["up"].hosts[1].stats.cx_total = 5
    flat = flatten_stats(worker.listeners, worker.clusters.values())
    assert flat["listener.front.downstream_cx_total"] == 3
    assert flat["cluster.up.upstream_cx_total"] == 2
    assert flat["cluster.up.host.127.0.0.1:7002.cx_total"] == 5
    assert flat["cluster.up.host.127.0.0.1:7001.cx_total"] == 0
    assert list(flat) == sorted(flat)
    filtered = flatten_stats(worker.listeners, worker.clusters.values(), "cx_total")
    assert filtered and all("cx_total" in k for k in filtered)
    assert "cluster.up.upstream_rq_total" not in filtered


# ---------------------------------------------------------------- task tree


def _task(name, *nurseries):
    return SimpleNamespace(name=name, child_nurseries=[SimpleNamespace(child_tasks=list(tasks)) for tasks in nurseries])


def test_task_tree_collapses_large_nurseries():
    conns = [_task(f"conn{i}") for i in range(120)]
    root = _task("root", [_task("signals"), _task("accept", conns[:70])], conns[70:])
    tree = task_tree(root, limit=50)
    assert tree["name"] == "root"
    assert [c["name"] for c in tree["children"][:2]] == ["signals", "accept"]
    accept = tree["children"][1]
    assert len(accept["children"]) == 50 and accept["omitted"] == 20
    assert len(tree["children"]) == 2 + 50  # second nursery: 50 of its 50
    assert "omitted" not in tree
    assert tree["children"][0] == {"name": "signals", "children": []}


async def test_task_tree_of_the_live_trio_tree():
    async def sleeper():
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        for _ in range(60):
            nursery.start_soon(sleeper, name="sleeper")
        await trio.testing.wait_all_tasks_blocked()
        tree = task_tree(trio.lowlevel.current_root_task())
        json.dumps(tree)

        def find(node):
            if node.get("omitted") == 10 and sum(c["name"] == "sleeper" for c in node["children"]) == 50:
                return True
            return any(find(c) for c in node["children"])

        assert find(tree)
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- request handling


def test_parse_head():
    method, target, version, headers = _parse_head(b"PUT /log_level?x=1 HTTP/1.1\r\nContent-Length: 3\r\nHost: a")
    assert (method, target, version) == ("PUT", "/log_level?x=1", "HTTP/1.1")
    assert headers == {"content-length": "3", "host": "a"}
    for bad in (b"GET /x", b"GET x HTTP/1.1", b"GET /x HTTP/2", b"GET /x HTTP/1.1\r\nno colon", b"GET /x HTTP/1.1\r\n X: y",
                b"GET /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2"):
        with pytest.raises(HttpError):
            _parse_head(bad)


def test_dispatch_endpoints():
    worker = _worker()
    worker.drain = lambda: setattr(worker, "drain_called", True)
    server = AdminServer(worker, "/nonexistent/admin.sock")
    status = server.handle("GET", "/status", b"")
    assert status["pid"] == os.getpid() and status["state"] == "serving" and status["listeners"] == 1 and status["generation"] == 1
    assert server.handle("GET", "/listeners", b"")[0]["name"] == "front"
    clusters = server.handle("GET", "/clusters", b"")
    assert clusters[0]["lb"] == "round_robin" and clusters[0]["hosts"][1]["weight"] == 3
    assert server.handle("GET", "/stats?filter=host", b"")
    with pytest.raises(HttpError) as err:
        server.handle("GET", "/nope", b"")
    assert err.value.status == 404
    with pytest.raises(HttpError) as err:
        server.handle("POST", "/status", b"")
    assert err.value.status == 405 and err.value.allow == "GET"
    with pytest.raises(HttpError) as err:
        server.handle("GET", "/drain", b"")
    assert err.value.status == 405
    assert server.handle("POST", "/clusters/up/hosts/127.0.0.1:7002/disable", b"") == {"cluster": "up", "host": "127.0.0.1:7002", "enabled": False}
    assert worker.clusters["up"].hosts[1].enabled is False
    assert [worker.clusters["up"].balancer.choose().address.port for _ in range(4)] == [7001] * 4
    server.handle("POST", "/clusters/up/hosts/127.0.0.1%3A7002/enable", b"")
    assert worker.clusters["up"].hosts[1].enabled is True
    for target in ("/clusters/nope/hosts/127.0.0.1:7002/enable", "/clusters/up/hosts/127.0.0.1:9/enable"):
        with pytest.raises(HttpError) as err:
            server.handle("POST", target, b"")
        assert err.value.status == 404
    with pytest.raises(HttpError) as err:
        server.handle("PUT", "/log_level", b'{"level": "loud"}')
    assert err.value.status == 400
    assert server.handle("POST", "/drain", b"") == {"draining": True} and worker.drain_called


def test_log_level_changes_the_proxy_logger():
    import logging

    server = AdminServer(_worker(), "/nonexistent/admin.sock")
    logger = logging.getLogger("proxy")
    old = logger.level
    try:
        assert server.handle("PUT", "/log_level", b'{"level": "debug"}') == {"level": "debug"}
        assert logger.level == logging.DEBUG
        assert server.handle("PUT", "/log_level?level=error", b"") == {"level": "error"}
        assert logger.level == logging.ERROR
    finally:
        logger.setLevel(old)


async def test_served_over_the_socket_with_keep_alive(tmp_path):
    path = str(tmp_path / "admin.sock")
    worker = _worker()
    server = AdminServer(worker, path)
    server.bind()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve)
        # two requests, one a PUT with a body, on one keep-alive connection
        stream = await trio.open_unix_socket(path)
        async with stream:
            body = b'{"level": "info"}'
            await stream.send_all(b"GET /status HTTP/1.1\r\nHost: a\r\n\r\nPUT /log_level HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            data = b""
            with trio.fail_after(5):
                while data.count(b"HTTP/1.1 200") < 2 or not data.endswith(b"}\n"):
                    data += await stream.receive_some()
            assert b'"state": "serving"' in data and b'"level": "info"' in data
        # the blocking client, from a thread
        result = await trio.to_thread.run_sync(client.request, path, "GET", "/clusters")
        assert result[0]["name"] == "up"
        with pytest.raises(client.CtlError, match="no such endpoint"):
            await trio.to_thread.run_sync(client.request, path, "GET", "/bogus")
        # a garbage request gets a 400 and does not end the server
        stream = await trio.open_unix_socket(path)
        async with stream:
            await stream.send_all(b"nonsense\r\n\r\n")
            assert b"400 Bad Request" in await stream.receive_some()
        assert (await trio.to_thread.run_sync(client.request, path, "GET", "/status"))["pid"] == os.getpid()
        nursery.cancel_scope.cancel()
    assert not os.path.exists(path)


async def test_refuses_uids_not_allowed(tmp_path, caplog):
    path = str(tmp_path / "admin.sock")
    server = AdminServer(_worker(), path)
    server.allowed = {12345}  # not us
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(client.CtlError, match=f"uid {os.getuid()} is not allowed.*403"):
            await trio.to_thread.run_sync(client.request, path, "GET", "/status")
        nursery.cancel_scope.cancel()
    assert any(r.getMessage() == "admin.refused" and r.fields == {"uid": os.getuid()} for r in caplog.records)


def test_peer_uid_of_a_socketpair():
    from proxy.admin.server import peer_uid

    a, b = socket.socketpair()
    with a, b:
        assert peer_uid(a) == os.getuid()


# ---------------------------------------------------------------- client


def test_client_not_running(tmp_path):
    with pytest.raises(client.CtlError, match="not running \\(no admin socket at .*missing.sock\\)"):
        client.request(str(tmp_path / "missing.sock"))


def test_client_refused_by_a_dead_socket_file(tmp_path):
    path = str(tmp_path / "dead.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()
    with pytest.raises(client.CtlError, match="not running"):
        client.request(path)


def test_table_alignment():
    out = client.table(["NAME", "VALUE"], [["a", 1], ["longer.name", 22]])
    assert out.splitlines() == ["NAME         VALUE", "a            1", "longer.name  22"]


def test_render_tasks_and_clusters():
    tree = {"name": "root", "children": [{"name": "child", "children": []}], "omitted": 3}
    assert client.render("tasks", tree).splitlines() == ["root", "  child", "  ... 3 more tasks"]
    clusters = [{"name": "up", "lb": "round_robin", "stats": {}, "hosts": [
        {"address": "h:1", "weight": 2, "enabled": False, "healthy": True, "stats": {"cx_active": 1, "cx_total": 4}}]}]
    lines = client.render("clusters", clusters).splitlines()
    assert lines[0].split() == ["CLUSTER", "HOST", "WEIGHT", "ENABLED", "HEALTHY", "ACTIVE", "TOTAL"]
    assert lines[1].split() == ["up", "h:1", "2", "no", "yes", "1", "4"]


def test_socket_path_from_config(tmp_path):
    import argparse

    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"admin: {{socket: {tmp_path}/a.sock}}\n")
    assert client.socket_path(argparse.Namespace(socket=None, config=str(cfg))) == f"{tmp_path}/a.sock"
    assert client.socket_path(argparse.Namespace(socket="/x.sock", config=str(cfg))) == "/x.sock"
    assert client.socket_path(argparse.Namespace(socket=None, config=None)) == client.DEFAULT_SOCKET
