"""HTTP/2 upstream keepalive and the HTTP/2 counters, through a real `proxy run`, against an
h2c upstream written here (h2 over trio) whose behaviour each test picks: a peer that stops
answering (PINGs go unanswered) is closed after keepalive_interval + keepalive_timeout and
counted, one that answers keeps its connection; RST_STREAM codes and GOAWAYs from the upstream,
and from an HTTP/2 client, show in /stats and /metrics."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
import trio

from tests.integration.harness import ProxyProcess, admin_get, connect, running_proxy, start_server

INTERVAL = 0.2
TIMEOUT = 0.2


@dataclass
class H2Upstream:
    """An h2c server: GET /mute answers, then the connection sends nothing more (PING ACKs
    included: h2 queues them, we drop them); /hang does not answer and mutes the connection
    (a peer gone dead under a request); /big answers 300 KB; a request body is acknowledged
    only once the proxy has used up the 65,535-byte windows (so it stalls); /reset/<code> resets the stream with that code;
    /goaway answers and sends GOAWAY(NO_ERROR); anything else is 200 with `x-conn: <n>`."""

    connections: int = 0
    pings: list[int] = field(default_factory=list)  # PINGs received, per connection (index: n - 1)

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        n = self.connections
        self.pings.append(0)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        await stream.send_all(conn.data_to_send())
        muted = False
        unacked = 0  # request body bytes not acknowledged yet
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return
            if not data:
                return
            try:
                events = conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                return  # (after our GOAWAY h2 takes no more frames: the socket closes)
            for event in events:
                if isinstance(event, h2.events.PingReceived):
                    self.pings[n - 1] += 1
                elif isinstance(event, h2.events.DataReceived):
                    unacked += event.flow_controlled_length
                    if unacked >= 65535:
                        conn.acknowledge_received_data(unacked, event.stream_id)
                        unacked = 0
                    if event.stream_ended is not None:
                        conn.acknowledge_received_data(unacked, event.stream_id)
                        unacked = 0
                        conn.send_headers(event.stream_id, [(":status", "200"), ("x-conn", str(n)), ("content-length", "2")])
                        conn.send_data(event.stream_id, b"ok", end_stream=True)
                elif isinstance(event, h2.events.RequestReceived):
                    path = dict(event.headers)[":path"]
                    sid = event.stream_id
                    if path.startswith("/reset/"):
                        conn.reset_stream(sid, int(path.rsplit("/", 1)[1]))
                        continue
                    if path == "/hang":
                        muted = True
                        continue
                    if path == "/big":
                        body = b"x" * 300_000
                        conn.send_headers(sid, [(":status", "200"), ("content-length", str(len(body)))])
                        for i in range(0, len(body), 16384):  # (the proxy's windows take it all)
                            conn.send_data(sid, body[i : i + 16384], end_stream=i + 16384 >= len(body))
                        continue
                    if event.stream_ended is None:
                        continue  # a request body follows: answered at its end
                    conn.send_headers(sid, [(":status", "200"), ("x-conn", str(n)), ("content-length", "2")])
                    conn.send_data(sid, b"ok", end_stream=True)
                    if path == "/goaway":
                        conn.close_connection()
                    elif path == "/mute":
                        await stream.send_all(conn.data_to_send())
                        muted = True
            out = conn.data_to_send()
            if out and not muted:
                await stream.send_all(out)


@pytest.fixture
async def h2_upstream(nursery, tmp_path) -> tuple[H2Upstream, str, str]:
    """A running H2Upstream, its address, and the path for the proxy's admin socket."""
    upstream = H2Upstream()
    address = await start_server(nursery, upstream.handle)
    return upstream, address, str(tmp_path / "admin.sock")


def config(upstream: str, admin: str, http2: dict[str, Any] | None = None, **cluster: Any) -> dict[str, Any]:
    return {
        "admin": {"socket": admin},
        "logging": {"level": "info"},
        "runtime": {"drain_timeout": "1s"},
        "listeners": [
            {"name": "h1", "address": "127.0.0.1:0", "protocol": "http1", "route": "main"},
            {"name": "h2", "address": "127.0.0.1:0", "protocol": "http2", "route": "main"},
        ],
        "clusters": [{"name": "up", "protocol": "http2", "connect_timeout": "500ms", "hosts": [{"address": upstream}], **({"http2": http2} if http2 else {}), **cluster}],
        "routes": {"main": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "cluster": "up"}]}]}},
    }


KEEPALIVE = {"keepalive_interval": f"{int(INTERVAL * 1000)}ms", "keepalive_timeout": f"{int(TIMEOUT * 1000)}ms"}


async def curl(proxy: ProxyProcess, path: str) -> tuple[str, str]:
    """(status, x-conn) of a GET through the HTTP/1.1 listener."""
    host, port = proxy.address("h1")  # type: ignore[misc]
    result = await trio.run_process(
        ["curl", "-sS", "-o", "/dev/null", "-D", "-", f"http://{host}:{port}{path}"], capture_stdout=True, capture_stderr=True, check=False
    )
    lines = result.stdout.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    return (lines[0].split(" ")[1] if lines[0] else "-"), headers.get("x-conn", "")


async def stats(admin: str, prefix: str = "cluster.up.") -> dict[str, int]:
    return {k.removeprefix(prefix): v for k, v in json.loads(await admin_get(admin, "/stats")).items() if k.startswith(prefix)}


async def wait_for_count(admin: str, names: tuple[str, ...], prefix: str = "cluster.up.") -> dict[str, int]:
    """Poll /stats until the counters `names` add up to at least 1; the stats then."""
    with trio.fail_after(5):
        while True:
            counts = await stats(admin, prefix)
            if sum(counts[name] for name in names) >= 1:
                return counts
            await trio.sleep(0.05)


async def test_an_upstream_that_stops_answering_pings_is_closed_and_counted(h2_upstream, tmp_path):
    upstream, address, admin = h2_upstream
    async with running_proxy(config(address, admin, KEEPALIVE), tmp_path) as proxy:
        assert await curl(proxy, "/mute") == ("200", "1")
        # Idle for the interval: a PING; no answer within the timeout: closed.
        await wait_for_count(admin, ("upstream_cx_keepalive_timeout",))
        assert upstream.pings[0] >= 1
        counts = await stats(admin)
        assert counts["upstream_cx_keepalive_timeout"] == 1 and counts["upstream_cx_active"] == 0, counts
        assert await curl(proxy, "/") == ("200", "2")  # a fresh connection
        assert (await stats(admin))["upstream_cx_total"] == 2
        metrics = (await admin_get(admin, "/metrics")).decode()
        assert 'proxy_cluster_upstream_cx_keepalive_timeout_total{cluster="up"} 1' in metrics, metrics
        assert "upstream.keepalive_timeout" in proxy.log()


async def test_a_request_in_flight_on_a_dead_connection_is_a_502_after_the_keepalive_timeout(h2_upstream, tmp_path):
    upstream, address, admin = h2_upstream
    async with running_proxy(config(address, admin, KEEPALIVE), tmp_path) as proxy:
        start = trio.current_time()
        status, _ = await curl(proxy, "/hang")  # (no route timeout: only the keepalive ends it)
        took = trio.current_time() - start
        assert status == "502", status
        assert INTERVAL + TIMEOUT <= took < 3, took
        counts = await stats(admin)
        assert counts["upstream_cx_keepalive_timeout"] == 1, counts
        assert await curl(proxy, "/") == ("200", "2")


async def test_an_upstream_that_answers_pings_keeps_its_connection(h2_upstream, tmp_path):
    upstream, address, admin = h2_upstream
    async with running_proxy(config(address, admin, KEEPALIVE), tmp_path) as proxy:
        assert await curl(proxy, "/") == ("200", "1")
        await trio.sleep(5 * INTERVAL + TIMEOUT)
        assert upstream.pings[0] >= 3  # pinged every interval while idle, and answered
        assert await curl(proxy, "/") == ("200", "1")  # the same connection
        counts = await stats(admin)
        assert counts["upstream_cx_keepalive_timeout"] == 0 and counts["upstream_cx_total"] == 1, counts
        assert upstream.connections == 1


async def test_keepalive_is_off_by_default(h2_upstream, tmp_path):
    upstream, address, admin = h2_upstream
    async with running_proxy(config(address, admin), tmp_path) as proxy:
        assert await curl(proxy, "/mute") == ("200", "1")
        await trio.sleep(3 * (INTERVAL + TIMEOUT))
        assert upstream.pings == [0]
        assert (await stats(admin))["upstream_cx_active"] == 1


async def test_upstream_resets_are_counted_by_code(h2_upstream, tmp_path):
    upstream, address, admin = h2_upstream
    async with running_proxy(config(address, admin), tmp_path) as proxy:
        status, _ = await curl(proxy, "/reset/11")  # ENHANCE_YOUR_CALM
        assert status == "502", status
        await curl(proxy, "/reset/2")  # INTERNAL_ERROR
        await curl(proxy, "/reset/2")
        counts = await stats(admin)
        assert counts["http2_rx_reset_enhance_your_calm"] == 1 and counts["http2_rx_reset_internal_error"] == 2, counts
        assert counts["http2_rx_reset_cancel"] == 0 and counts["http2_tx_reset_cancel"] == 0
        metrics = (await admin_get(admin, "/metrics")).decode()
        assert 'proxy_cluster_http2_rx_reset_internal_error_total{cluster="up"} 2' in metrics
        assert 'proxy_listener_http2_rx_reset_internal_error_total{listener="h1"} 0' in metrics


async def test_upstream_goaway_is_counted_and_the_next_request_opens_a_connection(h2_upstream, tmp_path):
    upstream, address, admin = h2_upstream
    async with running_proxy(config(address, admin), tmp_path) as proxy:
        assert await curl(proxy, "/goaway") == ("200", "1")
        await wait_for_count(admin, ("http2_rx_goaway",))
        assert await curl(proxy, "/") == ("200", "2")
        counts = await stats(admin)
        assert counts["http2_rx_goaway"] == 1 and counts["http2_tx_goaway"] == 0, counts
        metrics = (await admin_get(admin, "/metrics")).decode()
        assert 'proxy_cluster_http2_rx_goaway_total{cluster="up"} 1' in metrics


async def test_downstream_client_resets_and_goaway_are_counted_on_the_listener(h2_upstream, tmp_path):
    upstream, address, admin = h2_upstream
    async with running_proxy(config(address, admin), tmp_path) as proxy:
        stream = await connect(proxy.address("h2"))
        async with stream:
            client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
            client.initiate_connection()
            # A request whose body never comes, then cancelled; then GOAWAY.
            client.send_headers(1, [(":method", "POST"), (":path", "/"), (":scheme", "http"), (":authority", "t")])
            await stream.send_all(client.data_to_send())
            await trio.sleep(0.1)
            client.reset_stream(1, 8)  # CANCEL
            client.close_connection()
            await stream.send_all(client.data_to_send())
            await wait_for_count(admin, ("http2_rx_goaway",), "listener.h2.")
        counts = await stats(admin, "listener.h2.")
        assert counts["http2_rx_reset_cancel"] == 1 and counts["http2_rx_goaway"] == 1, counts
        metrics = (await admin_get(admin, "/metrics")).decode()
        assert 'proxy_listener_http2_rx_reset_cancel_total{listener="h2"} 1' in metrics


async def test_flow_control_stalls_are_counted_both_ways(h2_upstream, tmp_path):
    upstream, address, admin = h2_upstream
    async with running_proxy(config(address, admin), tmp_path) as proxy:
        # Upstream: a 200 KB upload to a server that opens its windows only once they are used up.
        host, port = proxy.address("h1")  # type: ignore[misc]
        upload = tmp_path / "upload.bin"
        upload.write_bytes(b"u" * 200_000)
        result = await trio.run_process(
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--data-binary", f"@{upload}", f"http://{host}:{port}/upload"],
            capture_stdout=True,
            check=False,
        )
        assert result.stdout == b"200", result.stdout
        counts = await stats(admin)
        assert counts["http2_tx_stall_connection_window"] + counts["http2_tx_stall_stream_window"] >= 1, counts
        # Downstream: an HTTP/2 client that never opens its 65,535-byte windows, a 300 KB answer.
        stream = await connect(proxy.address("h2"))
        async with stream:
            client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
            client.initiate_connection()
            client.send_headers(1, [(":method", "GET"), (":path", "/big"), (":scheme", "http"), (":authority", "t")], end_stream=True)
            await stream.send_all(client.data_to_send())
            received = 0
            with trio.move_on_after(1):
                while received < 65535:
                    for event in client.receive_data(await stream.receive_some(65536)):
                        if isinstance(event, h2.events.DataReceived):
                            received += event.flow_controlled_length
                    await stream.send_all(client.data_to_send())  # (SETTINGS acks; no WINDOW_UPDATE)
            assert received == 65535
            await wait_for_count(admin, ("http2_tx_stall_connection_window", "http2_tx_stall_stream_window"), "listener.h2.")
        metrics = (await admin_get(admin, "/metrics")).decode()
        assert 'proxy_listener_http2_tx_stall_connection_window_total{listener="h2"}' in metrics


async def test_an_idle_connection_closed_by_the_sweeper_leaves_the_worker_serving(h2_upstream, tmp_path):
    # The reader task waits in recv while another task (here the idle sweeper; the keepalive
    # too) closes the socket: that is the connection's end, not the worker's.
    upstream, address, admin = h2_upstream
    async with running_proxy(config(address, admin, idle_timeout="100ms"), tmp_path) as proxy:
        assert await curl(proxy, "/") == ("200", "1")
        with trio.fail_after(5):
            while (await stats(admin))["upstream_cx_active"]:
                await trio.sleep(0.05)
        assert await curl(proxy, "/") == ("200", "2")
    log = proxy.log()
    assert "Traceback" not in log, log
