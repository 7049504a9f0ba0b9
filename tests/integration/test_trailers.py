"""Trailers across the HTTP/1.1 and HTTP/2 translation, both directions, through a real
`proxy run`: chunked trailers become a trailing HEADERS frame with END_STREAM and back.

The peers are independent implementations: h11 (the HTTP/1.1 upstream), the h2 library (an
HTTP/2 client and an h2c upstream written here), and raw bytes for the HTTP/1.1 client so the
chunked framing on the wire is what the test reads."""

from __future__ import annotations

import functools
import json

import h2.config
import h2.connection
import h2.events
import pytest
import trio

from tests.integration.harness import connect, running_proxy
from tests.integration.http_upstream import http_config
from tests.integration.test_http_proxy import upstream  # noqa: F401 - a fixture


class H2Client:
    """One h2c connection driven by the h2 library; `request` returns (headers, body, trailers)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))

    @classmethod
    async def open(cls, address) -> H2Client:
        client = cls(await connect(address))
        client.conn.initiate_connection()
        await client.flush()
        return client

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self.stream.send_all(data)

    async def request(self, headers, body: bytes = b"", trailers=None):
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, headers, end_stream=not body and not trailers)
        if body:
            self.conn.send_data(sid, body, end_stream=not trailers)
        if trailers:
            self.conn.send_headers(sid, trailers, end_stream=True)
        await self.flush()
        head: dict[bytes, bytes] = {}
        got_trailers: list[tuple[bytes, bytes]] = []
        data = b""
        with trio.fail_after(10):
            while True:
                chunk = await self.stream.receive_some(65536)
                assert chunk, "the proxy closed the connection"
                for event in self.conn.receive_data(chunk):
                    if isinstance(event, h2.events.ResponseReceived) and event.stream_id == sid:
                        head = dict(event.headers)
                    elif isinstance(event, h2.events.TrailersReceived) and event.stream_id == sid:
                        got_trailers = list(event.headers)
                    elif isinstance(event, h2.events.DataReceived) and event.stream_id == sid:
                        data += event.data
                        self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
                    elif isinstance(event, h2.events.StreamReset) and event.stream_id == sid:
                        raise AssertionError(f"stream reset: {event.error_code!r}")
                    elif isinstance(event, h2.events.StreamEnded) and event.stream_id == sid:
                        await self.flush()
                        return head, data, got_trailers
                await self.flush()


async def serve_h2_echo(seen: list[dict], stream: trio.SocketStream) -> None:
    """An h2c upstream: answers each request with JSON of what it received (headers, body
    length, trailers), no content-length, then trailers of its own."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    conn.initiate_connection()
    requests: dict[int, dict] = {}
    try:
        await stream.send_all(conn.data_to_send())
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.RequestReceived):
                    requests[event.stream_id] = {"headers": [[k.decode(), v.decode()] for k, v in event.headers], "body": 0, "trailers": []}
                elif isinstance(event, h2.events.DataReceived):
                    requests[event.stream_id]["body"] += len(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.TrailersReceived):
                    requests[event.stream_id]["trailers"] = [[k.decode(), v.decode()] for k, v in event.headers]
                elif isinstance(event, h2.events.StreamEnded):
                    record = requests.pop(event.stream_id)
                    seen.append(record)
                    conn.send_headers(event.stream_id, [(b":status", b"200"), (b"content-type", b"application/json")])
                    conn.send_data(event.stream_id, json.dumps(record).encode())
                    conn.send_headers(event.stream_id, [(b"x-upstream-trailer", b"done"), (b"grpc-status", b"0")], end_stream=True)
            await stream.send_all(conn.data_to_send())
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return


@pytest.fixture
async def h2_upstream(nursery):
    seen: list[dict] = []
    listeners = await nursery.start(functools.partial(trio.serve_tcp, functools.partial(serve_h2_echo, seen), 0, host="127.0.0.1"))
    return f"127.0.0.1:{listeners[0].socket.getsockname()[1]}", seen


async def read_chunked_response(stream: trio.SocketStream) -> tuple[bytes, bytes, list[bytes]]:
    """Reads one chunked HTTP/1.1 response from raw bytes: (head, body, trailer lines)."""
    buffer = b""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in buffer:
            buffer += await stream.receive_some(65536)
        head, rest = buffer.split(b"\r\n\r\n", 1)
        assert b"transfer-encoding: chunked" in head.lower(), head
        body = b""
        while True:
            while b"\r\n" not in rest:
                rest += await stream.receive_some(65536)
            size_line, rest = rest.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                while b"\r\n\r\n" not in b"\r\n" + rest:
                    rest += await stream.receive_some(65536)
                trailer_block = (b"\r\n" + rest).split(b"\r\n\r\n", 1)[0]
                return head, body, [line for line in trailer_block.split(b"\r\n") if line]
            while len(rest) < size + 2:
                rest += await stream.receive_some(65536)
            body += rest[:size]
            rest = rest[size + 2 :]


def h2_cluster_config(address: str) -> dict:
    config = http_config([address])
    config["clusters"][0]["protocol"] = "http2"
    return config


async def test_http2_client_trailers_reach_an_http1_upstream_as_chunked_and_back(tmp_path, upstream):
    config = http_config([upstream.address])
    config["listeners"][0]["protocol"] = "http2"
    async with running_proxy(config, tmp_path) as proxy:
        client = await H2Client.open(proxy.address("http"))
        request = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/echo"), (b":authority", b"example.com"), (b"te", b"trailers")]
        head, body, _ = await client.request(request, b"x" * 1000, trailers=[(b"x-checksum", b"abc123")])
        assert head[b":status"] == b"200"
        seen = json.loads(body)
        assert seen["body_length"] == 1000
        assert ["x-checksum", "abc123"] in seen["trailers"], seen
        names = {k.lower() for k, _ in seen["headers"]}
        assert "transfer-encoding" in names and "content-length" not in names  # chunked: the only HTTP/1.1 framing with trailers

        # An HTTP/1.1 chunked response's trailers become the stream's trailing HEADERS.
        head, body, trailers = await client.request([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/chunked/5000"), (b":authority", b"example.com")])
        assert head[b":status"] == b"200" and len(body) == 5000
        assert (b"x-trailer", b"done") in trailers, trailers


async def test_http1_chunked_trailers_reach_an_http2_upstream_and_its_trailers_come_back(tmp_path, h2_upstream):
    address, seen = h2_upstream
    async with running_proxy(h2_cluster_config(address), tmp_path) as proxy:
        client = await connect(proxy.address("http"))
        await client.send_all(
            b"POST /upload HTTP/1.1\r\nHost: example.com\r\nTE: trailers\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc123\r\nX-Second: 2\r\n\r\n"
        )
        head, body, trailer_lines = await read_chunked_response(client)
        assert head.startswith(b"HTTP/1.1 200"), head
        record = json.loads(body)
        assert record["body"] == 11
        assert record["trailers"] == [["x-checksum", "abc123"], ["x-second", "2"]]
        request_headers = {k for k, _ in record["headers"]}
        assert "transfer-encoding" not in request_headers  # connection-specific: never on HTTP/2
        assert ["te", "trailers"] in record["headers"]
        assert b"x-upstream-trailer: done" in [line.lower() for line in trailer_lines], trailer_lines

        # Without a request body the stream still ends with the upstream's trailers.
        await client.send_all(b"GET /again HTTP/1.1\r\nHost: example.com\r\n\r\n")
        head, body, trailer_lines = await read_chunked_response(client)
        assert head.startswith(b"HTTP/1.1 200") and json.loads(body)["trailers"] == []
        assert b"grpc-status: 0" in [line.lower() for line in trailer_lines]
