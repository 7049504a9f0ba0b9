"""Byte tunnels whose upstream end is one stream of a multiplexed upstream connection.

An HTTP/1 upstream's tunnel (after a 101 or a CONNECT 2xx) is its socket: the L4 relay takes it
(HTTP/1 clients) or the client's stream copies to it (HTTP/2 clients). An HTTP/2 upstream's
tunnel is a stream of a connection others share: a CONNECT (RFC 9113 §8.5) or an extended
CONNECT carrying a WebSocket (RFC 8441). Its bytes travel as DATA frames under flow control,
so they are pumped here, between the stream and whatever the client side is (a socket, or a
stream of the client's own HTTP/2 connection), the same way for both.

Flow control holds end to end: the upstream stream is read (and its window opened) only as
fast as the client side takes the bytes, and the client's bytes go upstream no faster than the
upstream stream's window allows. The tunnel ends when both directions have ended; a reset or
a lost connection on either side ends it at once (raised to the caller).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from proxy.codec.http1 import Body

_WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def websocket_accept(key: bytes) -> bytes:
    """The Sec-WebSocket-Accept an HTTP/1.1 client expects for its Sec-WebSocket-Key (RFC 6455
    §4.2.2). An HTTP/2 server's extended CONNECT answer has none: the proxy says it."""
    return base64.b64encode(hashlib.sha1(key.strip() + _WEBSOCKET_GUID).digest())  # noqa: S324 - the protocol's hash


async def run_both(first: Callable[[], Awaitable[None]], second: Callable[[], Awaitable[None]]) -> None:
    """Run two coroutines to their ends, concurrently. If one fails, the other is cancelled and
    the failure is raised as itself, not in an ExceptionGroup, so the callers' `except
    StreamReset` and `except ConnectionLost` see it."""
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)
            await second()
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        for leaf in leaves:
            if not isinstance(leaf, trio.Cancelled):
                raise leaf from None
        raise leaves[0] from None  # only cancellations: one of them stands for all


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


async def pump_upstream_stream(
    upstream: Any,
    open_down: Callable[[], Awaitable[None]],
    receive_down: Callable[[], Awaitable[tuple[bytes, bool]]],
    send_down: Callable[[list[bytes], bool], Awaitable[None]],
    touch: Callable[[], None],
) -> None:
    """Run the tunnel between the client side and `upstream` (an HTTP/2 upstream stream:
    write_data, write_end, flush, buffered, receive, release) until both directions end, then
    release the stream (reset, if the tunnel did not end cleanly).

    `open_down()`: tell the client the tunnel is open (the answer's head, and the client's own
    bytes that came with its request, if any).
    `receive_down()`: the client's next bytes, and whether it is done sending (the bytes and
    the end go up in one DATA frame when they came together: some servers take an END_STREAM
    of its own, after a WebSocket close, for a stream they already forgot).
    `send_down(chunks, end)`: bytes to the client; `end`: the upstream is done sending.
    `touch()`: bytes moved (the caller's idle timer starts again)."""

    async def client_to_upstream() -> None:
        while True:
            data, ended = await receive_down()
            touch()
            if data:
                upstream.write_data(data)
            if ended:
                upstream.write_end()
            await upstream.flush()  # waits for the upstream stream's window
            if ended:
                return

    async def upstream_to_client() -> None:
        pending = upstream.buffered()  # what came with the answer's head
        while True:
            chunks = [event.data for event in pending if type(event) is Body and event.data]
            ended = any(type(event) is not Body for event in pending)  # EndOfMessage (trailers, if any, mean nothing here)
            if chunks or ended:
                await send_down(chunks, ended)
            if ended:
                return
            pending = await upstream.receive()  # (consumed: its window opens)
            touch()

    complete = False
    try:
        touch()
        await open_down()
        await run_both(client_to_upstream, upstream_to_client)
        complete = True
    finally:
        upstream.release(complete)
