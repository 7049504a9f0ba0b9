"""A WebSocket over TLS in a drain: it cannot move to another process (OpenSSL holds its state),
so it serves on until the drain deadline and, just before it, each side gets a Close frame
with 1001 (going away) between two frames, not a cut connection."""

from __future__ import annotations

import signal
import ssl

import trio
from trio_websocket import ConnectionClosed, serve_websocket, wrap_client_stream

from tests.integration.harness import connect, running_proxy
from tests.integration.http_upstream import http_config
from tests.integration.test_tls import Certs, certs  # noqa: F401 - certs is a fixture


async def test_a_websocket_over_tls_gets_1001_both_ways_before_the_drain_deadline(tmp_path, nursery, certs: Certs):
    upstream_closes: list[int | None] = []

    async def echo(request) -> None:
        ws = await request.accept()
        try:
            while True:
                await ws.send_message(await ws.get_message())
        except ConnectionClosed as closed:
            upstream_closes.append(closed.reason.code)

    server = await nursery.start(serve_websocket, echo, "127.0.0.1", 0, None)
    config = http_config([f"127.0.0.1:{server.port}"])
    config["listeners"][0]["tls"] = {"certificates": [certs.entry("b")]}
    config["runtime"] = {"drain_timeout": "3s"}
    async with running_proxy(config, tmp_path) as proxy:
        context = ssl.create_default_context(cafile=certs.ca_path)
        stream = trio.SSLStream(await connect(proxy.address("http")), context, server_hostname="b.example.com")
        ws = await wrap_client_stream(nursery, stream, "b.example.com", "/ws")
        await ws.send_message("before")
        assert await ws.get_message() == "before"
        proxy.signal(signal.SIGTERM)
        started = trio.current_time()
        echoed = 0
        with trio.fail_after(10):
            try:
                while True:  # the tunnel serves on through the drain, messages whole
                    await ws.send_message("x" * 5000)
                    assert await ws.get_message() == "x" * 5000
                    echoed += 1
                    await trio.sleep(0.01)
            except ConnectionClosed as closed:
                code = closed.reason.code
        elapsed = trio.current_time() - started
        assert code == 1001, closed.reason
        assert 1.5 < elapsed < 3.0, elapsed  # about WS_CLOSE_LEAD (1 s) before the 3 s deadline
        assert echoed > 20
        with trio.fail_after(5):
            while not upstream_closes:
                await trio.sleep(0.02)
        assert upstream_closes == [1001]
        assert await proxy.wait(10) == 0
        assert "drain.timeout" not in proxy.log()  # ended before the deadline, not cut at it
