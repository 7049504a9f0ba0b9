"""`admin.metrics` against a real `proxy run`: GET /metrics (checked by promtool), GET /ready
while serving and while draining, the same text on the admin socket, bad requests, bind errors."""

from __future__ import annotations

import re
import signal
import socket

import pytest
import trio

from tests.integration.harness import ProxyProcess, connect, echo_handler, echo_round_trip, promtool_check, read_all, running_proxy, start_server, tcp_config

_METRICS_STARTED = re.compile(r"event=metrics\.started address=(\S+)")


async def _metrics_address(proxy: ProxyProcess) -> tuple[str, int]:
    with trio.fail_after(5):
        while not (match := _METRICS_STARTED.search(proxy.log())):
            await trio.sleep(0.02)
    host, _, port = match.group(1).rpartition(":")
    return host.strip("[]"), int(port)


async def _http(address: tuple[str, int] | str, target: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    stream = await connect(address)
    async with stream:
        await stream.send_all(f"{method} {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
        raw = await read_all(stream)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert int(headers["content-length"]) == len(body) or method == "HEAD"
    return int(lines[0].split(" ")[1]), headers, body


def _without_uptime(body: bytes) -> bytes:
    return re.sub(rb"(?m)^proxy_uptime_seconds \S+$", b"", body)


async def _wait_log(proxy: ProxyProcess, pattern: str, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not re.search(pattern, proxy.log()):
            await trio.sleep(0.02)


async def test_metrics_ready_and_draining(nursery, tmp_path):
    upstream = await start_server(nursery, echo_handler)
    config = tcp_config([upstream], drain_timeout="30s")
    admin_sock = str(tmp_path / "admin.sock")
    config["admin"] = {"socket": admin_sock, "metrics": "127.0.0.1:0"}
    async with running_proxy(config, tmp_path) as proxy:
        metrics = await _metrics_address(proxy)
        for _ in range(3):
            assert await echo_round_trip(proxy.address("tcp")) == b"hello"

        status, headers, body = await _http(metrics, "/metrics")
        assert status == 200
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        text = body.decode()
        assert 'proxy_listener_downstream_cx_total{listener="tcp"} 3\n' in text
        assert 'proxy_cluster_upstream_cx_total{cluster="up"} 3\n' in text
        assert f'proxy_host_cx_total{{cluster="up",host="{upstream}"}} 3\n' in text
        assert 'proxy_state{state="serving"} 1\n' in text
        assert re.search(r'(?m)^proxy_info\{version="[^"]+"\} 1$', text)
        result = promtool_check(body)
        assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (result.stdout, result.stderr)

        assert (await _http(metrics, "/ready"))[::2] == (200, b"ready\n")
        assert (await _http(metrics, "/nope"))[0] == 404

        # the admin socket serves the same text
        status, headers, admin_body = await _http(admin_sock, "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
        assert _without_uptime(admin_body) == _without_uptime(body)

        # bad requests do not take the worker down
        for garbage in (b"\x00\xff garbage\r\n\r\n", b"GET\r\n\r\n", b"x" * 20000):
            stream = await connect(metrics)
            async with stream:
                await stream.send_all(garbage)
                answer = await read_all(stream)
            assert answer.startswith(b"HTTP/1.1 4"), answer[:80]
        stream = await connect(metrics)
        await stream.aclose()  # connect and close without a request
        assert (await _http(metrics, "/ready"))[0] == 200

        # SIGTERM with a connection still open: draining, /ready says 503
        held = await connect(proxy.address("tcp"))
        await held.send_all(b"ping")
        with trio.fail_after(5):
            assert await held.receive_some(10) == b"ping"
        proxy.signal(signal.SIGTERM)
        await _wait_log(proxy, r"event=draining")
        assert (await _http(metrics, "/ready"))[::2] == (503, b"draining\n")
        status, _, body = await _http(metrics, "/metrics")
        assert status == 200 and b'proxy_state{state="draining"} 1\n' in body
        assert b'proxy_listener_downstream_cx_active{listener="tcp"} 1\n' in body
        await held.send_eof()
        assert await read_all(held) == b""
        await held.aclose()
        assert await proxy.wait(10) == 0


async def test_metrics_bind_error_is_a_startup_error(nursery, tmp_path):
    upstream = await start_server(nursery, echo_handler)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = tcp_config([upstream])
        config["admin"] = {"metrics": f"127.0.0.1:{port}"}
        proxy = ProxyProcess(config, tmp_path)
        try:
            with pytest.raises(AssertionError, match="before ready"):
                await proxy.start()
        finally:
            proxy.stop()
        assert f"cannot listen on 127.0.0.1:{port}" in proxy.log()
