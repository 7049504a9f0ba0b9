"""Moving live connections from the old worker (O) to the new one (N) over their socketpair.

O side, `Sender`: handlers call `hand_over(...)` at a connection's safe point (the Migration
interface, `migration.py`). Requests queue up and a sender task ships them in CONN batches of
up to MAX_FDS descriptors; the receiver task resolves each waiting handler with ADOPTED (True) or
REJECT (False). If N dies, every waiting and future hand-over answers False and O keeps serving
those connections itself: nothing is lost that N had not adopted.

N side, `adopt_all`: for each CONN it decides per connection (known kind and schema, a listener
of that name), answers ADOPTED/REJECT *before* any of those sockets is read (invariant 2 of
upgrade.md §7.6), then starts the handlers. It also merges O's counters (STATE at the start,
STATS_DELTA at the end), so counts stay monotonic across the generations.
"""

from __future__ import annotations

import collections
import socket
from collections.abc import Callable
from typing import Any

import trio

from proxy.log import get_logger
from proxy.upgrade.fdpass import Channel, PeerGone
from proxy.upgrade.migration import SCHEMAS, release
from proxy.upgrade.protocol import MAX_FDS, Msg, ProtocolError

log = get_logger("upgrade")

BATCH_BYTES = 8 << 20


class Sender:
    """O's end: implements `Migration`."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.active = True
        self.migrated: dict[str, int] = {}
        self.rejected = 0
        self._next_id = 0
        self._queue: collections.deque[tuple[dict[str, Any], list[int]]] = collections.deque()
        self._waiting: dict[int, list[Any]] = {}  # id -> [Event, adopted?, kind]
        self._wake = trio.Event()
        self.broken = trio.Event()

    async def hand_over(self, kind: str, listener: str, socks: list[socket.socket], state: dict[str, Any]) -> bool:
        if not self.active:
            return False
        cid = self._next_id = self._next_id + 1
        done = trio.Event()
        self._waiting[cid] = [done, False, kind]
        item = {"id": cid, "kind": kind, "listener": listener, "schema": SCHEMAS.get(kind, 0), "nfds": len(socks), "state": state}
        self._queue.append((item, [s.fileno() for s in socks]))
        self._wake.set()
        try:
            await done.wait()
        except BaseException:
            # Cancelled while waiting (O's drain deadline): if N adopts it, O's copy closes anyway.
            self._waiting.pop(cid, None)
            raise
        return bool(self._waiting.pop(cid)[1])

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_batches)
            await self._receive_answers()
            nursery.cancel_scope.cancel()

    async def _send_batches(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                while self._queue:
                    items: list[dict[str, Any]] = []
                    fds: list[int] = []
                    size = 0
                    # A batch: up to MAX_FDS - 1 fds (one slot stays free for a big body's
                    # memfd) and about BATCH_BYTES of carried state.
                    while self._queue and len(fds) + self._queue[0][0]["nfds"] < MAX_FDS and size < BATCH_BYTES:
                        item, item_fds = self._queue.popleft()
                        if item["id"] in self._waiting:  # not cancelled meanwhile
                            items.append(item)
                            fds.extend(item_fds)
                            size += sum(len(v) for v in item["state"].values() if isinstance(v, str))
                    if items:
                        await self.channel.send(Msg.CONN, {"items": items}, fds)
        except (PeerGone, ProtocolError, OSError) as exc:
            self.fail(f"send: {exc}")

    async def _receive_answers(self) -> None:
        try:
            while True:
                mtype, body, fds = await self.channel.recv()
                for fd in fds:  # none are expected here
                    socket.close(fd)
                if mtype in (Msg.ADOPTED, Msg.REJECT):
                    adopted = mtype == Msg.ADOPTED
                    for cid in body.get("ids", ()):
                        entry = self._waiting.get(cid)
                        if entry is not None:
                            entry[1] = adopted
                            entry[0].set()
                            if adopted:
                                self.migrated[entry[2]] = self.migrated.get(entry[2], 0) + 1
                            else:
                                self.rejected += 1
                    if not adopted:
                        log.warning("upgrade.conn_rejected", count=len(body.get("ids", ())), reason=body.get("reason"))
                elif mtype == Msg.ABORT:
                    raise ProtocolError(f"peer aborted: {body.get('reason')}")
        except (PeerGone, ProtocolError, OSError) as exc:
            self.fail(str(exc))

    def fail(self, reason: str) -> None:
        """N is gone or broke the protocol: every connection not yet adopted stays here."""
        if not self.active:
            return
        self.active = False
        log.warning("upgrade.handoff_broken", reason=reason, waiting=len(self._waiting))
        for entry in self._waiting.values():
            entry[0].set()
        self._queue.clear()
        self.broken.set()


async def adopt_all(
    channel: Channel,
    adopt: Callable[[str, str, list[socket.socket], dict[str, Any]], Callable[[], None] | None],
    absorb_stats: Callable[[dict[str, Any]], None],
    on_state: Callable[[], Any],
) -> dict[str, Any]:
    """N's end: adopt connections until O says DRAINED or goes away. `adopt(kind, listener,
    socks, state)` returns a starter to call once ADOPTED is sent, or None to reject."""
    counts: dict[str, Any] = {"migrated": {}, "rejected": 0, "drained": None}
    try:
        while True:
            mtype, body, fds = await channel.recv()
            if mtype == Msg.STATE:
                if body.get("kind") == "stats" and body.get("schema") == 1:
                    absorb_stats(body.get("blob") or {})
                await on_state()
            elif mtype == Msg.STATS_DELTA:
                absorb_stats(body.get("blob") or {})
            elif mtype == Msg.CONN:
                await _adopt_batch(channel, body, fds, adopt, counts)
            elif mtype == Msg.DRAINED:
                counts["drained"] = body
                break
            else:
                for fd in fds:
                    socket.close(fd)
                if mtype == Msg.ABORT:
                    log.warning("upgrade.peer_aborted", reason=body.get("reason"))
                    break
    except PeerGone:
        pass
    except (ProtocolError, OSError) as exc:
        log.error("upgrade.protocol_error", error=str(exc))
    return counts


async def _adopt_batch(
    channel: Channel, body: dict[str, Any], fds: list[int], adopt: Callable[..., Any], counts: dict[str, Any]
) -> None:
    adopted: list[int] = []
    rejected: list[int] = []
    starters: list[Callable[[], None]] = []
    at = 0
    for item in body.get("items", ()):
        n = int(item.get("nfds", 0))
        item_fds, at = fds[at : at + n], at + n
        socks = [socket.socket(fileno=fd) for fd in item_fds]
        kind = item.get("kind")
        starter = None
        if SCHEMAS.get(kind) == item.get("schema") and len(socks) == (1 if kind in ("http1", "http2") else 2):
            try:
                for s in socks:
                    s.setblocking(False)
                starter = adopt(kind, item.get("listener"), socks, item.get("state") or {})
            except Exception as exc:
                log.error("upgrade.adopt_failed", kind=kind, error=repr(exc), exc_info=exc)
                starter = None
        if starter is None:
            rejected.append(item["id"])
            for s in socks:
                s.close()  # only our copy: O still holds and serves the connection
        else:
            adopted.append(item["id"])
            starters.append(starter)
            counts["migrated"][kind] = counts["migrated"].get(kind, 0) + 1
    for fd in fds[at:]:
        socket.close(fd)
    try:
        if rejected:
            counts["rejected"] += len(rejected)
            await channel.send(Msg.REJECT, {"ids": rejected, "reason": "unknown listener, kind or schema"})
        if adopted:
            await channel.send(Msg.ADOPTED, {"ids": adopted})
    finally:
        # Even if O vanished before hearing ADOPTED, its copies died with it: ours are the
        # only ones left, so serve them.
        for start in starters:
            start()


__all__ = ["Sender", "adopt_all", "release"]
