"""The HTTP/2 server codec against a raw-frame client: translation, validation, flow control,
resets and GOAWAY."""

from __future__ import annotations

import hpack
import pytest
from hyperframe.frame import DataFrame, HeadersFrame, SettingsFrame, WindowUpdateFrame

from proxy.codec.http1 import ResponseHead
from proxy.codec.http2 import (
    COMPRESSION_ERROR,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    DataReceived,
    GoAwayReceived,
    Http2Error,
    Http2Settings,
    PingAcked,
    RequestReceived,
    ServerConnection,
    StreamReset,
    TrailersReceived,
    WindowOpened,
)
from tests.codec.h2frames import REQUEST, Frames, goaway, parse, raw, resets


def handshake(settings: Http2Settings | None = None, **client_settings: int) -> tuple[ServerConnection, Frames, list]:
    server = ServerConnection(settings)
    server.initiate()
    first = parse(server.data_to_send())
    f = Frames()
    server.receive(f.preface(**client_settings) + f.settings(ack=True), 0.0)
    server.data_to_send()  # the SETTINGS ack
    return server, f, first


def response(status: int = 200, headers: list | None = None) -> ResponseHead:
    return ResponseHead(status, b"", b"1.1", headers or [], True, False, None)


def test_preface_settings_and_connection_window() -> None:
    _, _, frames = handshake()
    settings = frames[0]
    assert isinstance(settings, SettingsFrame)
    assert settings.settings[3] == 100  # max concurrent streams
    assert settings.settings[4] == 1 << 20  # stream window
    assert settings.settings[6] == 65536  # max header list size
    assert 8 not in settings.settings or settings.settings[8] == 0
    window = frames[1]
    assert isinstance(window, WindowUpdateFrame) and window.stream_id == 0
    assert window.window_increment == (4 << 20) - 65535


def test_get_becomes_an_http1_shaped_head() -> None:
    server, f, _ = handshake()
    fields = [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":path", b"/a?b=1"),
        (b":authority", b"example.com:8443"),
        (b"cookie", b"a=1"),
        (b"user-agent", b"t"),
        (b"cookie", b"b=2"),
        (b"te", b"trailers"),
    ]
    (event,) = server.receive(f.headers(1, fields, end_stream=True), 1.0)
    assert isinstance(event, RequestReceived)
    assert event.stream_id == 1 and event.end_stream and event.scheme == b"https"
    head = event.head
    assert (head.method, head.target, head.http_version) == (b"GET", b"/a?b=1", b"2")
    assert head.headers == [(b"host", b"example.com:8443"), (b"cookie", b"a=1; b=2"), (b"user-agent", b"t"), (b"te", b"trailers")]
    assert head.keep_alive and not head.chunked and head.content_length is None
    assert not head.expect_continue and head.upgrade is None
    assert server.open_streams == 1 and server.highest_stream_id == 1


def test_host_header_without_authority_is_kept() -> None:
    server, f, _ = handshake()
    fields = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"host", b"h.example")]
    (event,) = server.receive(f.headers(1, fields, end_stream=True), 1.0)
    assert event.head.headers == [(b"host", b"h.example")]


def test_host_equal_to_authority_appears_once() -> None:
    server, f, _ = handshake()
    (event,) = server.receive(f.headers(1, [*REQUEST, (b"host", b"example.com")], end_stream=True), 1.0)
    assert event.head.headers == [(b"host", b"example.com")]


def test_body_with_content_length_across_frames() -> None:
    server, f, _ = handshake()
    fields = [(b":method", b"POST"), *REQUEST[1:], (b"content-length", b"10")]
    events = server.receive(f.headers(1, fields) + f.data(1, b"hello") + f.data(1, b"worl", pad=3) + f.data(1, b"d", end_stream=True), 1.0)
    assert isinstance(events[0], RequestReceived)
    head = events[0].head
    assert head.content_length == 10 and not head.chunked and not events[0].end_stream
    assert events[1:] == [DataReceived(1, b"hello", False, 5), DataReceived(1, b"worl", False, 8), DataReceived(1, b"d", True, 1)]
    assert server.data_to_send() == b""  # nothing acknowledged on receipt


def test_body_of_unknown_length_is_chunked() -> None:
    server, f, _ = handshake()
    (event,) = server.receive(f.headers(1, [(b":method", b"POST"), *REQUEST[1:]]), 1.0)
    assert event.head.chunked and event.head.content_length is None


def test_expect_continue() -> None:
    server, f, _ = handshake()
    fields = [(b":method", b"PUT"), *REQUEST[1:], (b"expect", b"100-continue"), (b"content-length", b"3")]
    (event,) = server.receive(f.headers(1, fields), 1.0)
    assert event.head.expect_continue
    server.send_response(1, response(100), False)
    server.send_response(1, response(200), True)
    frames = parse(server.data_to_send())
    decoder = hpack.Decoder()
    statuses = [decoder.decode(x.data, raw=True)[0] for x in frames if isinstance(x, HeadersFrame)]
    assert statuses == [(b":status", b"100"), (b":status", b"200")]
    with pytest.raises(ValueError):
        server.send_response(3, response(100), True)


def _malformed_events(server: ServerConnection, wire: bytes, sid: int) -> None:
    events = server.receive(wire, 1.0)
    assert events[-1] == StreamReset(sid, PROTOCOL_ERROR, False)
    out = parse(server.data_to_send())
    assert resets(out) == {sid: PROTOCOL_ERROR}
    assert goaway(out) is None


@pytest.mark.parametrize(
    "fields",
    [
        [*REQUEST, (b"X-Upper", b"1")],
        [*REQUEST, (b"connection", b"keep-alive")],
        [*REQUEST, (b"keep-alive", b"1")],
        [*REQUEST, (b"proxy-connection", b"x")],
        [*REQUEST, (b"transfer-encoding", b"chunked")],
        [*REQUEST, (b"upgrade", b"websocket")],
        [*REQUEST, (b"te", b"gzip")],
        [*REQUEST, (b"x", b"a\x00b")],
        [*REQUEST, (b"x", b"a\rb")],
        [*REQUEST, (b"x", b"a\nb")],
        [*REQUEST, (b"x", b"\x01")],
        [*REQUEST, (b"x", b" lead")],
        [*REQUEST, (b"x", b"trail\t")],
        [*REQUEST, (b"bad name", b"1")],
        [*REQUEST, (b"", b"1")],
        [*REQUEST, (b"host", b"other.example")],
        [*REQUEST, (b"content-length", b"1"), (b"content-length", b"1")],
        [*REQUEST, (b"content-length", b"-1")],
        [*REQUEST, (b"content-length", b"1")],  # with END_STREAM: no body can follow
        [(b":method", b"GET"), (b":scheme", b"https"), (b"x", b"1"), (b":path", b"/"), (b":authority", b"a")],
        [*REQUEST, (b":path", b"/again")],
        [(b":method", b"GET"), (b":path", b"/"), (b":authority", b"a")],
        [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a")],
        [(b":scheme", b"https"), (b":path", b"/"), (b":authority", b"a")],
        [*REQUEST, (b":status", b"200")],
        [*REQUEST, (b":unknown", b"1")],
        [*REQUEST, (b":protocol", b"websocket")],  # not enabled
        [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"")] + REQUEST[3:],
        [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"no-slash")] + REQUEST[3:],
        [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/a b")] + REQUEST[3:],
        [(b":method", b"G T"), *REQUEST[1:]],
        [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/")],  # no authority at all
        [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b":authority", b"user@host")],
        [(b":method", b"CONNECT"), (b":authority", b"h:443"), (b":path", b"/")],
        [(b":method", b"CONNECT"), (b":scheme", b"https"), (b":authority", b"h:443")],
        [(b":method", b"CONNECT")],
    ],
)
def test_malformed_request_resets_the_stream_only(fields: list) -> None:
    server, f, _ = handshake()
    _malformed_events(server, f.headers(1, fields, end_stream=True), 1)
    # The connection goes on, and the HPACK state followed the bad block.
    (event,) = server.receive(f.headers(3, REQUEST, end_stream=True), 1.0)
    assert isinstance(event, RequestReceived) and event.stream_id == 3
    assert server.receive(f.data(1, b"late"), 1.0) == []  # on the reset stream: dropped


def test_too_many_fields_is_malformed() -> None:
    server, f, _ = handshake(Http2Settings(max_header_fields=10))
    fields = [*REQUEST, *[(b"x-%d" % i, b"v") for i in range(7)]]
    _malformed_events(server, f.headers(1, fields, end_stream=True), 1)


def test_content_length_mismatch_resets_the_stream() -> None:
    server, f, _ = handshake()
    post = [(b":method", b"POST"), *REQUEST[1:], (b"content-length", b"3")]
    events = server.receive(f.headers(1, post) + f.data(1, b"abcd", end_stream=True), 1.0)
    assert events[-1] == StreamReset(1, PROTOCOL_ERROR, False)
    out = parse(server.data_to_send())
    assert resets(out) == {1: PROTOCOL_ERROR} and goaway(out) is None
    # too short at the end
    events = server.receive(f.headers(3, post) + f.data(3, b"ab", end_stream=True), 1.0)
    assert events[-1] == StreamReset(3, PROTOCOL_ERROR, False)
    # too short, ended by trailers
    events = server.receive(f.headers(5, post) + f.data(5, b"ab") + f.headers(5, [(b"x-t", b"1")], end_stream=True), 1.0)
    assert events[-1] == StreamReset(5, PROTOCOL_ERROR, False)
    assert isinstance(server.receive(f.headers(7, REQUEST, end_stream=True), 1.0)[0], RequestReceived)


def test_trailers() -> None:
    server, f, _ = handshake()
    post = [(b":method", b"POST"), *REQUEST[1:], (b"te", b"trailers")]
    events = server.receive(f.headers(1, post) + f.data(1, b"x") + f.headers(1, [(b"grpc-status", b"0")], end_stream=True), 1.0)
    assert events[1:] == [DataReceived(1, b"x", False, 1), TrailersReceived(1, [(b"grpc-status", b"0")])]


@pytest.mark.parametrize(
    "trailers,end",
    [([(b":path", b"/")], True), ([(b"content-length", b"1")], True), ([(b"x", b"1")], False), ([(b"X", b"1")], True)],
)
def test_malformed_trailers(trailers: list, end: bool) -> None:
    server, f, _ = handshake()
    server.receive(f.headers(1, [(b":method", b"POST"), *REQUEST[1:]]), 1.0)
    _malformed_events(server, f.headers(1, trailers, end_stream=end), 1)


def test_connect() -> None:
    server, f, _ = handshake()
    (event,) = server.receive(f.headers(1, [(b":method", b"CONNECT"), (b":authority", b"db.internal:5432")]), 1.0)
    head = event.head
    assert (head.method, head.target, head.upgrade) == (b"CONNECT", b"db.internal:5432", b"connect")
    assert head.headers == [(b"host", b"db.internal:5432")]
    assert not head.chunked and head.content_length is None
    server.send_response(1, response(200), False)
    assert server.send_data(1, b"tunnel bytes", False) == 12


def test_extended_connect_websocket() -> None:
    server, f, first = handshake(Http2Settings(enable_connect_protocol=True))
    assert first[0].settings[8] == 1
    fields = [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"), (b":path", b"/chat"), (b":authority", b"ws.example"), (b"sec-websocket-version", b"13")]
    (event,) = server.receive(f.headers(1, fields), 1.0)
    head = event.head
    assert (head.method, head.target, head.upgrade) == (b"GET", b"/chat", b"websocket")
    assert not head.chunked and not event.end_stream
    assert server.stream_protocol(1) == b"websocket"
    server.send_response(1, response(101, [(b"upgrade", b"websocket"), (b"connection", b"upgrade"), (b"sec-websocket-accept", b"x")]), False)
    (h,) = [x for x in parse(server.data_to_send()) if isinstance(x, HeadersFrame)]
    assert hpack.Decoder().decode(h.data, raw=True) == [(b":status", b"200")]
    with pytest.raises(ValueError):
        server.send_response(3, response(101), False)  # 101 on an ordinary stream


def test_response_fields_are_http2_shaped() -> None:
    server, f, _ = handshake()
    server.receive(f.headers(1, REQUEST, end_stream=True), 1.0)
    headers = [
        (b"Content-Type", b"text/plain"),
        (b"Connection", b"close, X-Hop"),
        (b"X-Hop", b"1"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Transfer-Encoding", b"chunked"),
        (b"TE", b"trailers"),
        (b"Upgrade", b"h2c"),
        (b"Set-Cookie", b"a=1"),
    ]
    server.send_response(1, response(404, headers), True)
    (h,) = parse(server.data_to_send())
    assert "END_STREAM" in h.flags
    assert hpack.Decoder().decode(h.data, raw=True) == [(b":status", b"404"), (b"content-type", b"text/plain"), (b"set-cookie", b"a=1")]


def test_send_data_follows_the_windows() -> None:
    server, f, _ = handshake(initial_window_size=10)
    server.receive(f.headers(1, REQUEST, end_stream=True), 1.0)
    server.send_response(1, response(), False)
    assert server.send_window(1) == 10
    assert server.send_data(1, b"0123456789abcdef", True) == 10
    assert server.send_data(1, b"abcdef", True) == 0
    frames = parse(server.data_to_send())
    assert [len(x.data) for x in frames if isinstance(x, DataFrame)] == [10]
    assert all("END_STREAM" not in x.flags for x in frames)
    assert server.receive(f.window_update(1, 100), 1.0) == [WindowOpened(1)]
    assert server.receive(f.window_update(1, 100), 1.0) == []  # nobody waits any more
    assert server.send_data(1, b"abcdef", True) == 6
    (d,) = parse(server.data_to_send())
    assert d.data == b"abcdef" and "END_STREAM" in d.flags


def test_connection_window_and_frame_size() -> None:
    server, f, _ = handshake(initial_window_size=1 << 20)
    server.receive(f.headers(1, REQUEST, end_stream=True) + f.headers(3, REQUEST, end_stream=True), 1.0)
    server.send_response(1, response(), False)
    server.send_response(3, response(), False)
    assert server.send_window(0) == 65535
    assert server.send_data(1, b"x" * 40000, False) == 40000
    sizes = [len(x.data) for x in parse(server.data_to_send()) if isinstance(x, DataFrame)]
    assert sizes == [16384, 16384, 7232]
    assert server.send_data(3, b"y" * 40000, True) == 25535
    assert server.send_window(0) == 0 and server.send_window(3) == 0
    server.data_to_send()
    assert server.receive(f.window_update(0, 50000), 1.0) == [WindowOpened(0)]
    assert server.send_data(3, b"y" * 14465, True) == 14465


def test_peer_settings_open_windows() -> None:
    server, f, _ = handshake(initial_window_size=0)
    server.receive(f.headers(1, REQUEST, end_stream=True), 1.0)
    server.send_response(1, response(), False)
    assert server.send_data(1, b"abc", True) == 0
    events = server.receive(f.settings(initial_window_size=100), 1.0)
    assert events[-1] == WindowOpened(0)
    assert server.send_data(1, b"abc", True) == 3


def test_acknowledge_opens_windows_as_data_is_consumed() -> None:
    server, f, _ = handshake()
    server.receive(f.headers(1, [(b":method", b"POST"), *REQUEST[1:]]), 1.0)
    chunk = b"z" * 16384
    server.receive(b"".join(f.data(1, chunk) for _ in range(40)), 1.0)
    assert server.data_to_send() == b""  # received, not consumed: no WINDOW_UPDATE
    assert server.receive_window(1) == (1 << 20) - 40 * 16384
    server.acknowledge(1, 40 * 16384)
    updates = {x.stream_id: x.window_increment for x in parse(server.data_to_send()) if isinstance(x, WindowUpdateFrame)}
    assert updates == {1: 40 * 16384}  # the connection's: not half its 4 MiB yet
    assert server.receive_window(1) == 1 << 20


def test_client_reset() -> None:
    server, f, _ = handshake()
    server.receive(f.headers(1, REQUEST, end_stream=True), 1.0)
    assert server.receive(f.rst(1, 8), 1.0) == [StreamReset(1, 8, True)]
    # Sends on a reset stream are dropped, not errors: the layer above learns from the event.
    server.send_response(1, response(), False)
    assert server.send_data(1, b"abc", True) == 3
    server.send_trailers(1, [(b"x", b"1")])
    server.reset(1, 8)
    assert server.data_to_send() == b""
    assert server.open_streams == 0


def test_our_reset() -> None:
    server, f, _ = handshake()
    server.receive(f.headers(1, [(b":method", b"POST"), *REQUEST[1:]]), 1.0)
    server.reset(1, 8)
    assert resets(parse(server.data_to_send())) == {1: 8}
    assert server.receive(f.data(1, b"in flight"), 1.0) == []


def test_refused_beyond_max_concurrent_streams() -> None:
    server, f, _ = handshake(Http2Settings(max_concurrent_streams=2))
    events = server.receive(f.headers(1, REQUEST) + f.headers(3, REQUEST) + f.headers(5, REQUEST), 1.0)
    assert [e.stream_id for e in events] == [1, 3]
    out = parse(server.data_to_send())
    assert resets(out) == {5: REFUSED_STREAM} and goaway(out) is None
    server.reset(1, 8)
    (event,) = server.receive(f.headers(7, REQUEST), 1.0)
    assert event.stream_id == 7


def test_two_step_goaway() -> None:
    server, f, _ = handshake()
    server.receive(f.headers(1, REQUEST, end_stream=True), 1.0)
    server.goaway(0, 2**31 - 1)
    assert goaway(parse(server.data_to_send())) == (2**31 - 1, 0)
    (event,) = server.receive(f.headers(3, REQUEST, end_stream=True), 1.0)  # in flight: served
    assert event.stream_id == 3
    server.goaway()
    assert goaway(parse(server.data_to_send())) == (3, 0)
    assert server.receive(f.headers(5, REQUEST, end_stream=True), 1.0) == []
    assert resets(parse(server.data_to_send())) == {5: REFUSED_STREAM}
    # The streams it promised go on to the end.
    for sid in (1, 3):
        server.send_response(sid, response(), False)
        assert server.send_data(sid, b"done", True) == 4
    assert len([x for x in parse(server.data_to_send()) if isinstance(x, DataFrame)]) == 2
    assert server.open_streams == 0


def test_goaway_from_the_client_and_ping() -> None:
    server, f, _ = handshake()
    assert server.receive(f.goaway(0, 0), 1.0) == [GoAwayReceived(0, 0)]
    server.ping(b"12345678")
    assert server.receive(f.ping(b"12345678", ack=True), 1.0) == [PingAcked(b"12345678")]
    assert server.receive(f.ping(b"abcdefgh"), 1.0) == []
    (ack,) = parse(server.data_to_send())[-1:]
    assert ack.opaque_data == b"abcdefgh" and "ACK" in ack.flags


def test_bad_preface() -> None:
    server = ServerConnection()
    server.initiate()
    server.data_to_send()
    with pytest.raises(Http2Error) as info:
        server.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    assert info.value.code == PROTOCOL_ERROR
    assert goaway(parse(server.data_to_send())) == (0, PROTOCOL_ERROR)
    with pytest.raises(Http2Error):
        server.receive(b"", 0.0)  # dead for good


def test_hpack_garbage_is_a_compression_error() -> None:
    server, _, _ = handshake()
    with pytest.raises(Http2Error) as info:
        server.receive(raw(1, 0x5, 1, b"\xff\xff\xff\xff\xff"), 1.0)
    assert info.value.code == COMPRESSION_ERROR
    assert goaway(parse(server.data_to_send())) == (0, COMPRESSION_ERROR)


def test_protocol_errors_answered_by_h2() -> None:
    server, f, _ = handshake()
    with pytest.raises(Http2Error) as info:
        server.receive(f.headers(2, REQUEST), 1.0)  # an even stream from a client
    assert info.value.code == PROTOCOL_ERROR
    server, f, _ = handshake()
    with pytest.raises(Http2Error) as info:
        server.receive(raw(0, 0, 1, b"x" * 16385), 1.0)  # over our max frame size
    assert info.value.code == 0x6  # FRAME_SIZE_ERROR
    server, f, _ = handshake()
    with pytest.raises(Http2Error) as info:
        server.receive(raw(5, 0x4, 1, b"\0\0\0\2" + f.block(REQUEST)), 1.0)  # PUSH_PROMISE from a client
    assert info.value.code == PROTOCOL_ERROR


def _conversation() -> tuple[bytes, list]:
    f = Frames()
    post = [(b":method", b"POST"), *REQUEST[1:], (b"content-length", b"11"), (b"x-long", b"v" * 300)]
    block = f.block(post)
    wire = (
        f.preface(initial_window_size=1 << 20)
        + f.settings(ack=True)
        + f.headers_block(1, block[:100], end_headers=False)
        + f.continuation(1, block[100:200])
        + f.continuation(1, block[200:], end_headers=True)
        + f.data(1, b"hello ", pad=4)
        + f.ping(b"pingpong")
        + f.data(1, b"world", end_stream=True)
        + raw(1, 0x25, 3, b"\x00\x00\x00\x01\x0f" + f.block(REQUEST))  # HEADERS with PRIORITY
        + f.window_update(0, 1000)
        + raw(0xFA, 0, 0, b"unknown extension")
        + f.headers(5, REQUEST, end_stream=True)
    )
    server = ServerConnection()
    server.initiate()
    server.data_to_send()
    return wire, server.receive(wire, 1.0)


def _same(a: list, b: list) -> bool:
    return [repr(x) for x in a] == [repr(x) for x in b]


def test_any_split_of_the_bytes_gives_the_same_events() -> None:
    wire, whole = _conversation()
    assert [type(e).__name__ for e in whole] == [
        "SettingsChanged", "RequestReceived", "DataReceived", "DataReceived", "RequestReceived", "RequestReceived"
    ]
    assert whole[2] == DataReceived(1, b"hello ", False, 11)
    import random

    rng = random.Random(7)
    for trial in range(60):
        server = ServerConnection()
        server.initiate()
        server.data_to_send()
        events: list = []
        pos = 0
        while pos < len(wire):
            step = 1 if trial == 0 else rng.randint(1, 40)
            events += server.receive(wire[pos : pos + step], 1.0)
            pos += step
        assert _same(events, whole), trial
        assert server.buffered_size() == len(server._h2._data_to_send)


def test_data_inside_a_header_block_is_a_protocol_error() -> None:
    server, f, _ = handshake()
    with pytest.raises(Http2Error) as info:
        server.receive(f.headers_block(1, f.block(REQUEST), end_headers=False) + f.data(1, b"x"), 1.0)
    assert info.value.code == PROTOCOL_ERROR


def test_options_asterisk() -> None:
    server, f, _ = handshake()
    fields = [(b":method", b"OPTIONS"), (b":scheme", b"https"), (b":path", b"*"), (b":authority", b"a")]
    (event,) = server.receive(f.headers(1, fields, end_stream=True), 1.0)
    assert event.head.target == b"*"


@pytest.mark.parametrize(
    "wire_of,code",
    [
        # More than the stream's window (1 MiB): a flow-control error.
        (lambda f: f.headers(1, [(b":method", b"POST"), *REQUEST[1:]]) + b"".join(f.data(1, b"z" * 16384) for _ in range(65)), 0x3),
        # A window pushed past 2^31-1.
        (lambda f: f.window_update(0, 2**31 - 1), 0x3),
        # SETTINGS_INITIAL_WINDOW_SIZE past 2^31-1.
        (lambda f: raw(4, 0, 0, b"\x00\x04\x80\x00\x00\x00"), 0x3),
        # An HPACK table size update beyond the 4096 we allow.
        (lambda f: raw(1, 0x5, 1, b"\x3f\xe1\x3f" + f.block(REQUEST)), COMPRESSION_ERROR),
        # A SETTINGS frame on a stream, a PING of the wrong length.
        (lambda f: raw(4, 0, 1, b""), PROTOCOL_ERROR),
        (lambda f: raw(6, 0, 0, b"1234567"), 0x6),
        # HEADERS on stream 0.
        (lambda f: raw(1, 0x5, 0, f.block(REQUEST)), PROTOCOL_ERROR),
        # A CONTINUATION with no header block open.
        (lambda f: f.continuation(1, f.block(REQUEST), end_headers=True), PROTOCOL_ERROR),
        # A stream id lower than one already used.
        (lambda f: f.headers(5, REQUEST, end_stream=True) + f.headers(3, REQUEST, end_stream=True), PROTOCOL_ERROR),
    ],
)
def test_connection_errors(wire_of, code: int) -> None:
    server, f, _ = handshake()
    with pytest.raises(Http2Error) as info:
        server.receive(wire_of(f), 1.0)
    assert info.value.code == code
    assert goaway(parse(server.data_to_send()))[1] == code


def test_trailers_on_a_stream_we_reset_get_a_reset() -> None:
    server, f, _ = handshake()
    server.receive(f.headers(1, [(b":method", b"POST"), *REQUEST[1:]]), 1.0)
    server.reset(1, 8)
    server.data_to_send()
    assert server.receive(f.headers(1, [(b"x-t", b"1")], end_stream=True), 1.0) == []
    out = parse(server.data_to_send())
    assert resets(out) == {1: 0x5} and goaway(out) is None
    (event,) = server.receive(f.headers(3, REQUEST, end_stream=True), 1.0)  # HPACK still in step
    assert event.stream_id == 3


def test_frames_the_stream_state_forbids_reset_it() -> None:
    server, f, _ = handshake()
    # DATA after the client ended its side (half closed, remote): a stream error.
    events = server.receive(f.headers(1, REQUEST, end_stream=True) + f.data(1, b"x"), 1.0)
    assert events[1:] == [StreamReset(1, 0x5, False)]
    out = parse(server.data_to_send())
    assert resets(out) == {1: 0x5} and goaway(out) is None
    # HEADERS after the trailers.
    post = [(b":method", b"POST"), *REQUEST[1:]]
    events = server.receive(f.headers(3, post) + f.headers(3, [(b"x", b"1")], end_stream=True) + f.headers(3, [(b"y", b"2")], end_stream=True), 1.0)
    assert events[1:] == [TrailersReceived(3, [(b"x", b"1")]), StreamReset(3, 0x5, False)]
    out = parse(server.data_to_send())
    assert resets(out) == {3: 0x5} and goaway(out) is None
