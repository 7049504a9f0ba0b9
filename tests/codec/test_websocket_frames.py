"""Frame boundaries of relayed WebSocket bytes (codec/websocket.py) on frames made by wsproto,
a real WebSocket implementation, cut at every offset."""

from __future__ import annotations

import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage
from wsproto.frame_protocol import CloseReason

from proxy.codec.websocket import FrameBoundaries, close_frame


def frames(client: bool) -> list[bytes]:
    """Frames of every header size, masked (from a client) or not, and a fragmented message."""
    conn = Connection(ConnectionType.CLIENT if client else ConnectionType.SERVER)
    out = [
        conn.send(TextMessage("hi")),
        conn.send(BytesMessage(b"x" * 300)),  # 16-bit length
        conn.send(BytesMessage(b"y" * 70_000)),  # 64-bit length
        conn.send(Ping(b"p")),
        conn.send(TextMessage("part one ", message_finished=False)),
        conn.send(TextMessage("part two")),
    ]
    return out


@pytest.mark.parametrize("client", [True, False])
def test_every_frame_end_is_found_wherever_the_bytes_are_cut(client: bool) -> None:
    parts = frames(client)
    stream = b"".join(parts)
    ends = {sum(len(p) for p in parts[: i + 1]) for i in range(len(parts))}
    for cut in list(range(0, 40)) + [300, 301, 310, 70_300, len(stream) - 1]:
        tracker = FrameBoundaries()
        tracker.feed(stream[:cut])
        assert tracker.at_boundary == (cut == 0 or cut in ends), cut
        following = cut if tracker.at_boundary else min(e for e in ends if e > cut)
        n = tracker.to_boundary(stream[cut:])
        assert n == following - cut, cut
        assert tracker.at_boundary


def test_a_frame_that_does_not_end_in_the_data_takes_all_of_it() -> None:
    frame = frames(False)[2]
    tracker = FrameBoundaries()
    assert tracker.to_boundary(frame[:1000]) == 0  # at a boundary: nothing to finish
    tracker.feed(frame[:1000])
    assert tracker.to_boundary(frame[1000:5000]) is None
    assert tracker.to_boundary(frame[5000:] + b"\x81\x01a") == len(frame) - 5000


@pytest.mark.parametrize("masked", [True, False])
def test_the_close_frame_is_a_going_away_close_to_a_real_peer(masked: bool) -> None:
    peer = Connection(ConnectionType.SERVER if masked else ConnectionType.CLIENT)
    peer.receive_data(close_frame(masked=masked))
    event = next(peer.events())
    assert isinstance(event, CloseConnection) and event.code == CloseReason.GOING_AWAY and event.reason == "going away"
