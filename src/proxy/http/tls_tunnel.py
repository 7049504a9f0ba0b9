"""The pump of a tunnel whose client side is TLS (a WebSocket or a CONNECT after its 2xx), and how
a WebSocket over TLS ends in a drain.

Plaintext tunnels go to the L4 relay (splice, and a hot upgrade hands them over). A TLS one
cannot be spliced (its bytes are opened and sealed) nor handed over (OpenSSL holds its state),
so its request's task copies both ways here. In a drain (SIGTERM, or the old generation of a hot
upgrade) it stays until the drain deadline; WS_CLOSE_LEAD before it, a WebSocket is ended as a
server going away ends one: each side gets a Close frame with 1001 (RFC 6455 §7.4.1), written
after the frame in flight (codec/websocket.py tracks where frames end), instead of a cut
connection at the deadline.
"""

from __future__ import annotations

from typing import Any, Callable

import trio

from proxy.codec.websocket import FrameBoundaries, close_frame
from proxy.network.sockio import ConnectionLost, SockIO

# Before the drain deadline: time for the frame in flight to finish and the Close to go out.
WS_CLOSE_LEAD = 1.0


class _Direction:
    """One direction of a WebSocket tunnel and its Close."""

    __slots__ = ("src", "dst", "frames", "close", "closing", "sending", "closed")

    def __init__(self, src: SockIO, dst: SockIO, close: bytes) -> None:
        self.src = src
        self.dst = dst
        self.frames = FrameBoundaries()
        self.close = close  # the Close frame `dst` gets
        self.closing = False  # the drain deadline is near: the Close goes after this frame
        self.sending = False  # a send to dst is in progress (a Close must not cut into it)
        self.closed = False  # the Close went to dst (or dst is gone): nothing more does


async def pump_tls_tunnel(down: SockIO, up: SockIO, manager: Any, touch: Callable[[], None], websocket: bool) -> None:
    """Copy both ways (each direction's end half-closes the other side) until both have ended.
    `touch` is called on every read (the idle deadline); `manager` is the listener's connection
    manager (its `drain_started` and `drain_deadline`). Closes `up` at the end; `down` is the
    caller's."""
    try:
        if not websocket:
            await _pump_bytes(down, up, touch)
            return
        directions = (_Direction(up, down, close_frame(masked=False)), _Direction(down, up, close_frame(masked=True)))
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as copies_scope:
                nursery.start_soon(_close_before_the_drain_deadline, manager, directions, copies_scope)
                async with trio.open_nursery() as copies:
                    for d in directions:
                        copies.start_soon(_copy_frames, d, touch)
            nursery.cancel_scope.cancel()
    finally:
        up.close()


async def _pump_bytes(down: SockIO, up: SockIO, touch: Callable[[], None]) -> None:
    async def copy(src: SockIO, dst: SockIO) -> None:
        while True:
            try:
                data = await src.recv()
            except ConnectionLost:
                data = b""
            touch()
            if not data:
                dst.shutdown_write()
                return
            try:
                await dst.send_all(data)
            except ConnectionLost:
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(copy, up, down)
        nursery.start_soon(copy, down, up)


async def _copy_frames(d: _Direction, touch: Callable[[], None]) -> None:
    while True:
        try:
            data = await d.src.recv()
        except ConnectionLost:
            data = b""
        touch()
        if d.closed:
            return  # (the Close went while this waited: what came after it is not relayed)
        if not data:
            d.dst.shutdown_write()
            return
        if d.closing:
            cut = d.frames.to_boundary(data)
            if cut is not None:
                data = data[:cut]  # the rest of the frame in flight; what follows it is dropped
        else:
            d.frames.feed(data)
        await _send(d, data)
        if d.closing and d.frames.at_boundary:
            await _send_close(d)
            return


async def _send(d: _Direction, data: bytes) -> None:
    if not data or d.closed:
        return
    d.sending = True
    try:
        await d.dst.send_all(data)
    except ConnectionLost:
        d.closed = True
    finally:
        d.sending = False


async def _send_close(d: _Direction) -> None:
    if d.closed:
        return
    d.closed = True
    try:
        await d.dst.send_all(d.close)
    except ConnectionLost:
        pass


async def _close_before_the_drain_deadline(manager: Any, directions: tuple[_Direction, ...], copies: trio.CancelScope) -> None:
    """At WS_CLOSE_LEAD before the drain deadline: each direction sends its Close after the
    frame in flight (at once where it is between frames), then the copies end."""
    await manager.drain_started.wait()
    deadline = manager.drain_deadline
    if deadline is None:
        await trio.sleep_forever()  # (a drain without a deadline: nothing ends it early)
    await trio.sleep_until(deadline - WS_CLOSE_LEAD)
    for d in directions:
        d.closing = True
        if d.frames.at_boundary and not d.sending:
            await _send_close(d)
    while not all(d.closed for d in directions):
        await trio.sleep(0.02)  # (a frame in flight finishing; the drain deadline bounds it)
    copies.cancel()
