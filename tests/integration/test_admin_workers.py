"""Every admin endpoint with `runtime.workers: 2` against a real `proxy run`: the keeper's one
answer adds up what counts (requests, connections, open connections) and takes properties
(weights, enabled, health, config, levels) once, `?worker=I` is that worker's own view, and
where the workers disagree the answer says so per worker."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import trio

from proxy.admin.client import exchange
from tests.integration.harness import ProxyProcess, connect, echo_handler, promtool_check, read_all, running_proxy, start_server
from tests.integration.http_upstream import HttpUpstream
from tests.integration.test_admin import ctl
from tests.integration.test_metrics import _http, _metrics_address


def _config(tmp_path: Any, api: list[tuple[str, int]], echo: str) -> dict[str, Any]:
    return {
        "logging": {"level": "info"},
        "admin": {"socket": str(tmp_path / "admin.sock"), "metrics": "127.0.0.1:0"},
        "runtime": {"workers": 2, "drain_timeout": "5s"},
        "listeners": [
            {"name": "http", "address": "127.0.0.1:0", "protocol": "http1", "route": "main"},
            {"name": "tcp", "address": "127.0.0.1:0", "protocol": "tcp", "cluster": "up"},
        ],
        "routes": {"main": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "cluster": "api"}]}]}},
        "clusters": [
            {"name": "api", "hosts": [{"address": address, "weight": weight} for address, weight in api]},
            {"name": "up", "hosts": [{"address": echo}]},
        ],
    }


async def _admin(proxy: ProxyProcess, method: str, target: str) -> tuple[int, Any]:
    path = str(proxy.config_path.parent / "admin.sock")
    return await trio.to_thread.run_sync(lambda: exchange(path, method, target, None, 30))


async def _get(proxy: ProxyProcess, target: str) -> Any:
    code, body = await _admin(proxy, "GET", target)
    assert code == 200, (target, code, body)
    return body


def _samples(text: str) -> dict[str, float]:
    return {key: float(value) for key, _, value in (line.rpartition(" ") for line in text.splitlines() if line and not line.startswith("#"))}


async def _request(proxy: ProxyProcess) -> None:
    """One request on its own connection, so the kernel spreads them over both workers."""
    stream = await connect(proxy.address("http"))
    async with stream:
        await stream.send_all(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await read_all(stream)).startswith(b"HTTP/1.1 200 ")


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not await predicate():
            await trio.sleep(0.05)


async def _per_worker(proxy: ProxyProcess, target: str) -> list[Any]:
    return [await _get(proxy, f"{target}{'&' if '?' in target else '?'}worker={i}") for i in (0, 1)]


async def _start(nursery: Any, tmp_path: Any) -> tuple[dict[str, Any], HttpUpstream, HttpUpstream, str]:
    a, b = HttpUpstream("a"), HttpUpstream("b")
    await a.start(nursery)
    await b.start(nursery)
    echo = await start_server(nursery, echo_handler)
    return _config(tmp_path, [(a.address, 3), (b.address, 1)], echo), a, b, echo


async def test_counters_add_up_over_workers_and_weights_stay_as_configured(nursery, tmp_path):
    config, a, b, _ = await _start(nursery, tmp_path)
    async with running_proxy(config, tmp_path) as proxy:
        # requests until both workers served some (each on its own connection: the kernel picks)
        sent = 0
        while sent < 10 or 0 in [s.get("listener.http.downstream_rq_total", 0) for s in await _per_worker(proxy, "/stats?filter=downstream_rq_total")]:
            assert sent < 100, "every request went to one worker"
            await _request(proxy)
            sent += 1

        async def all_counted() -> bool:
            return (await _get(proxy, "/stats"))["listener.http.downstream_rq_total"] == sent

        await _until(all_counted)
        total = await _get(proxy, "/stats")
        w0, w1 = await _per_worker(proxy, "/stats")
        assert total["listener.http.downstream_rq_2xx"] == total["listener.http.downstream_rq_code.200"] == sent
        assert total["cluster.api.upstream_rq_total"] == total["listener.http.downstream_rq_time_count"] == sent
        assert total[f"cluster.api.host.{a.address}.cx_total"] + total[f"cluster.api.host.{b.address}.cx_total"] == a.connections + b.connections
        assert 0 < w0["listener.http.downstream_rq_total"] < sent
        for key, value in total.items():  # every number of /stats is a count: the two workers' add up
            assert value == pytest.approx(w0.get(key, 0) + w1.get(key, 0)), key

        # /listeners and /clusters: counts add up, the weights are the config's
        listeners = {lr["name"]: lr for lr in await _get(proxy, "/listeners")}
        assert listeners["http"]["stats"]["downstream_rq_total"] == sent and listeners["http"]["address"] == proxy.addresses["http"]
        own = [{lr["name"]: lr for lr in answer} for answer in await _per_worker(proxy, "/listeners")]
        assert [o["http"]["stats"]["downstream_rq_total"] for o in own] == [w0["listener.http.downstream_rq_total"], w1["listener.http.downstream_rq_total"]]
        clusters = await _get(proxy, "/clusters")
        api = clusters[0]
        assert [(h["address"], h["weight"], h["enabled"], h["healthy"]) for h in api["hosts"]] == [(a.address, 3, True, True), (b.address, 1, True, True)]
        assert "per_worker" not in json.dumps(clusters)
        assert api["stats"]["upstream_rq_total"] == sent
        # ?worker=I: that worker's own /clusters (was: the sum, whatever I said)
        for own, stats in zip(await _per_worker(proxy, "/clusters"), (w0, w1), strict=True):
            assert own[0]["stats"]["upstream_rq_total"] == stats["cluster.api.upstream_rq_total"] < sent
            assert [h["weight"] for h in own[0]["hosts"]] == [3, 1]
        lines = (await ctl(str(tmp_path / "admin.sock"), "clusters")).stdout.splitlines()
        assert lines[1].split()[:5] == ["api", a.address, "3", "yes", "yes"], lines

        # /metrics: counters and histograms add up, the weight gauge is the config's, uptime per worker
        text = (await _get(proxy, "/metrics"))
        assert promtool_check(text).returncode == 0, promtool_check(text).stdout
        m = _samples(text)
        m0, m1 = (_samples(t) for t in await _per_worker(proxy, "/metrics"))
        http = '{listener="http"}'
        assert m[f"proxy_listener_downstream_rq_total{http}"] == sent
        assert m[f"proxy_listener_downstream_rq_time_seconds_count{http}"] == sent
        assert m['proxy_listener_downstream_rq_time_seconds_bucket{listener="http",le="+Inf"}'] == sent
        assert m['proxy_listener_downstream_rq_code_total{listener="http",code="200"}'] == sent
        assert m[f'proxy_host_weight{{cluster="api",host="{a.address}"}}'] == 3 and m[f'proxy_host_weight{{cluster="api",host="{b.address}"}}'] == 1
        assert m[f'proxy_host_enabled{{cluster="api",host="{a.address}"}}'] == 1
        assert m['proxy_state{state="serving"}'] == 1 and m[f'proxy_info{{version="{(await _get(proxy, "/status"))["version"]}"}}'] == 1
        assert {k for k in m if k.startswith("proxy_uptime_seconds")} == {'proxy_uptime_seconds{worker="0"}', 'proxy_uptime_seconds{worker="1"}'}
        assert m["proxy_workers"] == 2 and m["proxy_upgrade_generation"] == 1  # the keeper's own families, once
        assert "proxy_workers" not in m0 and "proxy_uptime_seconds" in m0  # ?worker=I: that worker's own text
        for key in m0.keys() | m1.keys():
            name = key.split("{", 1)[0]
            if name.endswith(("_total", "_bucket", "_count", "_sum")):
                assert m[key] == pytest.approx(m0.get(key, 0) + m1.get(key, 0)), key
            elif name in ("proxy_host_weight", "proxy_host_enabled", "proxy_host_healthy", "proxy_info", "proxy_state"):
                assert m[key] == m0[key] == m1[key], key
        # the metrics listener gives the same one view
        listener = await _metrics_address(proxy)
        status, _, body = await _http(listener, "/metrics")
        assert status == 200 and _samples(body.decode())[f"proxy_listener_downstream_rq_total{http}"] == sent
        status, _, body = await _http(listener, "/metrics?worker=1")
        assert status == 200 and _samples(body.decode())[f"proxy_listener_downstream_rq_total{http}"] == w1["listener.http.downstream_rq_total"]
        status, _, body = await _http(listener, "/metrics?worker=5")
        assert status == 404 and b"no worker with index 5" in body


async def test_open_connections_add_up_over_workers(nursery, tmp_path):
    config, _, _, echo = await _start(nursery, tmp_path)
    async with running_proxy(config, tmp_path) as proxy:
        streams = []
        try:
            while len(streams) < 6 or 0 in [s["listener.tcp.downstream_cx_active"] for s in await _per_worker(proxy, "/stats?filter=tcp.downstream_cx_active")]:
                assert len(streams) < 60, "every connection went to one worker"
                stream = await connect(proxy.address("tcp"))
                streams.append(stream)
                await stream.send_all(b"ping")  # through to the echo upstream and back: both sides open
                assert await stream.receive_some(4) == b"ping"
            held = len(streams)
            total = await _get(proxy, "/stats?filter=_active")
            w0, w1 = await _per_worker(proxy, "/stats?filter=_active")
            assert total["listener.tcp.downstream_cx_active"] == total["cluster.up.upstream_cx_active"] == held
            assert total[f"cluster.up.host.{echo}.cx_active"] == held
            assert 0 < w0["listener.tcp.downstream_cx_active"] < held
            assert w0["listener.tcp.downstream_cx_active"] + w1["listener.tcp.downstream_cx_active"] == held
            listeners = {lr["name"]: lr for lr in await _get(proxy, "/listeners")}
            assert listeners["tcp"]["stats"]["downstream_cx_active"] == held
            up = (await _get(proxy, "/clusters"))[1]
            assert up["stats"]["upstream_cx_active"] == up["hosts"][0]["stats"]["cx_active"] == held and up["hosts"][0]["weight"] == 1
            m = _samples(await _get(proxy, "/metrics"))
            assert m['proxy_listener_downstream_cx_active{listener="tcp"}'] == m['proxy_cluster_upstream_cx_active{cluster="up"}'] == held
            assert m[f'proxy_host_cx_active{{cluster="up",host="{echo}"}}'] == held
        finally:
            for stream in streams:
                await stream.aclose()

        async def all_closed() -> bool:
            return (await _get(proxy, "/stats?filter=tcp.downstream_cx_active"))["listener.tcp.downstream_cx_active"] == 0

        await _until(all_closed)


async def test_status_config_and_tasks_per_worker(nursery, tmp_path):
    config, _, _, _ = await _start(nursery, tmp_path)
    async with running_proxy(config, tmp_path) as proxy:
        status = await _get(proxy, "/status")
        assert status["pid"] == proxy.pid
        pids = {w["index"]: w["pid"] for w in status["workers"]}
        assert sorted(pids) == [0, 1]
        for i in (0, 1):
            own = await _get(proxy, f"/status?worker={i}")
            assert own["pid"] == pids[i] and own["state"] == "serving" and own["log_level"] == "info" and own["listeners"] == 2
        # /config: the same in both workers, so taken once as it is
        one = await _get(proxy, "/config")
        assert one == (await _per_worker(proxy, "/config"))[0] == (await _per_worker(proxy, "/config"))[1]
        assert one["runtime"]["workers"] == 2 and [h["weight"] for h in one["clusters"][0]["hosts"]] == [3, 1]
        assert "per_worker" not in json.dumps(one)
        # /tasks: one tree per worker, each that worker's own
        tree = await _get(proxy, "/tasks")
        assert tree["name"] == "2 workers"
        assert [node["name"] for node in tree["children"]] == [f"worker #{i} (pid {pids[i]})" for i in (0, 1)]
        for i, node in enumerate(tree["children"]):
            assert [child["name"] for child in node["children"]] == ["<init>"]
            assert "serve_control" in json.dumps(node)
        own = await _get(proxy, "/tasks?worker=1")
        assert own["name"] == "<init>" and "serve_control" in json.dumps(own)
        # a worker that is not there, or not a worker index, is a clear 4xx; keeper endpoints take no ?worker
        for target, code, message in (
            ("/clusters?worker=2", 404, "no worker with index 2 (workers: 0, 1)"),
            ("/status?worker=9", 404, "no worker with index 9"),
            ("/metrics?worker=-1", 400, "worker must be a worker index (0, 1), got '-1'"),
            ("/stats?worker=one", 400, "worker must be a worker index"),
        ):
            got, body = await _admin(proxy, "GET", target)
            assert got == code and message in body["error"], (target, got, body)
        got, body = await _admin(proxy, "POST", "/drain?worker=0")
        assert got == 400 and "?worker does not apply" in body["error"], body
        assert (await _get(proxy, "/status"))["state"] == "serving"


async def test_commands_reach_every_worker_and_a_disagreement_shows_per_worker(nursery, tmp_path):
    config, a, b, _ = await _start(nursery, tmp_path)
    sock = str(tmp_path / "admin.sock")
    async with running_proxy(config, tmp_path) as proxy:
        # log level: to every worker; with ?worker=I to that one alone
        code, body = await _admin(proxy, "PUT", "/log_level?level=debug")
        assert code == 200 and body == {"level": "debug"}
        assert [s["log_level"] for s in await _per_worker(proxy, "/status")] == ["debug", "debug"]
        code, body = await _admin(proxy, "PUT", "/log_level?level=warning&worker=1")
        assert code == 200 and body == {"level": "warning"}
        assert [s["log_level"] for s in await _per_worker(proxy, "/status")] == ["debug", "warning"]

        # host disable: to every worker; the one view agrees
        code, body = await _admin(proxy, "POST", f"/clusters/api/hosts/{b.address}/disable")
        assert code == 200 and body == {"cluster": "api", "host": b.address, "enabled": False}
        hosts = (await _get(proxy, "/clusters"))[0]["hosts"]
        assert [(h["enabled"], "per_worker" in h) for h in hosts] == [(True, False), (False, False)]
        # one worker alone: the hosts' enabled flags differ, and the answer says where
        code, body = await _admin(proxy, "POST", f"/clusters/api/hosts/{a.address}/disable?worker=1")
        assert code == 200 and body["enabled"] is False
        host = (await _get(proxy, "/clusters"))[0]["hosts"][0]
        assert host["address"] == a.address and host["weight"] == 3 and host["healthy"] is True
        assert host["enabled"] is None and host["per_worker"] == {"enabled": {"0": True, "1": False}}
        assert [own[0]["hosts"][0]["enabled"] for own in await _per_worker(proxy, "/clusters")] == [True, False]
        lines = (await ctl(sock, "clusters")).stdout.splitlines()
        assert re.split(r"  +", lines[1])[:5] == ["api", a.address, "3", "yes (#0), no (#1)", "yes"], lines
        assert re.split(r"  +", lines[2])[:5] == ["api", b.address, "1", "no", "yes"], lines
        m = _samples(await _get(proxy, "/metrics"))
        enabled = f'proxy_host_enabled{{cluster="api",host="{a.address}"'
        assert (m[enabled + ',worker="0"}'], m[enabled + ',worker="1"}']) == (1, 0) and enabled + "}" not in m
        assert m[f'proxy_host_weight{{cluster="api",host="{a.address}"}}'] == 3
        # a command every worker refuses alike is refused once, as they said
        code, body = await _admin(proxy, "POST", "/clusters/nope/hosts/h:1/enable")
        assert code == 404 and body["error"] == "unknown cluster 'nope'"
        # enabled everywhere again: one value, no breakdown
        for address in (a.address, b.address):
            assert (await _admin(proxy, "POST", f"/clusters/api/hosts/{address}/enable"))[0] == 200
        clusters = await _get(proxy, "/clusters")
        assert [h["enabled"] for h in clusters[0]["hosts"]] == [True, True] and "per_worker" not in json.dumps(clusters)
