"""Hot upgrade of an idle HTTP/2 connection: export_state() in one codec, a JSON round trip,
from_state() in a fresh one, and the peer (h2's H2Connection) never notices."""

from __future__ import annotations

import json

import h2.config
import h2.connection
import h2.events
import hpack
import pytest
from hyperframe.frame import HeadersFrame, SettingsFrame, WindowUpdateFrame

from proxy.codec.http1 import RequestHead, ResponseHead
from proxy.codec.http2 import ClientConnection, DataReceived, Http2Error, Http2Settings, RequestReceived, ResponseReceived, ServerConnection
from tests.codec.h2frames import parse

REQUEST = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b":authority", b"example.com")]


def moved(state: dict) -> dict:
    return json.loads(json.dumps(state))


def test_server_moves_with_its_hpack_tables_windows_and_stream_ids() -> None:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    server = ServerConnection(Http2Settings(max_concurrent_streams=50))
    server.initiate()
    server.receive(client.data_to_send(), 0.0)
    client.receive_data(server.data_to_send())
    server.receive(client.data_to_send(), 0.0)
    client.receive_data(server.data_to_send())  # the SETTINGS ack

    # A request with a header the client's encoder indexes, and a body that uses up window.
    client.send_headers(1, [*REQUEST, (b"x-tenant", b"acme-corporation")])
    client.send_data(1, b"x" * 1000, end_stream=True)
    events = server.receive(client.data_to_send(), 1.0)
    assert isinstance(events[0], RequestReceived) and (b"x-tenant", b"acme-corporation") in events[0].head.headers
    assert isinstance(events[1], DataReceived)
    server.acknowledge(1, 500)  # half consumed before the move: the rest is the window's debt
    server.send_response(1, ResponseHead(200, b"", b"1.1", [(b"x-served-by", b"old-process")], True, False, None), False)
    server.send_data(1, b"y" * 300, True)
    replies = client.receive_data(server.data_to_send())
    assert any(isinstance(e, h2.events.StreamEnded) for e in replies)
    inbound_window = server.receive_window(0)
    outbound_window = server.send_window(0)

    state = moved(server.export_state())
    fresh = ServerConnection.from_state(state, Http2Settings(max_concurrent_streams=50))
    assert fresh.data_to_send() == b""  # no SETTINGS, no WINDOW_UPDATE, no GOAWAY again
    assert fresh.highest_stream_id == 1 and fresh.open_streams == 0
    assert fresh.receive_window(0) == inbound_window and fresh.send_window(0) == outbound_window

    # The client reuses the indexed header: an indexed representation on the wire.
    client.send_headers(3, [*REQUEST, (b"x-tenant", b"acme-corporation")], end_stream=True)
    wire = client.data_to_send()
    (frame,) = parse(wire)
    assert isinstance(frame, HeadersFrame) and len(frame.data) < 10 and b"acme" not in frame.data
    (event,) = fresh.receive(wire, 2.0)
    assert event.stream_id == 3 and (b"x-tenant", b"acme-corporation") in event.head.headers
    # Our encoder's table moved too: the client decodes the header it indexed before.
    fresh.send_response(3, ResponseHead(200, b"", b"1.1", [(b"x-served-by", b"old-process")], True, False, None), True)
    out = fresh.data_to_send()
    (frame,) = parse(out)
    assert b"old-process" not in frame.data
    (response, _) = client.receive_data(out)
    assert (b"x-served-by", b"old-process") in response.headers
    # Windows carried on: the acknowledgment after the move is the one the client waits for.
    fresh.acknowledge(1, 500)
    updates = [f for f in parse(fresh.data_to_send()) if isinstance(f, WindowUpdateFrame)]
    assert all(f.stream_id == 0 for f in updates)
    assert fresh.receive_window(0) == inbound_window + sum(f.window_increment for f in updates)
    # And the stream ids go on: an id at or below the last one is a protocol error still.
    with pytest.raises(Http2Error) as info:
        fresh.receive(_raw_headers(client, 3), 3.0)
    assert info.value.code == 0x5  # STREAM_CLOSED: stream 3 ended


def _raw_headers(client: h2.connection.H2Connection, sid: int) -> bytes:
    f = HeadersFrame(sid)
    f.data = client.encoder.encode(REQUEST)
    f.flags.add("END_HEADERS")
    return f.serialize()


def test_unacknowledged_settings_move_too() -> None:
    server = ServerConnection()
    server.initiate()
    out = parse(server.data_to_send())
    assert isinstance(out[0], SettingsFrame)
    server._h2.update_settings({4: 70000})  # sent, not acknowledged yet
    server.data_to_send()
    state = moved(server.export_state())
    assert state["local_settings"]["4"] == [1 << 20, 70000]
    fresh = ServerConnection.from_state(state)
    assert fresh._h2.local_settings._settings[4] == type(fresh._h2.local_settings._settings[4])([1 << 20, 70000])
    assert fresh._h2.incoming_buffer._preamble_len == 24  # the client preface is still to come


def test_client_moves() -> None:
    peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    peer.initiate_connection()
    client = ClientConnection()
    client.initiate()
    peer.receive_data(client.data_to_send())
    client.receive(peer.data_to_send(), 0.0)
    peer.receive_data(client.data_to_send())
    head = RequestHead(b"GET", b"/", b"1.1", [(b"Host", b"up.example"), (b"x-trace", b"t-123456789")], True, False, None, False, None)
    sid = client.send_request(head, b"http", True)
    peer.receive_data(client.data_to_send())
    peer.send_headers(sid, [(b":status", b"200"), (b"x-upstream", b"u1")], end_stream=True)
    client.receive(peer.data_to_send(), 1.0)

    fresh = ClientConnection.from_state(moved(client.export_state()))
    assert fresh.data_to_send() == b""
    sid2 = fresh.send_request(head, b"http", True)
    assert sid2 == sid + 2
    wire = fresh.data_to_send()
    (frame,) = parse(wire)
    assert b"t-123456789" not in frame.data  # indexed by the old encoder
    (request,) = [e for e in peer.receive_data(wire) if isinstance(e, h2.events.RequestReceived)]
    assert (b"x-trace", b"t-123456789") in request.headers
    peer.send_headers(sid2, [(b":status", b"200"), (b"x-upstream", b"u1")], end_stream=True)
    (response,) = fresh.receive(peer.data_to_send(), 2.0)
    assert isinstance(response, ResponseReceived) and (b"x-upstream", b"u1") in response.head.headers


def test_export_refuses_while_streams_are_open() -> None:
    client = ClientConnection()
    client.initiate()
    client.send_request(RequestHead(b"GET", b"/", b"1.1", [(b"host", b"a")], True, False, None, False, None), b"http", False)
    with pytest.raises(ValueError):
        client.export_state()


def test_wrong_side_is_refused() -> None:
    client = ClientConnection()
    client.initiate()
    with pytest.raises(ValueError):
        ServerConnection.from_state(moved(client.export_state()))


def test_decoder_table_is_json_safe_for_any_byte() -> None:
    server = ServerConnection()
    server._h2.decoder.header_table.add(b"x-bin", bytes(range(1, 256)))
    fresh = ServerConnection.from_state(moved(server.export_state()))
    assert list(fresh._h2.decoder.header_table.dynamic_entries) == [(b"x-bin", bytes(range(1, 256)))]
    assert hpack.Decoder  # the package the tables belong to
