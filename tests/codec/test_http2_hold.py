"""Hold mode (hot upgrade): a busy server connection processes what its open streams need and
keeps the frames that would open streams, in order, for the connection's next owner."""

from __future__ import annotations

import json

from proxy.codec import http2
from proxy.codec.http2 import DataReceived, RequestReceived, ServerConnection, TrailersReceived, WindowOpened
from tests.codec.h2frames import REQUEST, Frames, parse
from tests.codec.test_http2_server import handshake, response

UPLOAD = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/up"), (b":authority", b"example.com")]


def moved(codec: ServerConnection) -> ServerConnection:
    return ServerConnection.from_state(json.loads(json.dumps(codec.export_state())))


def test_new_streams_wait_while_the_open_one_gets_its_body_and_window() -> None:
    server, f, _ = handshake()
    assert isinstance(server.receive(f.headers(1, UPLOAD), 0.0)[0], RequestReceived)
    server.hold_streams()
    # A new request (indexed headers: its block must be decoded after stream 1's), then stream
    # 1's body and a connection WINDOW_UPDATE, all in one read and a frame cut at the end.
    wire = f.headers(3, [*REQUEST, (b"x-token", b"abc")], end_stream=True) + f.data(1, b"body") + f.window_update(0, 1000)
    ping = f.ping(b"12345678")
    events = server.receive(wire + ping[:5], 0.0)
    assert [type(e) for e in events] == [DataReceived]  # stream 1's body; stream 3 is not open
    assert server.open_streams == 1 and server.highest_stream_id == 1
    events = server.receive(ping[5:] + f.data(1, b"", end_stream=True), 0.0)
    assert [type(e) for e in events] == [DataReceived] and events[0].end_stream
    assert any(type(fr).__name__ == "PingFrame" for fr in parse(server.data_to_send()))  # answered here
    server.send_response(1, response(), True)
    server.data_to_send()
    assert server.holding and server.open_streams == 0

    held = server.release_held()
    fresh = moved(server)
    events = fresh.receive(held, 1.0)
    (request,) = events
    assert isinstance(request, RequestReceived) and request.stream_id == 3
    assert (b"x-token", b"abc") in request.head.headers
    # The HPACK tables agree: the same header again, now an index into the dynamic table.
    events = fresh.receive(f.headers(5, [*REQUEST, (b"x-token", b"abc")], end_stream=True), 1.0)
    assert (b"x-token", b"abc") in events[0].head.headers


def test_after_a_held_header_block_every_block_waits_and_so_do_frames_on_held_streams() -> None:
    server, f, _ = handshake()
    server.receive(f.headers(1, UPLOAD), 0.0)
    server.hold_streams()
    wire = (
        f.headers(3, UPLOAD)  # held: opens stream 3
        + f.data(3, b"three")  # held: on a held stream
        + f.headers(1, [(b"x-trailer", b"1")], end_stream=True)  # held: a block after a held one (HPACK order)
        + f.window_update(1, 10)  # processed: stream 1 is open
    )
    assert server.receive(wire, 0.0) == []
    held = server.release_held()
    events = server.receive(held, 0.0)
    assert [type(e) for e in events] == [RequestReceived, DataReceived, TrailersReceived]


def test_trailers_of_an_open_stream_pass_before_any_block_is_held() -> None:
    server, f, _ = handshake()
    server.receive(f.headers(1, UPLOAD), 0.0)
    server.hold_streams()
    events = server.receive(f.headers(1, [(b"x-trailer", b"1")], end_stream=True), 0.0)
    assert [type(e) for e in events] == [TrailersReceived]


def test_a_goaway_holds_everything_after_it() -> None:
    server, f, _ = handshake()
    server.receive(f.headers(1, UPLOAD), 0.0)
    server.hold_streams()
    assert server.receive(f.goaway(0) + f.data(1, b"x", end_stream=True), 0.0) == []
    assert len(server.release_held()) == len(f.goaway(0) + f.data(1, b"x", end_stream=True))


def test_holding_too_much_gives_up_and_processes_in_order(monkeypatch) -> None:
    monkeypatch.setattr(http2, "HOLD_LIMIT", 100)
    server, f, _ = handshake()
    server.receive(f.headers(1, UPLOAD), 0.0)
    server.hold_streams()
    assert server.receive(f.headers(3, REQUEST, end_stream=True), 0.0) == []
    events = server.receive(f.headers(5, [*REQUEST, (b"x-pad", b"p" * 100)], end_stream=True), 0.0)
    assert [e.stream_id for e in events] == [3, 5] and not server.holding


def test_a_window_update_for_a_held_stream_is_held() -> None:
    server, f, _ = handshake()
    server.receive(f.headers(1, UPLOAD), 0.0)
    server.send_response(1, response(), False)
    server.data_to_send()
    server.hold_streams()
    events = server.receive(f.headers(3, REQUEST) + f.window_update(3, 5) + f.window_update(1, 5), 0.0)
    assert all(not isinstance(e, RequestReceived) for e in events)
    assert all(e.stream_id != 3 for e in events if isinstance(e, WindowOpened))
    assert server.receive(server.release_held(), 0.0)[0].stream_id == 3


def test_hold_with_the_preface_still_arriving_keeps_it_whole() -> None:
    server = ServerConnection()
    server.initiate()
    server.data_to_send()
    f = Frames()
    wire = f.preface() + f.headers(1, REQUEST, end_stream=True)
    server.receive(wire[:10], 0.0)
    server.hold_streams()
    assert server.receive(wire[10:], 0.0) == []
    fresh = moved(server)
    events = fresh.receive(server.release_held(), 0.0)
    assert [type(e).__name__ for e in events] == ["SettingsChanged", "RequestReceived"]
