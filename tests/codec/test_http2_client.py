"""The HTTP/2 client codec: round trips with our server codec in memory, and with h2's own
H2Connection on the other side (default validation on: what we send must pass it)."""

from __future__ import annotations

from typing import Any

import h2.config
import hpack
import h2.connection
import h2.events
import pytest

from proxy.codec.http1 import RequestHead, ResponseHead
from proxy.codec.http2 import (
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    ClientConnection,
    DataReceived,
    GoAwayReceived,
    Http2Settings,
    InformationalReceived,
    NoStreamAvailable,
    PingAcked,
    RequestReceived,
    ResponseReceived,
    ServerConnection,
    SettingsChanged,
    StreamReset,
    TrailersReceived,
    WindowOpened,
)
from tests.codec.h2frames import parse, resets


class Pair:
    """Our client wired to our server in memory; bytes move only when asked."""

    def __init__(self, client: Http2Settings | None = None, server: Http2Settings | None = None) -> None:
        self.client = ClientConnection(client)
        self.server = ServerConnection(server)
        self.client.initiate()
        self.server.initiate()
        self.now = 0.0
        self.server_events: list[Any] = []
        self.client_events: list[Any] = []
        self.pump()
        self.handshake = self.take()

    def to_server(self) -> list[Any]:
        events = self.server.receive(self.client.data_to_send(), self.now)
        self.server_events += events
        return events

    def to_client(self) -> list[Any]:
        events = self.client.receive(self.server.data_to_send(), self.now)
        self.client_events += events
        return events

    def pump(self) -> None:
        while self.client.outbound_backlog() or self.server.outbound_backlog():
            self.to_server()
            self.to_client()

    def take(self) -> tuple[list[Any], list[Any]]:
        self.pump()
        out = self.server_events, self.client_events
        self.server_events, self.client_events = [], []
        return out


def get(target: bytes = b"/", headers: list | None = None, method: bytes = b"GET", **kw: Any) -> RequestHead:
    fields = [(b"Host", b"example.com"), *(headers or [])]
    return RequestHead(method, target, b"1.1", fields, True, False, kw.get("content_length"), kw.get("expect", False), kw.get("upgrade"))


def ok(status: int = 200, headers: list | None = None, content_length: int | None = None) -> ResponseHead:
    return ResponseHead(status, b"OK", b"1.1", headers or [], True, False, content_length)


def test_handshake_tells_the_pool_the_peers_limits() -> None:
    pair = Pair(server=Http2Settings(max_concurrent_streams=2))
    changes = [e for e in pair.handshake[1] if isinstance(e, SettingsChanged)]
    assert changes[-1].max_concurrent_streams == 2
    assert pair.client.available_streams == 2
    pair.client.send_request(get(), b"https", True)
    pair.client.send_request(get(), b"https", True)
    assert pair.client.available_streams == 0
    with pytest.raises(NoStreamAvailable) as info:
        pair.client.send_request(get(), b"https", True)
    assert not info.value.retry_elsewhere


def test_get_round_trip() -> None:
    pair = Pair()
    head = get(
        b"/p?q=1",
        [
            (b"User-Agent", b"t/1"),
            (b"Connection", b"keep-alive, X-Hop"),
            (b"X-Hop", b"1"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Proxy-Connection", b"x"),
            (b"TE", b"trailers, deflate"),
            (b"Cookie", b"a=1; b=2"),
        ],
    )
    sid = pair.client.send_request(head, b"https", True)
    assert sid == 1
    (request,), _ = pair.take()
    assert isinstance(request, RequestReceived) and request.end_stream and request.scheme == b"https"
    h = request.head
    assert (h.method, h.target, h.http_version) == (b"GET", b"/p?q=1", b"2")
    assert h.headers == [(b"host", b"example.com"), (b"user-agent", b"t/1"), (b"te", b"trailers"), (b"cookie", b"a=1; b=2")]
    pair.server.send_response(sid, ok(200, [(b"Content-Type", b"text/plain"), (b"Content-Length", b"5"), (b"Connection", b"close")], 5), False)
    pair.server.send_data(sid, b"hello", True)
    _, events = pair.take()
    response, data = events
    assert isinstance(response, ResponseReceived) and not response.end_stream
    r = response.head
    assert (r.status, r.http_version, r.keep_alive, r.chunked, r.content_length) == (200, b"2", True, False, 5)
    assert r.headers == [(b"content-type", b"text/plain"), (b"content-length", b"5")]
    assert data == DataReceived(sid, b"hello", True, 5)
    assert pair.client.open_streams == 0 and pair.server.open_streams == 0


def test_absolute_form_target() -> None:
    pair = Pair()
    pair.client.send_request(get(b"http://other.example:8080/x?y=1"), b"https", True)
    (request,), _ = pair.take()
    assert request.scheme == b"http" and request.head.target == b"/x?y=1"
    assert request.head.headers == [(b"host", b"other.example:8080")]
    pair.client.send_request(get(b"http://other.example?y"), b"https", True)
    (request,), _ = pair.take()
    assert request.head.target == b"/?y"


def test_response_without_length_is_chunked_for_http1() -> None:
    pair = Pair()
    sid = pair.client.send_request(get(), b"http", True)
    pair.take()
    pair.server.send_response(sid, ok(), False)
    _, (response,) = pair.take()
    assert response.head.chunked and response.head.content_length is None
    pair.server.send_data(sid, b"", True)
    _, events = pair.take()
    assert events == [DataReceived(sid, b"", True, 0)]


def test_head_response_has_no_body() -> None:
    pair = Pair()
    sid = pair.client.send_request(get(method=b"HEAD"), b"http", True)
    pair.take()
    pair.server.send_response(sid, ok(200, [(b"content-length", b"1234")], 1234), False)
    pair.server.send_data(sid, b"", True)
    _, (response, end) = pair.take()
    assert not response.head.chunked and response.head.content_length == 1234
    assert end == DataReceived(sid, b"", True, 0)


def test_bodies_across_frames_and_windows_with_trailers_both_ways() -> None:
    small = Http2Settings(initial_stream_window_size=20000)
    pair = Pair(client=small, server=small)
    body = bytes(range(256)) * 400  # 102,400 bytes
    head = get(b"/upload", [(b"te", b"trailers"), (b"content-type", b"application/grpc")], method=b"POST")
    sid = pair.client.send_request(head, b"http", False)
    sent = 0
    received = bytearray()
    while sent < len(body):
        taken = pair.client.send_data(sid, body[sent:], False)
        sent += taken
        server_events, client_events = pair.take()
        for e in server_events:
            if isinstance(e, DataReceived):
                received += e.data
                pair.server.acknowledge(sid, e.flow_length)  # consumed: windows open again
        if sent < len(body):
            assert taken < len(body)
            pair.pump()
            assert WindowOpened(sid) in pair.client_events or WindowOpened(0) in pair.client_events
            pair.client_events.clear()
    pair.client.send_trailers(sid, [(b"x-checksum", b"abc")])
    server_events, _ = pair.take()
    assert server_events == [TrailersReceived(sid, [(b"x-checksum", b"abc")])]
    assert bytes(received) == body
    assert pair.server._h2.streams[sid].state_machine.state.name == "HALF_CLOSED_REMOTE"
    pair.server.send_response(sid, ok(200, [(b"content-type", b"application/grpc")]), False)
    assert pair.server.send_data(sid, b"m" * 100, False) == 100
    pair.server.send_trailers(sid, [(b"grpc-status", b"0"), (b"Grpc-Message", b"ok")])
    _, events = pair.take()
    assert [type(e) for e in events] == [ResponseReceived, DataReceived, TrailersReceived]
    assert events[2] == TrailersReceived(sid, [(b"grpc-status", b"0"), (b"grpc-message", b"ok")])
    assert pair.client.open_streams == 0


def test_connect_tunnel() -> None:
    pair = Pair()
    head = RequestHead(b"CONNECT", b"db.internal:5432", b"1.1", [(b"Host", b"db.internal:5432")], True, False, None, False, b"connect")
    sid = pair.client.send_request(head, b"http", False)
    (request,), _ = pair.take()
    assert (request.head.method, request.head.target, request.head.upgrade) == (b"CONNECT", b"db.internal:5432", b"connect")
    pair.server.send_response(sid, ok(), False)
    pair.server.send_data(sid, b"server hello", False)
    _, (response, data) = pair.take()
    assert response.head.status == 200 and not response.head.chunked and response.head.content_length is None
    assert data.data == b"server hello"
    pair.client.send_data(sid, b"client bytes", False)
    (data,), _ = pair.take()
    assert data.data == b"client bytes"


def test_expect_continue() -> None:
    pair = Pair()
    sid = pair.client.send_request(get(method=b"PUT", headers=[(b"Expect", b"100-continue"), (b"content-length", b"4")], content_length=4, expect=True), b"http", False)
    (request,), _ = pair.take()
    assert request.head.expect_continue and request.head.content_length == 4
    pair.server.send_response(sid, ok(100), False)
    _, (info,) = pair.take()
    assert isinstance(info, InformationalReceived) and info.head.status == 100
    pair.client.send_data(sid, b"body", True)
    pair.take()
    pair.server.send_response(sid, ok(201), True)
    _, (final,) = pair.take()
    assert final.head.status == 201 and final.end_stream and not final.head.chunked


def test_resets_both_ways() -> None:
    pair = Pair()
    a = pair.client.send_request(get(), b"http", False)
    b = pair.client.send_request(get(), b"http", False)
    pair.take()
    pair.client.reset(a, 8)
    server_events, _ = pair.take()
    assert server_events == [StreamReset(a, 8, True)]
    pair.server.reset(b, 2)
    _, client_events = pair.take()
    assert client_events == [StreamReset(b, 2, True)]
    assert pair.client.open_streams == 0


def test_goaway_refuses_the_streams_above_its_last_id() -> None:
    pair = Pair()
    s1 = pair.client.send_request(get(), b"http", True)
    s3 = pair.client.send_request(get(), b"http", True)
    pair.take()
    s5 = pair.client.send_request(get(), b"http", True)  # in flight when the server drains
    in_flight = pair.client.data_to_send()
    pair.server.goaway()
    _, events = pair.take()
    assert events == [GoAwayReceived(s3, 0), StreamReset(s5, REFUSED_STREAM, True)]
    assert pair.client.goaway_received == s3 and pair.client.available_streams == 0
    with pytest.raises(NoStreamAvailable) as info:
        pair.client.send_request(get(), b"http", True)
    assert info.value.retry_elsewhere
    assert pair.server.receive(in_flight, 0.0) == []  # refused there too
    assert resets(parse(pair.server.data_to_send())) == {s5: REFUSED_STREAM}
    # The streams below it are answered.
    for sid in (s1, s3):
        pair.server.send_response(sid, ok(204), True)
    _, events = pair.take()
    assert [e.stream_id for e in events] == [s1, s3]
    assert pair.client.open_streams == 0


def test_extended_connect_websocket() -> None:
    pair = Pair(server=Http2Settings(enable_connect_protocol=True))
    head = get(
        b"/chat",
        [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"), (b"Sec-WebSocket-Key", b"k=="), (b"Sec-WebSocket-Version", b"13")],
        upgrade=b"websocket",
    )
    sid = pair.client.send_request(head, b"https", False)
    (request,), _ = pair.take()
    assert (request.head.method, request.head.target, request.head.upgrade) == (b"GET", b"/chat", b"websocket")
    assert pair.server.stream_protocol(sid) == b"websocket"
    assert (b"sec-websocket-version", b"13") in request.head.headers
    pair.server.send_response(sid, ok(101, [(b"upgrade", b"websocket"), (b"connection", b"upgrade")]), False)
    _, (response,) = pair.take()
    # The final answer (not an interim 1xx to drop): the tunnel follows it.
    assert isinstance(response, ResponseReceived) and not response.end_stream
    assert response.head.status == 101 and not response.head.chunked
    assert (b"upgrade", b"websocket") in response.head.headers


def test_websocket_needs_the_peers_setting() -> None:
    pair = Pair()
    with pytest.raises(ValueError):
        pair.client.send_request(get(b"/chat", upgrade=b"websocket"), b"https", False)


def test_ping() -> None:
    pair = Pair()
    pair.client.ping(b"pingpong")
    _, events = pair.take()
    assert events == [PingAcked(b"pingpong")]


# --- against h2's own H2Connection ---------------------------------------------------------


def h2_server() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    conn.initiate_connection()
    return conn


def exchange(client: ClientConnection, peer: h2.connection.H2Connection) -> tuple[list[Any], list[Any]]:
    peer_events: list[Any] = []
    events: list[Any] = []
    while True:
        out = client.data_to_send()
        if out:
            peer_events += peer.receive_data(out)
        back = peer.data_to_send()
        if back:
            events += client.receive(back, 0.0)
        if not out and not back:
            return peer_events, events


def test_against_h2_server() -> None:
    peer = h2_server()
    client = ClientConnection()
    client.initiate()
    exchange(client, peer)
    sid = client.send_request(get(b"/x", [(b"content-length", b"3")], method=b"POST", content_length=3), b"https", False)
    client.send_data(sid, b"abc", False)
    client.send_trailers(sid, [(b"x-t", b"1")])
    peer_events, _ = exchange(client, peer)
    request = next(e for e in peer_events if isinstance(e, h2.events.RequestReceived))
    assert request.headers[:4] == [(b":method", b"POST"), (b":scheme", b"https"), (b":path", b"/x"), (b":authority", b"example.com")]
    assert any(isinstance(e, h2.events.TrailersReceived) for e in peer_events)
    peer.send_headers(sid, [(b":status", b"200"), (b"server", b"h2")])
    peer.send_data(sid, b"response")
    peer.send_headers(sid, [(b"x-done", b"1")], end_stream=True)
    _, events = exchange(client, peer)
    assert [type(e) for e in events] == [ResponseReceived, DataReceived, TrailersReceived]
    assert events[0].head.headers == [(b"server", b"h2")] and events[0].head.chunked
    client.acknowledge(sid, events[1].flow_length)


def test_malformed_response_from_h2_server_resets_the_stream() -> None:
    peer = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False)
    )
    peer.initiate_connection()
    client = ClientConnection()
    client.initiate()
    exchange(client, peer)
    sid = client.send_request(get(), b"https", True)
    exchange(client, peer)
    peer.send_headers(sid, [(b":status", b"200"), (b"connection", b"close")])
    _, events = exchange(client, peer)
    assert events == [StreamReset(sid, PROTOCOL_ERROR, False)]
    sid = client.send_request(get(), b"https", True)  # the connection is fine
    exchange(client, peer)
    peer.send_headers(sid, [(b":status", b"2xx")], end_stream=True)
    _, events = exchange(client, peer)
    assert events == [StreamReset(sid, PROTOCOL_ERROR, False)]


def test_h2_client_against_our_server() -> None:
    peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    peer.initiate_connection()
    server = ServerConnection()
    server.initiate()
    server.receive(peer.data_to_send(), 0.0)
    peer.receive_data(server.data_to_send())
    server.receive(peer.data_to_send(), 0.0)
    peer.send_headers(1, [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b":authority", b"a.example"), (b"te", b"trailers")], end_stream=True)
    (request,) = server.receive(peer.data_to_send(), 0.0)
    assert request.head.headers == [(b"host", b"a.example"), (b"te", b"trailers")]
    server.send_response(1, ok(200, [(b"Content-Length", b"2"), (b"Transfer-Encoding", b"chunked")], 2), False)
    server.send_data(1, b"hi", False)
    server.send_trailers(1, [(b"x-trailer", b"1")])
    events = peer.receive_data(server.data_to_send())  # h2 validates what we sent
    kinds = [type(e) for e in events]
    assert h2.events.ResponseReceived in kinds and h2.events.TrailersReceived in kinds and h2.events.StreamEnded in kinds


def test_many_requests_hold_little() -> None:
    pair = Pair()
    for _ in range(500):
        sid = pair.client.send_request(get(), b"http", True)
        pair.take()
        pair.server.send_response(sid, ok(204), True)
        pair.take()
    assert pair.client.available_streams == 100
    assert len(pair.client._h2.streams) <= 16 and len(pair.server._h2.streams) <= 16
    assert pair.client.buffered_size() == 0 and pair.server.buffered_size() == 0


def test_without_huffman() -> None:
    plain = Http2Settings(huffman=False)
    pair = Pair(client=plain, server=plain)
    sid = pair.client.send_request(get(b"/a-path-sent-as-plain-bytes", [(b"x-id", b"abcdef0123456789")]), b"http", True)
    wire = pair.client.data_to_send()
    assert b"/a-path-sent-as-plain-bytes" in wire and b"abcdef0123456789" in wire
    (request,) = pair.server.receive(wire, 0.0)
    assert request.head.target == b"/a-path-sent-as-plain-bytes" and (b"x-id", b"abcdef0123456789") in request.head.headers
    pair.server.send_response(sid, ok(200, [(b"x-plain", b"visible-value")]), True)
    wire = pair.server.data_to_send()
    assert b"visible-value" in wire
    (response,) = pair.client.receive(wire, 0.0)
    assert (b"x-plain", b"visible-value") in response.head.headers


def test_never_indexed_fields_stay_so_across_the_proxy() -> None:
    """A field a client sent never-indexed reaches the upstream never-indexed (RFC 7541 §7.1.3:
    an intermediary must keep the representation), through RequestHead and our client codec;
    authorization and short cookies are never indexed whatever the client did. Compiled code
    must not turn the NeverIndexedHeaderTuple into a plain tuple on the way."""
    upstream = Pair()
    encoder = hpack.Encoder()
    block = encoder.encode(
        [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":path", b"/"),
            (b":authority", b"example.com"),
            hpack.NeverIndexedHeaderTuple(b"x-secret", b"s3cr3t"),
            (b"authorization", b"Bearer abc"),
            (b"cookie", b"a=1"),
            (b"x-plain", b"1"),
        ]
    )
    server = ServerConnection()
    server.initiate()
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    frame = len(block).to_bytes(3, "big") + b"\x01\x05" + (1).to_bytes(4, "big") + block
    (event,) = [e for e in server.receive(preface + frame, 0.0) if type(e) is RequestReceived]
    kinds = {bytes(f[0]): type(f) for f in event.head.headers}
    assert kinds[b"x-secret"] is hpack.NeverIndexedHeaderTuple and kinds[b"x-plain"] is tuple
    sid = upstream.client.send_request(event.head, b"https", True)
    sent = upstream.client.data_to_send()
    decoded = hpack.Decoder().decode(parse(sent)[-1].data, raw=True)
    never = {bytes(f[0]) for f in decoded if isinstance(f, hpack.NeverIndexedHeaderTuple)}
    assert never == {b"x-secret", b"authorization", b"cookie"}
    assert sid == 1
