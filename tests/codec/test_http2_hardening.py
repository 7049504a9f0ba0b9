"""The known HTTP/2 attacks, sent frame by frame: each ends in a GOAWAY with the right code and an
Http2Error, with what the codec holds bounded all along."""

from __future__ import annotations

import pytest
from hpack import HeaderTuple

from proxy.codec.http2 import (
    ENHANCE_YOUR_CALM,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    Http2Error,
    Http2Settings,
    RequestReceived,
    ServerConnection,
    StreamReset,
)
from tests.codec.h2frames import REQUEST, Frames, goaway, parse, resets


def handshake(settings: Http2Settings | None = None) -> tuple[ServerConnection, Frames]:
    server = ServerConnection(settings)
    server.initiate()
    server.data_to_send()
    f = Frames()
    server.receive(f.preface() + f.settings(ack=True), 0.0)
    server.data_to_send()
    return server, f


def refused(server: ServerConnection, wire: bytes, now: float = 1.0, code: int = ENHANCE_YOUR_CALM) -> Http2Error:
    with pytest.raises(Http2Error) as info:
        server.receive(wire, now)
    assert info.value.code == code
    out = parse(server.data_to_send())
    assert goaway(out) is not None and goaway(out)[1] == code
    return info.value


def test_rapid_reset_bucket() -> None:
    server, f = handshake(Http2Settings(max_client_resets=50, client_resets_per_second=10))
    # Within the budget, spread over time: fine.
    sid = 1
    for second in range(5):
        wire = b"".join(f.headers(sid + 2 * i, REQUEST, end_stream=True) + f.rst(sid + 2 * i) for i in range(10))
        server.receive(wire, float(second))
        sid += 20
    assert server.open_streams == 0
    # All at once: the bucket runs dry.
    wire = b"".join(f.headers(sid + 2 * i, REQUEST, end_stream=True) + f.rst(sid + 2 * i) for i in range(60))
    refused(server, wire, 5.0)
    assert server.buffered_size() < 4096 and len(server._h2.streams) <= 60


def test_rapid_reset_ratio() -> None:
    settings = Http2Settings(max_client_resets=10**6, client_resets_per_second=10**6, premature_reset_min_streams=100)
    server, f = handshake(settings)
    for i in range(99):
        server.receive(f.headers(1 + 4 * i, REQUEST, end_stream=True) + f.headers(3 + 4 * i, REQUEST, end_stream=True), 1.0)
        server.send_response(1 + 4 * i, _ok(), True)  # answered
        server.receive(f.rst(3 + 4 * i), 1.0)  # cancelled while we answer
        server.data_to_send()
    # 198 streams, 99 premature resets: at half; one more tips it.
    refused(server, f.headers(401, REQUEST, end_stream=True) + f.rst(401))


def test_reset_after_the_response_is_not_premature() -> None:
    server, f = handshake(Http2Settings(max_client_resets=5, client_resets_per_second=0.0))
    for i in range(50):
        sid = 1 + 2 * i
        server.receive(f.headers(sid, [(b":method", b"POST"), *REQUEST[1:]]), 1.0)
        server.send_response(sid, _ok(), True)
        assert server.receive(f.rst(sid, 0), 1.0) == [StreamReset(sid, 0, True)]
        server.data_to_send()


def _ok():
    from proxy.codec.http1 import ResponseHead

    return ResponseHead(200, b"", b"1.1", [], True, False, None)


def test_continuation_flood_is_bounded_before_decoding() -> None:
    server, f = handshake()
    block = f.block(REQUEST)
    wire = f.headers_block(1, block, end_headers=False)
    chunk = b"\x00" * 16000  # never decoded: no END_HEADERS
    total = 0
    with pytest.raises(Http2Error) as info:
        for _ in range(100):
            server.receive(f.continuation(1, chunk), 1.0) if total else server.receive(wire, 1.0)
            total += 1
            assert server.buffered_size() <= 65536 + 16384 + 64
    assert info.value.code == ENHANCE_YOUR_CALM
    assert goaway(parse(server.data_to_send()))[1] == ENHANCE_YOUR_CALM


def test_empty_continuation_flood() -> None:
    server, f = handshake()
    wire = f.headers_block(1, f.block(REQUEST), end_headers=False) + b"".join(f.continuation(1, b"") for _ in range(10))
    refused(server, wire)


def test_many_small_continuations_hit_h2s_frame_limit() -> None:
    server, f = handshake()
    wire = f.headers_block(1, b"\x82", end_headers=False) + b"".join(f.continuation(1, b"\x84") for _ in range(100))
    refused(server, wire, code=PROTOCOL_ERROR)


def test_hpack_bomb() -> None:
    server, f = handshake()
    # One 4,000-byte value enters both dynamic tables, then each reference is one byte on the
    # wire and 4 KB decoded: 20 of them are over 64 KiB.
    big = (b"x-bomb", b"b" * 4000)
    (event,) = server.receive(f.headers(1, [*REQUEST, HeaderTuple(*big)], end_stream=True), 1.0)
    assert isinstance(event, RequestReceived)
    bomb = f.headers(3, [*REQUEST, *[big] * 20], end_stream=True)
    assert len(bomb) < 200
    refused(server, bomb)


def test_oversized_header_list() -> None:
    server, f = handshake(Http2Settings(max_header_list_size=8192))
    fields = [*REQUEST, (b"x-big", b"v" * 9000)]
    block = f.block(fields)
    wire = f.headers_block(1, block[:8000], end_headers=False) + f.continuation(1, block[8000:], end_headers=True)
    refused(server, wire)


def test_decoded_size_limit() -> None:
    server, f = handshake(Http2Settings(max_header_list_size=8192))
    # Under the block bound encoded, over it decoded (Huffman shrinks 'a's to 5 bits each).
    wire = f.headers(1, [*REQUEST, (b"x-big", b"a" * 12000)], end_stream=True)
    assert len(wire) < 8192
    refused(server, wire)


def test_settings_flood() -> None:
    server, f = handshake()
    refused(server, b"".join(f.settings(initial_window_size=65535) for _ in range(150)))


def test_settings_within_budget_over_time() -> None:
    server, f = handshake()
    for second in range(30):
        server.receive(b"".join(f.settings(initial_window_size=65535) for _ in range(9)), float(second))
        server.data_to_send()


def test_ping_flood() -> None:
    server, f = handshake()
    refused(server, b"".join(f.ping() for _ in range(150)))


def test_outbound_control_frames_bound() -> None:
    # Pings within their budget, but nobody takes what we queue: the acks pile up.
    server, f = handshake(Http2Settings(max_pings=10**6, pings_per_second=10**6))
    for _ in range(9):
        server.receive(b"".join(f.ping() for _ in range(100)), 1.0)
    size = server.buffered_size()
    assert size == 900 * 17
    refused(server, b"".join(f.ping() for _ in range(200)))


def test_empty_data_flood() -> None:
    server, f = handshake()
    server.receive(f.headers(1, [(b":method", b"POST"), *REQUEST[1:]]), 1.0)
    server.receive(f.data(1, b"") + f.data(1, b"x") + f.data(1, b""), 1.0)  # not consecutive
    refused(server, f.data(1, b"") + f.data(1, b""))


def test_priority_flood() -> None:
    server, f = handshake()
    server.receive(b"".join(f.priority(1 + 2 * i) for i in range(100)), 1.0)
    refused(server, f.priority(301))


def test_window_update_flood() -> None:
    server, f = handshake()
    server.receive(b"".join(f.window_update(0, 1) for _ in range(5)), 1.0)
    refused(server, f.window_update(0, 1))


def test_window_updates_allowed_while_we_send() -> None:
    server, f = handshake()
    server.receive(f.headers(1, REQUEST, end_stream=True), 1.0)
    server.send_response(1, _ok(), False)
    for _ in range(50):
        server.send_data(1, b"x" * 100, False)
        server.receive(f.window_update(0, 100) + f.window_update(1, 100), 1.0)


def test_stream_exhaustion() -> None:
    server, f = handshake(Http2Settings(max_concurrent_streams=2, max_refused_streams=5, refused_streams_per_second=1))
    server.receive(f.headers(1, REQUEST) + f.headers(3, REQUEST), 1.0)
    server.receive(b"".join(f.headers(5 + 2 * i, REQUEST) for i in range(5)), 1.0)
    assert resets(parse(server.data_to_send())) == {5 + 2 * i: REFUSED_STREAM for i in range(5)}
    refused(server, f.headers(15, REQUEST), 1.5)


def test_memory_stays_bounded_under_a_mixed_flood() -> None:
    # Within every rate budget: the reset ratio ends it once enough streams were opened.
    server, f = handshake()
    sid = 1
    with pytest.raises(Http2Error) as info:
        for second in range(100):
            wire = b"".join(f.headers(sid + 2 * i, REQUEST, end_stream=True) + f.rst(sid + 2 * i) for i in range(15))
            wire += f.ping() * 5 + f.settings() * 5
            sid += 30
            server.receive(wire, float(second))
            server.data_to_send()
            assert server.buffered_size() == 0
            assert len(server._h2.streams) <= 32  # closed ones are forgotten as the dict grows
    assert info.value.code == ENHANCE_YOUR_CALM and "most streams" in str(info.value)
    assert (server.highest_stream_id + 1) // 2 == 500  # streams opened


def test_closed_streams_are_remembered_boundedly() -> None:
    server, f = handshake()
    for i in range(3000):
        sid = 1 + 2 * i
        server.receive(f.headers(sid, REQUEST, end_stream=True), 1.0)
        server.send_response(sid, _ok(), True)
        server.data_to_send()
    assert len(server._h2._closed_streams) <= 1024
    assert len(server._h2.streams) <= 16  # closed streams are forgotten as the dict grows
