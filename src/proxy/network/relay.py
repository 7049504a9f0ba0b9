"""Bidirectional byte relay between two connected sockets: splice(2) or userspace copy.

One `Relay` per proxied connection. It runs two pumps (downstream→upstream and back); the
caller's connection task runs the first, and the second is started in the connection nursery,
so no per-connection nursery is needed (a nursery per connection costs ~30 % conn/s and 2× idle
memory on trio, measured: 11.8 KB against 5.3 KB per idle connection). The last pump to finish closes both
sockets and reports, so the relay owns its sockets from `start()` on.

Semantics, as Envoy's tcp_proxy:
- half-close: EOF from one side becomes shutdown(SHUT_WR) on the other; the other direction keeps
  flowing until it ends too;
- reset: an error on either socket (ECONNRESET, EPIPE, ...) aborts both sides with RST;
- idle timeout: no byte in either direction for `idle_timeout` closes both sides (checked by
  one sweeper task per worker, `_Sweeper`, instead of a deadline per wait).

An idle relay is parked: after PARK_AFTER with both pumps waiting for input, the pumps end and
its sockets wait in the worker's epoll set (proxy.network.parking) until input comes; then the
pumps start again. An idle pair holds no task, no pipe and no trio registration.

The splice pump moves socket → pipe → socket in the kernel (no copy into Python); it blocks on
trio only when a splice would block, and checkpoints every CHECKPOINT_EVERY moves so a fast
stream cannot starve the rest of the worker. Its pipe is lent by the worker's pool only while
bytes move (proxy.network.pipes), so an idle pair costs its two sockets' fds and nothing more.

Hot upgrade (`stop`): every await in a pump is a safe point. `stop(handover)` cancels both
pumps' scopes; each keeps what it had read and not yet written (the splice pipe's content, read
out of the pipe, or the copy pump's unsent remainder), then the last one awaits
`handover(relay)`. True: the sockets belong to the next generation, this process drops its
copies (no shutdown, no RST) and reports outcome MIGRATED. False: both pumps resume here, the
kept bytes written first. A new generation starts a Relay with those bytes (`pending`) and the
directions already finished (`finished`): `migration_state()` and `carried(state)` translate.
The hot loops pay nothing for this: the stop rides on the cancel scopes they already have.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from proxy.network import pipes as pipes_mod
from proxy.network.parking import PARKING
from proxy.upgrade import migration as migration_mod

COPY_CHUNK = 1 << 18  # big reads: measured 7.5 -> 14 Gbit/s over 64 KiB (fewer Python-level syscalls)
CHECKPOINT_EVERY = 16

HAVE_SPLICE = hasattr(os, "splice")
if HAVE_SPLICE:
    _SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_LINGER_RST = struct.pack("ii", 1, 0)

_wait_readable = trio.lowlevel.wait_readable
_wait_writable = trio.lowlevel.wait_writable
_checkpoint = trio.lowlevel.checkpoint
_current_time = trio.current_time


# TCP_NOTSENT_LOWAT: report a socket writable only when less than this is queued unsent. The
# relay then writes a big batch when the peer has drained its queue, so the kernel transmits it
# in the proxy's own context instead of later, from ACK processing on the *receiver's* CPU.
# Measured with iperf3 through the splice relay (scripts/bench, loopback, the iperf3 ends
# sharing one core): 0.87-0.93x HAProxy without, 1.05-1.12x with 16 KiB (32 KiB: ~1.0x,
# 64 KiB: ~0.95x). It caps nothing (the send buffer still autotunes), but the extra wakeups
# raise the relay's CPU from ~55 % to ~90 % of a core at 13 Gbit/s. A 256 KiB pipe without it
# gave 1.00-1.02x at ~59 % CPU: the knob to revisit if CPU per byte matters more than peak rate.
NOTSENT_LOWAT = 16384
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)


# The copy relay is CPU-bound instead, and the extra wakeups cost it ~15 %: it keeps the default.


def tune_tcp_socket(sock: socket.socket, splice: bool) -> None:
    """Socket options for a relayed TCP socket: no Nagle delay; for splice, a small unsent queue."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if splice:
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)


class _Reset(Exception):
    """A socket error in one direction: the whole connection is aborted."""


# How a relay ended, for stats and logs.
CLOSED = "closed"  # both directions reached EOF
RESET = "reset"
IDLE_TIMEOUT = "idle_timeout"
CANCELLED = "cancelled"  # drain deadline or fast stop
ERROR = "error"
MIGRATED = "migrated"  # handed over, live, to the next worker generation

Handover = Callable[["Relay"], Awaitable[bool]]

# A relay idle this long with both pumps waiting for input is parked (no tasks; see
# proxy.network.parking): scripts/bench's memory scenario measured 13.2 kB of RSS per idle TCP
# pair with tasks, 4.1 kB parked. Parking and waking cost ~3 epoll_ctl and two task starts
# (tens of µs), nothing beside a quarter second of quiet; parking sooner matters because
# memory freed by a pair that parks late is fragmented and stays resident. A sweep costs
# ~0.3 µs per relay, four times a second.
PARK_AFTER = 0.25
SWEEP_EVERY = 0.25


class _Sweeper:
    """One task per worker, while relays live, that looks at each every SWEEP_EVERY: the idle
    timeout (a deadline per wait would cost a cancel scope per pump and a deadline change per
    move) and parking. Timeouts fire within SWEEP_EVERY of their time (or a quarter of the
    shortest idle timeout, for short ones)."""

    __slots__ = ("relays", "scope", "interval")

    def __init__(self) -> None:
        self.relays: set[Relay] = set()
        self.scope: trio.CancelScope | None = None  # the task's, while it runs
        self.interval = SWEEP_EVERY

    def add(self, relay: Relay, nursery: trio.Nursery) -> None:
        self.relays.add(relay)
        if relay.idle_timeout is not None and relay.idle_timeout / 4 < self.interval:
            self.interval = max(relay.idle_timeout / 4, 0.01)
        if self.scope is None:
            self.scope = trio.CancelScope()
            nursery.start_soon(self._run, self.scope, name="relay-sweeper")

    def discard(self, relay: Relay) -> None:
        self.relays.discard(relay)
        if not self.relays and self.scope is not None:
            self.scope.cancel()  # the last one: end now, not at the next look (a drain waits)

    async def _run(self, scope: trio.CancelScope) -> None:
        try:
            with scope:
                while self.relays:
                    await trio.sleep(self.interval)
                    now = _current_time()
                    for relay in list(self.relays):
                        relay.sweep(now)
        finally:
            if self.scope is scope:
                self.scope = None
                self.interval = SWEEP_EVERY


SWEEPER = _Sweeper()
_NO_BYTES = memoryview(b"")


class Relay:
    __slots__ = (
        "down",
        "up",
        "splice",
        "idle_timeout",
        "on_close",
        "rx_bytes",
        "tx_bytes",
        "outcome",
        "error",
        "pipe_fallbacks",
        "_active",
        "_last_activity",
        "_open_pumps",
        "_scopes",
        "_nursery",
        "_handover",
        "_pending",
        "_finished",
        "_reading",
        "_parking",
        "_parked",
        "stats",
    )

    def __init__(
        self,
        down: socket.socket,
        up: socket.socket,
        *,
        splice: bool,
        idle_timeout: float | None,
        on_close: Callable[[Relay], None],
        pending: tuple[bytes, bytes] = (b"", b""),
        finished: tuple[bool, bool] = (False, False),
        stats: Any = None,
    ) -> None:
        self.down = down
        self.up = up
        self.splice = splice and HAVE_SPLICE
        self.idle_timeout = idle_timeout
        self.on_close = on_close
        self.rx_bytes = 0  # downstream → upstream
        self.tx_bytes = 0  # upstream → downstream
        self.outcome = CLOSED
        self.error: BaseException | None = None
        self.pipe_fallbacks = 0  # splice bursts copied in userspace for want of a pipe
        self._active = False
        self._last_activity = 0.0
        self._open_pumps = 0
        self._scopes: list[trio.CancelScope] = []
        self._nursery: trio.Nursery | None = None
        self._handover: Handover | None = None  # set by stop()
        # Per direction, [0] downstream→upstream and [1] upstream→downstream: bytes read from
        # the source and not yet written to the destination, and whether the direction is over
        # (EOF seen and shutdown(SHUT_WR) sent on the other side).
        self._pending = [pending[0], pending[1]]
        self._finished = [finished[0], finished[1]]
        # Idle: directions waiting for input with nothing in hand; the sweeper parks the relay
        # (both pumps end, its sockets wait in proxy.network.parking) once that lasts.
        self._reading = 0
        self._parking = False  # the pumps are stopping to park
        self._parked = False
        self.stats = stats  # the listener's: its downstream_cx_parked gauge counts this relay

    async def run(self, nursery: trio.Nursery) -> None:
        """Relay until both directions end. Returns when the downstream→upstream direction
        ends; the other direction may still be running in `nursery`, and the last one closes."""
        self._nursery = nursery
        self._last_activity = _current_time()
        SWEEPER.add(self, nursery)
        self._start(nursery, inline=True)
        if not self._finished[0]:
            await self._direction(self.down, self.up, True)
        elif self._open_pumps == 0:
            self._close()  # both directions were over already

    def _start(self, nursery: trio.Nursery, inline: bool) -> None:
        """Start the unfinished directions; with `inline` the caller runs downstream→upstream."""
        to_up = not self._finished[0]
        to_down = not self._finished[1]
        self._open_pumps = to_up + to_down
        self._reading = 0
        self._parking = False  # (a handover that overtook a park and was refused: not parking now)
        if to_down:
            nursery.start_soon(self._direction, self.up, self.down, False)
        if to_up and not inline:
            nursery.start_soon(self._direction, self.down, self.up, True)

    def stop(self, handover: Handover) -> bool:
        """Stop both directions at their next safe point, then hand the connection over with
        `await handover(self)` (see the module docstring). False if the relay is already
        ending or stopping: it then ends as it would have."""
        if self._handover is not None or self.outcome != CLOSED:
            return False
        self._handover = handover
        if self._parked:  # no pumps to stop: hand over from a task of its own
            self._unpark()
            assert self._nursery is not None
            self._nursery.start_soon(self._hand_over)
            return True
        for scope in self._scopes:
            scope.cancel()
        return True

    # ------------------------------------------------------------------ idle: timeout, parking

    def sweep(self, now: float) -> None:
        """The sweeper's look, every SWEEP_EVERY: the idle timeout, and parking."""
        if self._active:
            self._active = False
            self._last_activity = now
            return
        idle_for = now - self._last_activity
        if self.idle_timeout is not None and idle_for >= self.idle_timeout:
            if self._parked:
                self._unpark()
                self.outcome = IDLE_TIMEOUT
                self._close()
            else:
                self._abort(IDLE_TIMEOUT, None, rst=False)  # a plain close, as Envoy does
        elif (
            idle_for >= PARK_AFTER
            and not self._parked
            and not self._parking
            and self._open_pumps
            and self._reading == self._open_pumps
            and self._handover is None
            and self.outcome == CLOSED
        ):
            self._parking = True
            for scope in self._scopes:
                scope.cancel()

    def _sources(self) -> tuple[int, ...]:
        """The fds whose input would wake a parked relay: the unfinished directions' sources."""
        fds = []
        if not self._finished[0]:
            fds.append(self.down.fileno())
        if not self._finished[1]:
            fds.append(self.up.fileno())
        return tuple(fds)

    def _park(self) -> None:
        self._parking = False
        self._parked = True
        self._scopes.clear()
        assert self._nursery is not None
        if not PARKING.park(self, self._sources(), self._woken, self._nursery, self.stats):
            self._woken()  # could not park (out of fds): relay on with tasks

    def _woken(self) -> None:
        """Input on a parked relay: its pumps start again where they stopped."""
        self._parked = False
        self._last_activity = _current_time()
        assert self._nursery is not None
        self._start(self._nursery, inline=False)

    def _unpark(self) -> None:
        if self._parked:
            PARKING.unpark(self)
            self._parked = False

    def migration_state(self) -> dict[str, Any]:
        """The relay's state for a handover (schema "tcp"/"tunnel" without `host`); valid once
        stopped."""
        b64e = migration_mod.b64e
        return {
            "to_up": b64e(self._pending[0]),
            "to_down": b64e(self._pending[1]),
            "down_eof": self._finished[0],
            "up_eof": self._finished[1],
        }

    async def _direction(self, src: socket.socket, dst: socket.socket, upstream_bound: bool) -> None:
        index = 0 if upstream_bound else 1
        try:
            if self.outcome != CLOSED:
                return  # the other direction already aborted before this one started
            with trio.CancelScope() as scope:
                self._scopes.append(scope)
                if self._handover is not None:
                    scope.cancel()  # stopped before this direction began: stop at its first wait
                try:
                    leftover = self._pending[index]
                    if leftover:
                        self._pending[index] = b""
                        await self._flush(leftover, dst, index)
                    if self.splice:
                        await self._splice_pump(src, dst, upstream_bound)
                    else:
                        await self._copy_pump(src, dst, upstream_bound)
                    self._finished[index] = True
                except _Reset as exc:
                    self._abort(RESET, exc.__cause__)
                except trio.Cancelled:
                    if self.outcome == CLOSED and self._handover is None and not self._parking:
                        self.outcome = CANCELLED
                    raise
                except Exception as exc:  # a bug: recorded, logged by on_close, never fatal
                    self._abort(ERROR, exc)
        finally:
            self._open_pumps -= 1
            if self._open_pumps == 0:
                unfinished = not (self._finished[0] and self._finished[1])
                if self._handover is not None and self.outcome == CLOSED and unfinished:
                    await self._hand_over()
                elif self._parking and self.outcome == CLOSED and unfinished:
                    self._park()
                else:
                    self._close()

    async def _hand_over(self) -> None:
        """Both pumps stopped for a handover: offer the connection; resume here if refused."""
        handover = self._handover
        assert handover is not None
        try:
            moved = await handover(self)
        except trio.Cancelled:
            self.outcome = CANCELLED
            self._close()
            raise
        except Exception as exc:  # noqa: BLE001 - a bug in the handover: close (the new worker may hold a copy)
            self.outcome = ERROR
            self.error = exc
            self._close()
            return
        if moved:
            self.outcome = MIGRATED
            SWEEPER.discard(self)
            migration_mod.release(self.down)
            migration_mod.release(self.up)
            self.on_close(self)
            return
        self._handover = None
        self._scopes.clear()
        self._last_activity = _current_time()
        assert self._nursery is not None
        self._start(self._nursery, inline=False)

    def _abort(self, outcome: str, error: BaseException | None, rst: bool = True) -> None:
        """Stop both directions; with `rst`, the close sends RST to both peers."""
        if self.outcome in (CLOSED, CANCELLED):
            self.outcome = outcome
            self.error = error
        if rst:
            for sock in (self.down, self.up):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
                except OSError:
                    pass
        for scope in self._scopes:
            scope.cancel()

    def _close(self) -> None:
        SWEEPER.discard(self)
        self._unpark()
        for sock in (self.down, self.up):
            trio.lowlevel.notify_closing(sock)
            sock.close()
        self.on_close(self)

    async def _flush(self, data: bytes, dst: socket.socket, index: int) -> None:
        """Write bytes read already: what a previous pump (or generation) left, or a splice
        burst copied for want of a pipe. Not counted here: they were counted when read."""
        view = memoryview(data)
        try:
            while view:
                try:
                    view = view[dst.send(view) :]
                    self._active = True
                except BlockingIOError:
                    await _wait_writable(dst)
        except trio.Cancelled:
            if self._handover is not None or self._parking:
                self._pending[index] = bytes(view)
            raise
        except OSError as exc:
            raise _Reset from exc

    def _eof(self, dst: socket.socket) -> None:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise _Reset from exc

    async def _splice_pump(self, src: socket.socket, dst: socket.socket, upstream_bound: bool) -> None:
        """src → pipe → dst in the kernel. The pipe comes from the worker's pool when the source
        has bytes and goes back once it is empty and the source would block, so an idle
        direction holds none (see proxy.network.pipes). A burst that finds no pipe is copied."""
        pool = pipes_mod.POOL
        src_fd, dst_fd = src.fileno(), dst.fileno()
        splice = os.splice
        flags = _SPLICE_FLAGS
        moved = 0
        pending = 0  # bytes in the pipe not yet written to dst
        eof = False
        moves = 0
        index = 0 if upstream_bound else 1
        # Optimistic first take: the source may have bytes already (a new or adopted relay).
        pipe = pool.take()
        try:
            while True:
                if pipe is None:
                    self._reading += 1
                    await _wait_readable(src)
                    self._reading -= 1
                    pipe = pool.take()
                    if pipe is None:
                        try:
                            data = src.recv(COPY_CHUNK)
                        except BlockingIOError:
                            continue
                        if not data:
                            self._eof(dst)
                            return
                        moved += len(data)
                        self.pipe_fallbacks += 1
                        await self._flush(data, dst, index)  # (a stop keeps the unsent rest)
                        await _checkpoint()
                        continue
                # Keep reading while the pipe has room, even when dst is slow: the source's
                # window stays open and each wakeup moves a bigger batch.
                if not eof and pending < pipe.capacity:
                    try:
                        n = splice(src_fd, pipe.write_fd, pipe.capacity - pending, flags=flags)
                    except BlockingIOError:
                        n = -1
                    if n > 0:
                        pending += n
                        moved += n
                        self._active = True
                    elif n == 0:
                        eof = True
                    elif not pending:
                        pool.give(pipe)  # drained and nothing more to read: idle without it
                        pipe = None
                        continue
                if pending:
                    try:
                        pending -= splice(pipe.read_fd, dst_fd, pending, flags=flags)
                    except BlockingIOError:
                        await _wait_writable(dst)
                        continue
                elif eof:
                    self._eof(dst)
                    return
                moves += 1
                if moves == CHECKPOINT_EVERY:
                    moves = 0
                    await _checkpoint()
        except trio.Cancelled:
            if pending and pipe is not None and (self._handover is not None or self._parking):
                # Stopped for a handover (or to park): what sits in the pipe goes along.
                self._pending[index] = _read_pipe(pipe.read_fd, pending)
                pending = 0
            raise
        except OSError as exc:
            raise _Reset from exc
        finally:
            if pipe is not None:
                if pending:
                    pool.discard(pipe)  # holds bytes nobody will write
                else:
                    pool.give(pipe)
            if upstream_bound:
                self.rx_bytes += moved
            else:
                self.tx_bytes += moved

    async def _copy_pump(self, src: socket.socket, dst: socket.socket, upstream_bound: bool) -> None:
        recv = src.recv
        send = dst.send
        moved = 0
        moves = 0
        view = _NO_BYTES
        try:
            while True:
                try:
                    data = recv(COPY_CHUNK)
                except BlockingIOError:
                    self._reading += 1
                    await _wait_readable(src)
                    self._reading -= 1
                    continue
                if not data:
                    self._eof(dst)
                    return
                moved += len(data)
                self._active = True
                view = memoryview(data)
                while view:
                    try:
                        view = view[send(view) :]
                    except BlockingIOError:
                        await _wait_writable(dst)
                view = _NO_BYTES
                moves += 1
                if moves == CHECKPOINT_EVERY:
                    moves = 0
                    await _checkpoint()
        except trio.Cancelled:
            if view and (self._handover is not None or self._parking):
                self._pending[0 if upstream_bound else 1] = bytes(view)  # read, not yet sent
            raise
        except OSError as exc:
            raise _Reset from exc
        finally:
            if upstream_bound:
                self.rx_bytes += moved
            else:
                self.tx_bytes += moved


def _read_pipe(fd: int, size: int) -> bytes:
    parts = []
    while size > 0:
        part = os.read(fd, size)
        if not part:
            break
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def carried(state: dict[str, Any]) -> dict[str, Any]:
    """Relay keyword arguments for a connection adopted with a "tcp"/"tunnel" state."""
    b64d = migration_mod.b64d
    return {
        "pending": (b64d(state["to_up"]), b64d(state["to_down"])),
        "finished": (bool(state["down_eof"]), bool(state["up_eof"])),
    }


def count_downstream_close(stats: Any, relay: Relay) -> None:
    """Listener bookkeeping when a relayed connection leaves this worker: closed, or handed
    to the next generation (then it is not destroyed, it lives on there)."""
    stats.downstream_cx_active -= 1
    if relay.outcome == MIGRATED:
        stats.downstream_cx_migrated_out += 1
    else:
        stats.downstream_cx_destroy += 1
    stats.downstream_rx_bytes_total += relay.rx_bytes
    stats.downstream_tx_bytes_total += relay.tx_bytes
    stats.relay_pipe_unavailable += relay.pipe_fallbacks
