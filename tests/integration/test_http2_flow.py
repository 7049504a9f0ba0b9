"""Flow control on one HTTP/2 connection through a real `proxy run`: a 1 GiB upload on one
stream and a 1 GiB download on another pass, while small requests on the same connection keep
answering quickly, and the proxy's memory stays bounded (windows open as the other side
drains, so nothing piles up in the proxy). The client is the h2 library, the upstream h11."""

from __future__ import annotations

import json
import statistics
import time

import h2.config
import h2.connection
import h2.events
import h2.settings
import trio

from tests.integration.harness import connect, running_proxy
from tests.integration.http_upstream import http_config
from tests.integration.test_http_proxy import upstream  # noqa: F401 - a fixture

GIB = 1 << 30


def rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total


async def test_1gib_each_way_on_one_connection_with_small_requests_between(tmp_path, upstream):
    config = http_config([upstream.address])
    config["listeners"][0]["protocol"] = "http2"
    # The route timeout runs until the response ends (as Envoy's): 15 s by default, which a busy
    # 2-core machine can take for a GiB. This test is about flow control, not that timeout.
    config["routes"]["main"]["virtual_hosts"][0]["routes"][0]["timeout"] = "300s"
    async with running_proxy(config, tmp_path) as proxy:
        sock = await connect(proxy.address("http"))
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.local_settings = h2.settings.Settings(client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
        conn.initiate_connection()
        conn.increment_flow_control_window(16 << 20)  # the connection window: room for both big streams
        send_lock = trio.Lock()
        window_opened = trio.Event()
        ended: dict[int, trio.Event] = {}
        heads: dict[int, dict] = {}
        bodies: dict[int, bytearray] = {}
        received: dict[int, int] = {}
        peak = 0
        small_latencies: list[float] = []

        async def flush() -> None:
            async with send_lock:
                data = conn.data_to_send()
                if data:
                    await sock.send_all(data)

        def open_stream(method: bytes, path: bytes, end_stream: bool, keep_body: bool) -> int:
            sid = conn.get_next_available_stream_id()
            ended[sid] = trio.Event()
            received[sid] = 0
            if keep_body:
                bodies[sid] = bytearray()
            conn.send_headers(sid, [(b":method", method), (b":scheme", b"http"), (b":path", path), (b":authority", b"example.com")], end_stream=end_stream)
            return sid

        async def read_frames() -> None:
            nonlocal window_opened
            while True:
                data = await sock.receive_some(1 << 18)
                assert data, "the proxy closed the connection"
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        heads[event.stream_id] = dict(event.headers)
                    elif isinstance(event, h2.events.DataReceived):
                        received[event.stream_id] += len(event.data)
                        if event.stream_id in bodies:
                            bodies[event.stream_id] += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.WindowUpdated):
                        window_opened.set()
                        window_opened = trio.Event()
                    elif isinstance(event, h2.events.StreamEnded):
                        ended[event.stream_id].set()
                    elif isinstance(event, h2.events.StreamReset):
                        sid = event.stream_id
                        body = bytes(bodies.get(sid, b""))[:300]
                        raise AssertionError(f"stream {sid} reset: {event.error_code!r}, head {heads.get(sid)}, {received[sid]} bytes in, body {body!r}")
                await flush()

        async def upload(sid: int) -> None:
            zeros = bytes(1 << 16)
            sent = 0
            while sent < GIB:
                room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size, GIB - sent)
                if room <= 0:
                    await window_opened.wait()
                    continue
                conn.send_data(sid, zeros[:room], end_stream=sent + room == GIB)
                sent += room
                await flush()

        async def small_requests(stop: trio.Event) -> None:
            while not stop.is_set():
                start = time.monotonic()
                sid = open_stream(b"GET", b"/echo/small", True, keep_body=True)
                await flush()
                await ended[sid].wait()
                small_latencies.append(time.monotonic() - start)
                assert heads[sid][b":status"] == b"200" and json.loads(bodies.pop(sid))["target"] == "/echo/small"
                await trio.sleep(0.05)

        async def watch_memory(stop: trio.Event) -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, rss_kb([proxy.pid, *proxy.worker_pids()]))
                await trio.sleep(0.05)

        baseline = rss_kb([proxy.pid, *proxy.worker_pids()])
        stop = trio.Event()
        with trio.fail_after(240):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_frames)
                nursery.start_soon(watch_memory, stop)
                await flush()
                down = open_stream(b"GET", f"/bytes/{GIB}".encode(), True, keep_body=False)
                up = open_stream(b"POST", b"/sink", False, keep_body=True)
                await flush()
                nursery.start_soon(small_requests, stop)
                await upload(up)
                await ended[up].wait()
                await ended[down].wait()
                stop.set()
                await trio.sleep(0.1)
                nursery.cancel_scope.cancel()
        assert heads[down][b":status"] == b"200" and received[down] == GIB
        assert heads[up][b":status"] == b"200" and json.loads(bodies[up])["body_length"] == GIB
        assert len(small_latencies) >= 5, small_latencies
        # Small streams wait behind nothing: each is answered in a few scheduler passes even
        # while both big streams keep their windows full (a loose bound: two busy cores).
        assert statistics.median(small_latencies) < 0.1 and max(small_latencies) < 1.0, small_latencies
        assert peak - baseline < 100_000, f"proxy RSS rose by {peak - baseline} kB (from {baseline} kB)"
