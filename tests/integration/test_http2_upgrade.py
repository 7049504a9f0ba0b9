"""Hot upgrade of HTTP/2 (h2c) downstream connections through a real `proxy run`: the codec's
state (HPACK tables, settings, windows, stream ids) moves to the new worker generation with
the socket, so a client keeps its one connection, gets no GOAWAY and may go on referring to
headers it indexed with the old generation (docs/upgrade.md)."""

from __future__ import annotations

import json
import re
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
import trio
from hyperframe.frame import Frame

from tests.integration.harness import running_proxy
from tests.integration.http_upstream import HttpUpstream
from tests.integration.test_upgrade import alive, assert_ok, make_config, reload, stat, status, to_cluster, worker_pid

TOKEN = "trace-7f3a9c0e-only-sent-in-full-once"


def h2_upgrade_config(tmp_path, upstream: HttpUpstream, protocol: str) -> dict[str, Any]:
    config = make_config(tmp_path, routes=[to_cluster("/")], clusters={"up": upstream.address})
    config["listeners"][0]["protocol"] = protocol
    return config


class H2Client:
    """One HTTP/2 connection (the h2 library as the client), one request at a time."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.goaways = 0
        self.requests = 0
        self.local = stream.socket.getsockname()

    @classmethod
    async def open(cls, address: tuple[str, int]) -> H2Client:
        client = cls(await trio.open_tcp_stream(*address))
        client.conn.initiate_connection()
        await client.stream.send_all(client.conn.data_to_send())
        return client

    async def get(self, path: str, extra: list[tuple[bytes, bytes]] = ()) -> tuple[int, bytes, bytes]:
        """(status, the HEADERS block as sent, body)."""
        conn = self.conn
        sid = conn.get_next_available_stream_id()
        fields = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", path.encode()), (b":authority", b"example.com"), *extra]
        conn.send_headers(sid, fields, end_stream=True)
        wire = conn.data_to_send()
        await self.stream.send_all(wire)
        status = 0
        body = bytearray()
        with trio.fail_after(10):
            while True:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError("the proxy closed the connection")
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ConnectionTerminated):
                        self.goaways += 1
                    elif isinstance(event, h2.events.ResponseReceived) and event.stream_id == sid:
                        status = int(dict(event.headers)[b":status"])
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                        if event.stream_id == sid:
                            body += event.data
                    elif isinstance(event, h2.events.StreamReset) and event.stream_id == sid:
                        raise EOFError(f"stream reset: {event.error_code}")
                    elif isinstance(event, h2.events.StreamEnded) and event.stream_id == sid:
                        out = conn.data_to_send()
                        if out:
                            await self.stream.send_all(out)
                        self.requests += 1
                        return status, _block(wire), bytes(body)
                out = conn.data_to_send()
                if out:
                    await self.stream.send_all(out)


def _block(wire: bytes) -> bytes:
    """The header block of the one HEADERS frame in `wire`."""
    frame, length = Frame.parse_frame_header(memoryview(wire[:9]))
    frame.parse_body(memoryview(wire[9 : 9 + length]))
    return bytes(frame.data)


def seen_header(body: bytes, name: str) -> str | None:
    headers = {k.lower(): v for k, v in json.loads(body)["headers"]}
    return headers.get(name)


@pytest.mark.parametrize("protocol", ["http2", "http"])
async def test_one_h2_connection_keeps_its_hpack_state_across_five_reloads(tmp_path, nursery, protocol):
    """One client, ONE TCP connection, requests all along five reloads: no error, no GOAWAY;
    a header indexed (HPACK dynamic table) before the first reload is sent afterwards as a
    one-byte index only, and the upstream still receives its value: the decoder table moved.
    The worker serving it at the end is another process than at the start."""
    up = HttpUpstream("a")
    await up.start(nursery)
    async with running_proxy(h2_upgrade_config(tmp_path, up, protocol), tmp_path) as proxy:
        client = await H2Client.open(proxy.address("http"))
        first_pid = worker_pid(await status(proxy))
        code, _, body = await client.get("/echo", [(b"x-trace-token", TOKEN.encode())])
        assert code == 200 and seen_header(body, "x-trace-token") == TOKEN
        errors: list[str] = []
        stop = trio.Event()

        async def loop() -> None:
            while not stop.is_set():
                try:
                    code, _, body = await client.get("/echo")
                    if code != 200 or json.loads(body)["target"] != "/echo":
                        errors.append(f"status {code}")
                except Exception as exc:  # noqa: BLE001 - counted: the assertion says zero
                    errors.append(repr(exc))
                    return
                await trio.sleep(0.01)

        outcomes = []
        async with trio.open_nursery() as n:
            n.start_soon(loop)
            for _ in range(5):
                outcomes.append(await reload(proxy))
                before = client.requests
                with trio.fail_after(10):
                    while client.requests < before + 3 and not errors:
                        await trio.sleep(0.01)
            stop.set()
        assert errors == []
        for outcome in outcomes:
            assert_ok(outcome)
            assert (outcome.get("migrated") or {}).get("http2") == 1, outcome

        # The indexed header, by reference only: one byte more than the same request without it.
        _, plain, _ = await client.get("/echo")
        code, block, body = await client.get("/echo", [(b"x-trace-token", TOKEN.encode())])
        assert len(block) == len(plain) + 1 and block[-1] & 0x80, (plain, block)
        assert code == 200 and seen_header(body, "x-trace-token") == TOKEN
        assert client.goaways == 0
        assert client.stream.socket.getsockname() == client.local  # the same connection throughout
        last_pid = worker_pid(await status(proxy))
        assert last_pid != first_pid and not alive(first_pid)  # served by a later generation
        assert await stat(proxy, "listener.http.downstream_cx_total") == 1
        assert await stat(proxy, "listener.http.downstream_cx_migrated_in") == 5
        assert await stat(proxy, "listener.http.downstream_cx_migrated_out") == 5
        await client.stream.aclose()


async def test_h2load_sees_no_failed_stream_while_reloading(tmp_path, nursery):
    """T4: h2load -c10 -m10 keeps ten streams in flight on each of ten connections and never
    reconnects (a GOAWAY would fail its later requests): three reloads, zero failures, because
    each busy connection holds new streams back until the ones in flight end, then moves."""
    up = HttpUpstream("a")
    await up.start(nursery)
    async with running_proxy(h2_upgrade_config(tmp_path, up, "http2"), tmp_path) as proxy:
        host, port = proxy.address("http")
        outcomes: list[dict[str, Any]] = []

        async def reloads() -> None:
            await trio.sleep(1.0)
            for _ in range(3):
                outcomes.append(await reload(proxy))  # (about 3 s each on a loaded 2-core machine)
                await trio.sleep(0.5)

        async with trio.open_nursery() as n:
            n.start_soon(reloads)
            result = await trio.run_process(
                ["h2load", "-c10", "-m10", "-D", "20", f"http://{host}:{port}/echo"], capture_stdout=True, capture_stderr=True, check=False
            )
        out = result.stdout.decode() + result.stderr.decode()
        assert result.returncode == 0, out
        assert len(outcomes) == 3, out
        for o in outcomes:
            assert_ok(o)
            assert (o.get("migrated") or {}).get("http2") == 10, (o, out)
        m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", out)
        assert m is not None, out
        total, started, done, succeeded, failed, errored, timeout = map(int, m.groups())
        assert (failed, errored, timeout) == (0, 0, 0), out
        assert succeeded == done and succeeded > 1000, out
        assert re.search(r"status codes: \d+ 2xx, 0 3xx, 0 4xx, 0 5xx", out), out
        assert await stat(proxy, "listener.http.downstream_cx_total") == 10
