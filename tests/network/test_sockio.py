"""SockIO over socketpairs: send coalescing (`send_soon`) keeps every byte and its order."""

from __future__ import annotations

import socket

import trio
import trio.testing

from proxy.network.sockio import COALESCE_MAX, SockIO, coalesce_sends


def _pair(sndbuf: int | None = None) -> tuple[SockIO, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    if sndbuf is not None:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
    return SockIO(a), b


def _pending(peer: socket.socket) -> bytes:
    try:
        return peer.recv(1 << 20)
    except BlockingIOError:
        return b""


async def _read_exactly(peer: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        await trio.lowlevel.wait_readable(peer)
        out += peer.recv(1 << 20)
    return bytes(out)


async def test_send_soon_goes_out_at_the_end_of_the_pass():
    coalesce_sends(lone_send_now=False)
    io, peer = _pair()
    await io.send_soon(b"one ")
    await io.send_soon(b"two")
    assert _pending(peer) == b""  # queued: this task has not let the scheduler wait yet
    assert io.bytes_sent == 7
    await trio.sleep(0)  # one pass of the scheduler: the coalescer sends before its I/O wait
    assert _pending(peer) == b"one two"
    assert io.later is None


async def test_without_the_coalescer_send_soon_sends_at_once():
    io, peer = _pair()  # coalesce_sends() not called in this run
    await io.send_soon(b"now")
    assert _pending(peer) == b"now"


async def test_send_all_after_send_soon_keeps_the_order():
    coalesce_sends(lone_send_now=False)
    io, peer = _pair()
    await io.send_soon(b"first,")
    await io.send_all(b"second")
    assert _pending(peer) == b"first,second"
    await trio.sleep(0)
    assert _pending(peer) == b""  # nothing sent twice
    assert io.bytes_sent == 12


async def test_large_buffers_are_not_queued():
    coalesce_sends(lone_send_now=False)
    io, peer = _pair()
    big = b"x" * (COALESCE_MAX + 1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(io.send_soon, big)
        assert await _read_exactly(peer, len(big)) == big
    assert io.later is None


async def test_a_buffer_the_kernel_cannot_take_whole_is_finished_in_order():
    """A peer that reads nothing: the coalescer's send is partial, a system task finishes it
    once the peer reads, and a send_all meanwhile waits its turn."""
    coalesce_sends(lone_send_now=False)
    io, peer = _pair(sndbuf=4096)
    first = bytes(range(256)) * 200  # 51,200 bytes: more than both buffers hold
    second = b"after"
    await io.send_soon(first)
    await trio.sleep(0)
    assert io.owner is not None, "expected a partial send"
    received = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(io.send_all, second)
        await trio.testing.wait_all_tasks_blocked()
        while len(received) < len(first) + len(second):
            await trio.lowlevel.wait_readable(peer)
            received += peer.recv(65536)
    assert bytes(received) == first + second
    assert io.owner is None and io.later is None
    assert io.bytes_sent == len(first) + len(second)


async def test_flush_sends_what_is_queued_and_close_drops_it():
    coalesce_sends(lone_send_now=False)
    io, peer = _pair()
    await io.send_soon(b"kept")
    await io.flush()
    assert _pending(peer) == b"kept"
    assert io.bytes_sent == 4
    await io.send_soon(b"dropped")
    io.close()
    await trio.sleep(0)  # the coalescer finds nothing left to send on a closed socket
    assert peer.recv(100) == b""  # EOF, and no bytes


async def test_a_reset_peer_does_not_break_the_coalescer():
    coalesce_sends(lone_send_now=False)
    io, peer = _pair()
    other, other_peer = _pair()
    peer.close()
    await io.send_soon(b"to nobody")
    await other.send_soon(b"to someone")
    await trio.sleep(0)
    assert _pending(other_peer) == b"to someone"


async def test_queued_flushed_and_queued_again_in_one_pass_stays_in_order():
    """send_soon, a flush that does not block, send_soon again, all in one pass, on a socket
    that takes only part of the second buffer: the connection is in the coalescer's queue
    once, one task finishes the rest, and a later send waits for it (review repro)."""
    coalesce_sends(lone_send_now=False)
    io, peer = _pair(sndbuf=4096)
    big = bytes(range(256)) * 200  # over both socket buffers
    await io.send_soon(b"A" * 10)
    await io.flush()  # (what send_all does first): goes out at once, no yield
    await io.send_soon(big)
    assert io._coalescer is not None and io._coalescer.queue.count(io) == 1
    await trio.sleep(0.05)  # the pass ends: a partial send, the rest owned by one task
    assert io.unsent and io.owner is not None
    received = bytearray()
    async with trio.open_nursery() as nursery:

        async def then_more() -> None:
            await io.send_soon(b"C" * 10)
            await io.flush()

        nursery.start_soon(then_more)
        while len(received) < 10 + len(big) + 10:
            await trio.lowlevel.wait_readable(peer)
            received.extend(peer.recv(65536))
    assert bytes(received) == b"A" * 10 + big + b"C" * 10
    assert not io.unsent


async def test_many_pipelined_messages_in_one_pass_are_bounded():
    """Queued bytes per connection are capped at COALESCE_MAX: beyond it send_soon sends,
    in order, instead of growing (and copying) one buffer for the whole pass."""
    coalesce_sends(lone_send_now=False)
    io, peer = _pair()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    messages = [b"%05d" % i + b"." * 995 for i in range(300)]  # 300 kB in 1 kB messages
    received = bytearray()

    async def reader() -> None:
        while len(received) < 300_000:
            await trio.lowlevel.wait_readable(peer)
            received.extend(peer.recv(1 << 20))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        for m in messages:
            await io.send_soon(m)
            assert io.later is None or len(io.later) <= COALESCE_MAX
        await io.flush()
    assert bytes(received) == b"".join(messages)


async def test_a_cancelled_flush_keeps_the_rest_queued_in_order():
    coalesce_sends(lone_send_now=False)
    io, peer = _pair(sndbuf=4096)
    first = bytes(range(256)) * 200
    await io.send_soon(first)
    with trio.move_on_after(0.1):
        await io.flush()  # the peer reads nothing: cancelled with bytes left
    assert io.unsent and io.owner is None
    received = bytearray()
    with trio.fail_after(5):  # the rest goes out with no further send from this task
        while len(received) < len(first):
            await trio.lowlevel.wait_readable(peer)
            received.extend(peer.recv(65536))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(io.send_all, b"then this")
        while len(received) < len(first) + 9:
            await trio.lowlevel.wait_readable(peer)
            received.extend(peer.recv(65536))
    assert bytes(received) == first + b"then this"


async def test_a_lone_send_goes_at_once_and_sends_after_a_busy_pass_wait_for_its_end():
    """The default policy: with nothing to batch with (at most one send in the last pass, and
    this is the first of this pass) send now, as a send left to the end of the pass would go
    out just before the loop sleeps; after a pass with several sends, queue."""
    coalesce_sends()
    io, peer = _pair()
    other, other_peer = _pair()
    await io.send_soon(b"alone")
    assert _pending(peer) == b"alone"
    await trio.sleep(0)  # a pass with one send
    await io.send_soon(b"first")  # still quiet: at once
    await other.send_soon(b"second")  # a second send this pass: queued
    assert (_pending(peer), _pending(other_peer)) == (b"first", b"")
    await trio.sleep(0)
    assert _pending(other_peer) == b"second"
    await io.send_soon(b"busy")  # the last pass had two sends: queued
    assert _pending(peer) == b""
    await trio.sleep(0)
    assert _pending(peer) == b"busy"


async def test_send_all_counts_what_went_out_even_when_cut_short():
    io, peer = _pair(sndbuf=4096)
    with trio.move_on_after(0.1):
        await io.send_all(b"x" * 100_000)  # the peer reads nothing: cancelled part-way
    sent = 0
    while chunk := _pending(peer):
        sent += len(chunk)
    assert 0 < io.bytes_sent == sent < 100_000


class _Codec:
    """A multiplexed codec's outbound buffer, as pull_soon sees it: data_to_send() takes all."""

    def __init__(self) -> None:
        self.buffer = b""
        self.pulls = 0

    def data_to_send(self) -> bytes:
        self.pulls += 1
        data, self.buffer = self.buffer, b""
        return data


async def test_pull_soon_takes_the_codecs_bytes_once_at_the_end_of_the_pass():
    coalesce_sends(lone_send_now=False)
    io, peer = _pair()
    codec = _Codec()
    for frame in (b"one ", b"two ", b"three"):  # three streams flush in one pass
        codec.buffer += frame
        assert io.pull_soon(codec.data_to_send)
    assert codec.pulls == 0 and io.unsent and _pending(peer) == b""
    await trio.sleep(0)
    assert _pending(peer) == b"one two three"
    assert codec.pulls == 1  # one data_to_send and one send for the pass
    assert io.bytes_sent == 13 and not io.unsent


async def test_sends_after_pull_soon_go_after_the_pulled_bytes():
    coalesce_sends(lone_send_now=False)
    io, peer = _pair()
    codec = _Codec()
    codec.buffer = b"frames,"
    assert io.pull_soon(codec.data_to_send)
    await io.send_soon(b"queued,")
    await io.send_all(b"direct")
    assert _pending(peer) == b"frames,queued,direct"
    await trio.sleep(0)
    assert _pending(peer) == b"" and codec.pulls == 1


async def test_pull_soon_declines_a_lone_send_and_close_drops_what_waits():
    coalesce_sends()  # lone sends go at once
    io, peer = _pair()
    codec = _Codec()
    await trio.sleep(0)  # a quiet pass before
    assert not io.pull_soon(codec.data_to_send)  # the caller sends now: nothing to batch with
    await io.send_soon(b"x")  # that send
    assert _pending(peer) == b"x"
    codec.buffer = b"late"
    assert io.pull_soon(codec.data_to_send)  # a second send this pass: it waits for the end
    io.close()
    await trio.sleep(0)
    assert codec.pulls == 0 and peer.recv(100) == b""
