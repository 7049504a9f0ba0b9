"""Hot upgrade of HTTP/2 (h2c) downstream connections: moved whole, codec state and all.

Kind "http2" (upgrade/migration.py): the socket, the codec's `export_state()` (settings both
ways, both HPACK tables, windows, stream-id watermarks, flood budgets) and `leftover`, bytes
read but not processed. The new generation rebuilds the codec with `from_state` and serves on
without a preface or SETTINGS of its own; the client sees nothing, not even a GOAWAY.

Safe point: no stream open, nothing of ours unsent, the reader waiting in recv. An idle
connection moves at once. A busy one holds new streams back (the codec's `hold_streams`: their
frames stay unprocessed, in order, and travel as `leftover`) while the streams in flight finish
here, so even a client that always has requests in flight (h2load -m10) reaches an idle point;
the watchdog looks every tick. One that is still busy after IDLE_WAIT, that holds too much, or
that the new generation refuses is drained as before: its held frames are processed here and
the two-step GOAWAY sends the client to a new connection. If the new generation died, this
worker is current again and serves on as if nothing happened.

The per-request cost: none; the reader sets one flag around each recv.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from proxy.upgrade import migration as migration_mod

if TYPE_CHECKING:
    from proxy.http.connection_manager import HttpConnectionManager
    from proxy.http.multiplex import MuxConnection, MuxServer

# How long a busy connection holds new streams back waiting for its streams in flight to end:
# they wait that much at worst; past it the connection is drained (GOAWAY) instead.
IDLE_WAIT = 2.0
# A connection whose bytes the client does not read in this time stays (as HTTP/1's does).
HANDOVER_FLUSH_TIMEOUT = 1.0

# MuxConnection.handover
STAY = 0  # served here
WANTED = 1  # holding new streams, to be handed over at its next idle point
WOKEN = 2  # the reader was cancelled at the idle point: hand it over
RELEASE = 3  # the reader's recv was cancelled to give up: process the held frames here, drain


def migratable(server: MuxServer) -> bool:
    """The listener's codec can export and restore its state (HTTP/2; not the RPC codecs)."""
    return hasattr(server.codec_factory, "from_state")


def start(server: MuxServer) -> None:
    """A migration began: every connection is to move at its idle point (idle ones now)."""
    if not migratable(server):
        server.drain()  # other multiplexed codecs drain: their clients reconnect
        return
    for conn in server.connections:
        want(conn)
    check(server, trio.current_time())


def want(conn: MuxConnection) -> None:
    if conn.io.tls is not None:
        return  # TLS: OpenSSL holds its state, so it stays and drains (two-step GOAWAY)
    if conn.handover == STAY and not conn.goaway_sent and migratable(conn.server):
        conn.handover = WANTED
        conn.wanted_until = trio.current_time() + IDLE_WAIT
        conn.codec.hold_streams()  # type: ignore[attr-defined]


def check(server: MuxServer, now: float) -> None:
    """The watchdog's look (every tick once a migration began): wake the readers of
    connections at their idle point, and of those to give up on."""
    manager = server.manager
    moving = manager.migration.active and not manager.draining
    for conn in server.connections:
        if conn.handover != WANTED or not conn.reading:  # (only a reader in recv may be woken)
            continue
        if moving and not conn.goaway_sent and not conn.streams and not conn.writer.writing and not conn.codec.outbound_backlog():
            conn.handover = WOKEN
            conn.scope.cancel()  # the connection leaves its run: no stream is left to cancel
        elif (not moving or conn.goaway_sent or now >= conn.wanted_until or not conn.codec.holding) and conn.recv_scope is not None:  # type: ignore[attr-defined]
            conn.handover = RELEASE
            conn.recv_scope.cancel()  # only the recv: the streams in flight go on


async def recv(conn: MuxConnection) -> bytes:
    """The reader's recv while the connection is WANTED: the watchdog may cancel it to give
    up holding, and then the held frames are what the reader processes next."""
    with trio.CancelScope() as conn.recv_scope:
        return await conn.io.recv()
    conn.recv_scope = None
    held = conn.codec.release_held()  # type: ignore[attr-defined]
    conn.handover = STAY
    _drain_if_leaving(conn)
    return held or await conn.io.recv()


def _drain_if_leaving(conn: MuxConnection) -> None:
    manager = conn.server.manager
    if (manager.migration.active or manager.draining) and not conn.goaway_sent:
        # Refused, or busy for too long: drain, so this worker can exit. (If the new
        # generation died instead, this one is current again and nothing changes.)
        manager.nursery.start_soon(conn.drain)


async def resume(conn: MuxConnection) -> bytes | None:
    """The reader left its run at the idle point (WOKEN): None if the connection was handed
    over, else the bytes to process first as it serves on here."""
    conn.reading = False
    held = conn.codec.release_held()  # type: ignore[attr-defined]
    until = conn.wanted_until
    conn.handover = STAY
    conn.scope = trio.CancelScope()
    moved = await _hand_over(conn, held)
    if moved:
        return None
    if moved is None:  # not idle after all: hold again, try at the next tick
        want(conn)
        conn.wanted_until = until
        return held
    _drain_if_leaving(conn)
    return held


async def _hand_over(conn: MuxConnection, held: bytes) -> bool | None:
    """True: moved; False: refused, or it cannot move; None: not at its idle point after all."""
    manager = conn.server.manager
    migration = manager.migration
    if not migration.active or manager.draining or conn.goaway_sent:
        return False
    io = conn.io
    if io.unsent or conn.codec.outbound_backlog():  # the socket leaves with nothing of ours unsent
        with trio.move_on_after(HANDOVER_FLUSH_TIMEOUT):
            await conn.flush()
            await io.flush()
        if io.unsent or conn.codec.outbound_backlog():
            return False
    try:
        codec_state = conn.codec.export_state()  # type: ignore[attr-defined]
    except ValueError:  # a header block half received
        return None
    state = {"codec": codec_state, "leftover": migration_mod.b64e(held)}
    return await migration.hand_over("http2", conn.server.name, [io.sock], state)


def adopter(manager: HttpConnectionManager, sock: socket.socket, state: dict[str, Any]) -> Callable[[], Awaitable[None]] | None:
    """The new generation's side: rebuild the codec now, before ADOPTED is sent (a state this
    release cannot read is refused, and the old worker serves on); None if this listener
    serves no HTTP/2 any more. The returned function serves the connection."""
    server = manager.mux
    if server is None or not migratable(server):
        return None
    codec = server.codec_factory.from_state(state["codec"])  # type: ignore[attr-defined]
    leftover = migration_mod.b64d(state["leftover"])

    async def serve() -> None:
        try:
            peer: Any = sock.getpeername()
        except OSError:
            peer = ""  # the client is already gone; the first read will tell
        manager.stats.downstream_cx_migrated_in += 1
        await server.connection(sock, peer, leftover, codec)

    return serve
