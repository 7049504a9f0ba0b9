"""The control-channel frames (sans-IO) and fd passing over a real SEQPACKET socketpair."""

from __future__ import annotations

import os
import socket

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from proxy.upgrade import protocol
from proxy.upgrade.fdpass import Channel, PeerGone, socketpair
from proxy.upgrade.protocol import Msg, ProtocolError, decode, encode, negotiate

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(st.sampled_from(list(Msg)), st.dictionaries(st.text(max_size=10), json_values, max_size=6))
def test_encode_decode_round_trip(mtype, body):
    assert decode(encode(mtype, body)) == (mtype, body)


@pytest.mark.parametrize(
    "frame, message",
    [
        (b"PXU", "short frame"),
        (b"XXXX" + encode(Msg.HELLO)[4:], "bad magic"),
        (encode(Msg.HELLO, {"a": 1})[:-1], "body length"),
        (protocol.HEADER.pack(b"PXUP", 1, 999, 2) + b"{}", "unknown message type"),
        (protocol.HEADER.pack(b"PXUP", 1, Msg.READY, 2) + b"[]", "not an object"),
        (protocol.HEADER.pack(b"PXUP", 1, Msg.READY, 2) + b"{x", "not JSON"),
        (protocol.HEADER.pack(b"PXUP", 9, Msg.CONN, 2) + b"{}", "unsupported protocol version"),
    ],
)
def test_bad_frames_are_refused(frame, message):
    with pytest.raises(ProtocolError, match=message):
        decode(frame)


def test_frozen_listener_messages_decode_at_any_version():
    # HELLO..PAUSED must stay readable by every release, whatever version it speaks
    frame = protocol.HEADER.pack(b"PXUP", 7, Msg.HELLO, 2) + b"{}"
    assert decode(frame) == (Msg.HELLO, {})


def test_oversized_body_is_refused():
    with pytest.raises(ProtocolError, match="over"):
        encode(Msg.STATE, {"blob": "x" * (protocol.MAX_BODY + 1)})


def test_negotiate():
    assert negotiate(1, 1) == 1
    assert negotiate(1, 5) == protocol.PROTO_MAX
    assert negotiate(protocol.PROTO_MAX + 1, protocol.PROTO_MAX + 3) is None


def test_expect_reports_abort_and_surprises():
    assert protocol.expect(Msg.READY, {"a": 1}, Msg.READY) == {"a": 1}
    with pytest.raises(ProtocolError, match="peer aborted: nope"):
        protocol.expect(Msg.ABORT, {"reason": "nope"}, Msg.READY)
    with pytest.raises(ProtocolError, match="expected READY, got PAUSED"):
        protocol.expect(Msg.PAUSED, {}, Msg.READY)


async def test_fds_travel_with_their_frame_and_arrive_cloexec():
    a, b = socketpair()
    left, right = Channel(a), Channel(b)
    r, w = os.pipe()
    try:
        await left.send(Msg.LISTENERS, {"items": [1]}, [r, w])
        mtype, body, fds = await right.recv()
        assert mtype == Msg.LISTENERS and body == {"items": [1], "fds": 2} and len(fds) == 2
        assert all(not os.get_inheritable(fd) for fd in fds)
        os.write(fds[1], b"through the passed fd")
        assert os.read(r, 100) == b"through the passed fd"
        for fd in fds:
            os.close(fd)
    finally:
        os.close(r)
        os.close(w)
        left.close()
        right.close()


async def test_peer_exit_is_end_of_file():
    a, b = socketpair()
    left, right = Channel(a), Channel(b)
    left.close()
    with pytest.raises(PeerGone):
        await right.recv()
    with pytest.raises(PeerGone):
        await right.send(Msg.READY)
    right.close()


async def test_fd_count_mismatch_is_a_protocol_error_and_closes_what_arrived():
    a, b = socketpair()
    right = Channel(b)
    r, w = os.pipe()
    # a frame that announces no fds but carries one
    frame = encode(Msg.CONN, {"items": [], "fds": 0})
    import array

    a.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r]))])
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ProtocolError, match="announces 0 fds, 1 arrived"):
        await right.recv()
    assert len(os.listdir("/proc/self/fd")) == before  # the received copy was closed
    os.close(r)
    os.close(w)
    a.close()
    right.close()


async def test_too_many_fds_refused_before_sending():
    a, b = socketpair()
    left = Channel(a)
    with pytest.raises(ProtocolError):
        await left.send(Msg.CONN, {}, list(range(protocol.MAX_FDS + 1)))
    left.close()
    b.close()


async def test_truncated_control_message_is_detected():
    """More fds than the receiver's control buffer holds: MSG_CTRUNC, never silently lost."""
    a, b = socketpair()
    pipes = [os.pipe() for _ in range(protocol.MAX_FDS // 2 + 10)]
    fds = [fd for pair in pipes for fd in pair][: protocol.MAX_FDS + 3]
    import array

    frame = encode(Msg.CONN, {"fds": len(fds)})
    a.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    right = Channel(b)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ProtocolError, match="truncated"):
        await right.recv()
    assert len(os.listdir("/proc/self/fd")) == before
    for r, w in pipes:
        os.close(r)
        os.close(w)
    a.close()
    right.close()
    await trio.lowlevel.checkpoint()


async def test_a_big_body_travels_in_a_memfd_with_the_frames_fds():
    """A TCP relay's in-flight megabytes must not outgrow a SEQPACKET message."""
    a, b = socketpair()
    left, right = Channel(a), Channel(b)
    r, w = os.pipe()
    blob = "x" * (3 << 20)
    before = len(os.listdir("/proc/self/fd"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(left.send, Msg.CONN, {"items": [{"state": blob}]}, [w])
        mtype, body, fds = await right.recv()
    assert mtype == Msg.CONN and body["items"][0]["state"] == blob and len(fds) == 1
    assert len(os.listdir("/proc/self/fd")) == before + 1  # the passed fd; the memfd is closed
    os.write(fds[0], b"ok")
    assert os.read(r, 2) == b"ok"
    for fd in (fds[0], r, w):
        os.close(fd)
    left.close()
    right.close()


def test_http2_state_travels_as_json():
    """The "http2" handover state (schema 1): the codec's export_state() and the held bytes,
    JSON in and a working codec out (tests/codec/test_http2_state.py tests the codec itself)."""
    import json

    from proxy.codec.http2 import ServerConnection
    from proxy.upgrade.migration import SCHEMAS, b64d, b64e

    assert SCHEMAS["http2"] == 1
    codec = ServerConnection()
    codec.initiate()
    codec.data_to_send()
    state = json.loads(json.dumps({"codec": codec.export_state(), "leftover": b64e(b"\0\0")}))
    fresh = ServerConnection.from_state(state["codec"])
    assert b64d(state["leftover"]) == b"\0\0" and fresh.data_to_send() == b""
