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
    h2      [client]             H2State below: designed now, used by the HTTP/2 issue
"""

from __future__ import annotations

import base64
import socket
from typing import Any, Protocol

import msgspec

SCHEMAS = {"http1": 1, "tcp": 1, "tunnel": 1}


class H2State(msgspec.Struct, frozen=True, kw_only=True):
    """An idle h2c connection's state (schema 1), explicit rather than pickled so two releases
    with different h2 versions can still hand over (upgrade.md §7.5). Safe point: no open
    stream and no partial frame beyond `leftover`. The receiver rebuilds its codec from this or
    REJECTs, and the old worker then drains the connection with a two-step GOAWAY."""

    schema: int = 1
    leftover: str = ""  # base64: bytes received, not yet parsed (a frame prefix at most)
    # HPACK: dynamic tables as (name, value) pairs, newest first, base64
    decoder_table: list[tuple[str, str]] = []
    decoder_max_size: int = 4096
    decoder_pending_size_update: int | None = None
    encoder_table: list[tuple[str, str]] = []
    encoder_max_size: int = 4096
    # SETTINGS as acknowledged by each side (identifier -> value)
    local_settings: dict[int, int] = {}
    remote_settings: dict[int, int] = {}
    unacked_local_settings: list[dict[int, int]] = []
    # flow control: connection-level windows
    inbound_window: int = 65535
    outbound_window: int = 65535
    highest_inbound_stream_id: int = 0
    next_outbound_stream_id: int = 2
    outstanding_pings: list[str] = []  # base64 opaque data of PINGs we sent, not yet acked
    goaway_sent: bool = False
    goaway_received: bool = False


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
