"""The seam between data-plane handlers and the handover: what a handler calls to move one live
connection to the new generation, and how the new generation gives it back to a handler.

Old worker (O), at a connection's safe point (HTTP/1.1 between requests, a relay between reads):

    if migration.active:
        if await migration.hand_over(kind, listener_name, [sock, ...], state):
            close_without_shutdown(sock)     # the new worker owns the connection now
            ...bookkeeping: active -= 1, downstream_cx_migrated_out += 1
        else:
            ...keep serving here, exactly as before (the new worker refused or died)

`hand_over` returns only after the new worker answered ADOPTED (True) or REJECT / died (False).
After True, O must never read or write those sockets again (invariant 2 of upgrade.md §7.6).

New worker (N): the adopter calls the handler's `adopt(...)` for each connection *after*
ADOPTED was sent; the handler then serves it as if it had been accepted, starting with the
carried bytes. `state` is a plain dict of JSON values; bytes go in as base64 (`b64e`/`b64d`).
Kinds (each with its own schema version, so a later release can refuse what it cannot read):

    http1   [client]             {served, leftover}                 schema 1
    tcp     [client, upstream]   {host, to_up, to_down, down_eof, up_eof}   schema 1
    tunnel  [client, upstream]   same as tcp (an HTTP/1.1 upgrade after 101) schema 1
    http2   [client]             {codec, leftover}                  schema 1
            codec: proxy.codec.http2's export_state() (its own `format` inside: settings,
            HPACK tables, windows, stream ids, budgets); leftover: frames held back, in order
            (proxy.http.http2_migration)
Any kind's state may also name the listener's filter chain (`chain`, network/chain_dispatch):
the adopter picks that chain's handler, or refuses the connection when the chain is gone.
"""

from __future__ import annotations

import base64
import socket
from typing import Any, Protocol

SCHEMAS = {"http1": 1, "http2": 1, "tcp": 1, "tunnel": 1}


class Migration(Protocol):
    """What O's handlers see. `active` is True from COMMIT until the handover ends or breaks."""

    active: bool

    async def hand_over(self, kind: str, listener: str, socks: list[socket.socket], state: dict[str, Any]) -> bool: ...


class NoMigration:
    """The default before any upgrade: handlers check `active` and go on serving."""

    active = False

    async def hand_over(self, kind: str, listener: str, socks: list[socket.socket], state: dict[str, Any]) -> bool:
        return False


NO_MIGRATION = NoMigration()


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64d(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def release(sock: socket.socket) -> None:
    """Drop this process's copy of a handed-over socket: no shutdown(), no RST linger — the
    connection lives on in the new worker's copy of the fd."""
    import trio

    if sock.fileno() == -1:
        return
    try:
        trio.lowlevel.notify_closing(sock)
    except RuntimeError:
        pass
    sock.close()
