"""Minimal async I/O on a non-blocking stdlib socket, for the L7 hot paths.

trio's SocketStream adds conflict detection and a checkpoint per call; an HTTP request costs
several receives and sends, so these helpers try the syscall first and park on trio only when
it would block (python-trio.md: trio's per-I/O overhead is the limit once parsing is in C).
Errors are translated once here: a peer that resets or vanishes raises `ConnectionLost`.

Sends that end a message (a whole response, a request head) can be coalesced: `send_soon`
queues the bytes and the `SendCoalescer` sends every queued buffer in one tight loop just
before the scheduler waits for I/O again, i.e. at the end of the pass that queued them. Why:
on loopback each send runs the receiver's TCP input and wakes the peer; sends spread over a
pass (one every ~50 us of Python work) find the peer idle and pay a cross-cpu wakeup each,
measured at ~18 % of the proxy's CPU. Sent back to back, one wakeup serves the batch: 9.0k ->
14.1k requests per core on the HTTP/1 bench (docs/performance.md). Netty's flush consolidation,
in trio terms. At most COALESCE_MAX bytes wait per connection; order is always kept. With
little traffic (at most one send in the last pass, and this is the first of this pass) a send
goes at once: there is nothing to batch with, and a send left to the end of the pass would go
out just before the loop sleeps, paying a sleep and a wakeup per exchange.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import trio

from proxy.network.edge_epoll import wait_readable as _wait_readable
from proxy.network.edge_epoll import wait_writable as _wait_writable

RECV_SIZE = 65536


class ConnectionLost(Exception):
    """The peer reset the connection or it broke (ECONNRESET, EPIPE, ...)."""


# A connection queues at most this much per pass (one message or several pipelined ones);
# beyond it, send_soon sends at once: queuing gains nothing then and holds memory.
COALESCE_MAX = 64 * 1024


class SendCoalescer(trio.abc.Instrument):
    """Sends the buffers `SockIO.send_soon` queued, in `before_io_wait`: after every task of
    this scheduler pass has run, before the next wait. A buffer the kernel does not take whole
    (a client that reads nothing while pipelining) is finished by a task of its own; the
    connection's next send waits for it, so bytes never reorder."""

    def __init__(self, token: trio.lowlevel.TrioToken, lone_send_now: bool = True) -> None:
        self.queue: list[SockIO] = []
        self.lone_send_now = lone_send_now
        self._token = token
        self._stalled: list[SockIO] = []
        # Sends per pass, this one and the last (see send_soon: a lone send goes at once).
        self.sends = 0
        self.last_sends = 0

    def quiet(self) -> bool:
        """Nothing has been sent in this pass, and at most one send went in the last: a send
        queued now would have nothing to batch with (see SockIO.send_soon)."""
        return self.sends == 0 and self.last_sends <= 1 and self.lone_send_now

    def before_io_wait(self, timeout: float) -> None:
        self.last_sends, self.sends = self.sends, 0
        queue = self.queue
        if not queue:
            return
        self.queue = []
        for io in queue:
            io.queued = False
            if io.pull is not None:
                io.take_pulled()
            data = io.later
            if data is None or io.owner is not None:  # sent by a flush, closed, or a task owns it
                continue
            io.later = None
            try:
                sent = io.sock.send(data)
            except BlockingIOError:
                sent = 0
            except Exception:  # noqa: BLE001 - reset or closed: the connection's next recv or send reports it
                continue  # (and trio would drop an instrument that raises: every later send would hang)
            if sent < len(data):
                io.later = data[sent:]
                io.owner = trio.Event()  # the task started below owns the rest
                self._stalled.append(io)
        if self._stalled:
            # The run loop already chose how long it will wait: wake it through the token
            # (a task rescheduled from here would sit out that wait).
            try:
                self._token.run_sync_soon(self._start_stalled)
            except trio.RunFinishedError:  # pragma: no cover - the run is ending anyway
                pass

    def _start_stalled(self) -> None:
        stalled, self._stalled = self._stalled, []
        for io in stalled:
            trio.lowlevel.spawn_system_task(io._finish_stalled, name="SockIO.finish_stalled")


_COALESCER: trio.lowlevel.RunVar[SendCoalescer | None] = trio.lowlevel.RunVar("send_coalescer", default=None)


def coalesce_sends(lone_send_now: bool = True) -> None:
    """Turn on `send_soon` coalescing for the current trio run (idempotent). Without it,
    `send_soon` is `send_all`. `lone_send_now=False` queues even a lone send (tests use it to
    make the queue observable)."""
    if _COALESCER.get() is None:
        coalescer = SendCoalescer(trio.lowlevel.current_trio_token(), lone_send_now)
        trio.lowlevel.add_instrument(coalescer)
        _COALESCER.set(coalescer)


class SockIO:
    __slots__ = ("sock", "tls", "bytes_received", "bytes_sent", "later", "queued", "owner", "pull", "_coalescer")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        # The TLS session under this socket's bytes (a network.tls.TlsSession, set by TlsIO);
        # None in plaintext. What a connection may do (park, move in a hot upgrade, splice a
        # tunnel) follows from it.
        self.tls: Any = None
        self.bytes_received = 0
        # Queued bytes count when queued, like bytes written to Envoy's connection buffer (a close
        # or reset that drops them leaves them counted); send_all counts bytes as they go out.
        self.bytes_sent = 0
        self.later: bytes | bytearray | None = None  # queued by send_soon, not sent yet
        self.queued = False  # in the coalescer's queue for this pass
        # Set while a task (a flush, or the coalescer's stalled-send task) sends `later`; the
        # Event fires when it is done. Nobody else sends on this socket meanwhile.
        self.owner: trio.Event | None = None
        # A multiplexed codec's data_to_send, to call at the end of this pass (pull_soon).
        self.pull: Callable[[], bytes] | None = None
        try:
            self._coalescer = _COALESCER.get()
        except RuntimeError:  # outside a trio run (tests)
            self._coalescer = None

    async def recv(self, size: int = RECV_SIZE) -> bytes:
        """Bytes from the peer; b"" at EOF."""
        sock = self.sock
        while True:
            try:
                data = sock.recv(size)
            except BlockingIOError:
                await _wait_readable(sock)
                continue
            except OSError as exc:
                raise ConnectionLost(str(exc)) from exc
            self.bytes_received += len(data)
            return data

    def recv_ready(self, size: int = RECV_SIZE) -> bytes | None:
        """What recv returns if it need not wait, else None: for a caller that waits itself
        (an idle HTTP/1 connection, one coroutine frame less while it idles)."""
        try:
            data = self.sock.recv(size)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise ConnectionLost(str(exc)) from exc
        self.bytes_received += len(data)
        return data

    async def recv_reply(self, size: int = RECV_SIZE) -> bytes:
        """Like recv, for an answer to something just sent: it cannot be here yet, so wait
        first and save the recv that would fail with EAGAIN (a syscall and an exception)."""
        sock = self.sock
        await _wait_readable(sock)
        while True:  # recv, inlined: twice per proxied request
            try:
                data = sock.recv(size)
            except BlockingIOError:
                await _wait_readable(sock)
                continue
            except OSError as exc:
                raise ConnectionLost(str(exc)) from exc
            self.bytes_received += len(data)
            return data

    def pull_soon(self, pull: Callable[[], bytes]) -> bool:
        """Take `pull()` (a multiplexed codec's data_to_send) at the end of this scheduler pass
        and send it with the pass's other sends. Ten streams of one HTTP/2 connection that end
        in one pass then cost one encode-and-send, not ten (~6 % of an HTTP/2 request's CPU).
        False when it cannot wait (no coalescer, a task sending, a lone send: see send_soon):
        the caller sends now."""
        coalescer = self._coalescer
        if coalescer is None or self.owner is not None:
            return False
        if self.pull is not None:
            return True  # already due this pass
        if self.later is None and coalescer.quiet():
            return False
        coalescer.sends += 1
        self.pull = pull
        if not self.queued:
            self.queued = True
            coalescer.queue.append(self)
        return True

    def take_pulled(self) -> None:
        """What pull_soon left to the end of the pass joins `later` now (the coalescer, or a
        send that must go after it)."""
        pull = self.pull
        self.pull = None
        if pull is None:
            return
        data = pull()
        if data:
            self._queue_pulled(data)

    def _queue_pulled(self, data: bytes) -> None:
        """Queue what take_pulled got (TlsIO seals it first)."""
        self._add_later(data)

    def _add_later(self, data: bytes) -> None:
        later = self.later
        if later is None:
            self.later = data
        elif isinstance(later, bytearray):
            later += data
        else:  # a second message this pass (pipelining): grow in place from now on
            self.later = bytearray(later) + data
        self.bytes_sent += len(data)

    async def send_soon(self, data: bytes) -> None:
        """Send `data` at the end of this scheduler pass (see the module doc); for the last
        bytes of a message, when the task's next step is to wait for the peer's answer."""
        if self.pull is not None:
            self.take_pulled()  # (bytes are sent in the order they were given)
        coalescer = self._coalescer
        later = self.later
        if (
            coalescer is None
            or self.owner is not None
            or len(data) + (len(later) if later is not None else 0) > COALESCE_MAX
        ):
            await SockIO.send_all(self, data)  # (what is queued goes first; SockIO's own: a TlsIO gives sealed bytes)
            return
        if later is None and coalescer.quiet():
            # Little traffic (one send in the last pass too): nothing to batch with, and a send
            # left to the end of the pass goes out just before the loop sleeps, which costs a
            # sleep and a wakeup per exchange (one connection: p50 200 -> 270 us). Send now.
            coalescer.sends += 1
            await SockIO.send_all(self, data)
            return
        coalescer.sends += 1
        self._add_later(data)
        if not self.queued:
            self.queued = True
            coalescer.queue.append(self)

    @property
    def unsent(self) -> bool:
        """Bytes queued by `send_soon` (or `pull_soon`) have not all gone to the kernel yet."""
        return self.later is not None or self.owner is not None or self.pull is not None

    async def flush(self) -> None:
        """Wait until everything queued by `send_soon` has gone to the kernel. If cancelled,
        what is not sent yet stays queued (`unsent`), in order."""
        if self.pull is not None:
            self.take_pulled()
        while self.owner is not None:
            await self.owner.wait()
        # (A local, not `self.later is None`: compiled, a narrowed attribute stays narrowed
        # across the await below, and the `finally` must see it become None.)
        later: bytes | bytearray | None = self.later
        if later is None:
            return
        self.owner = trio.Event()
        try:
            await self._send_later()
        finally:
            event, self.owner = self.owner, None
            event.set()
            if self.later is not None and not self.queued and self._coalescer is not None:
                # Interrupted (a bound on the flush ran out) with the socket still open: the
                # coalescer takes the rest back, so it goes out whatever this task does next.
                self.queued = True
                self._coalescer.queue.append(self)

    def flush_now(self) -> bool:
        """Send what is queued if the kernel takes it all now, without waiting; True when
        nothing is left to send (a closing connection then needs no timed flush)."""
        if self.owner is not None:
            return False
        if self.pull is not None:
            self.take_pulled()
        later = self.later
        if later is None:
            return True
        try:
            sent = self.sock.send(later)
        except BlockingIOError:
            return False
        except OSError:
            self.later = None  # the peer is gone: nothing will ever be sent
            return True
        self.later = later[sent:] if sent < len(later) else None
        return self.later is None

    async def _send_later(self) -> None:
        """Send `later` until it is all gone (the caller owns it); the rest stays in `later`
        whatever interrupts this."""
        sock = self.sock
        while self.later:
            try:
                sent = sock.send(self.later)
            except BlockingIOError:
                await _wait_writable(sock)
                continue
            except OSError as exc:
                self.later = None
                raise ConnectionLost(str(exc)) from exc
            self.later = self.later[sent:] if sent < len(self.later) else None
        self.later = None

    async def _finish_stalled(self) -> None:
        """A system task: send the rest of a `later` the coalescer could not send whole."""
        try:
            await self._send_later()
        except Exception:  # noqa: BLE001, S110 - reset or closed: the connection's task reports it
            self.later = None  # (and a system task must not raise: that would end the whole run)
        finally:
            event, self.owner = self.owner, None
            if event is not None:
                event.set()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.later is not None or self.owner is not None or self.pull is not None:  # (self.unsent, inlined)
            await self.flush()  # queued bytes first
        sock = self.sock
        total = len(data)
        if not total:
            return
        # Small writes go out whole: try that before slicing a memoryview.
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise ConnectionLost(str(exc)) from exc
        self.bytes_sent += sent
        if sent < total:
            view = memoryview(data)[sent:]
            while view:
                try:
                    sent = sock.send(view)
                except BlockingIOError:
                    await _wait_writable(sock)
                    continue
                except OSError as exc:
                    raise ConnectionLost(str(exc)) from exc
                self.bytes_sent += sent
                view = view[sent:]

    def try_send(self, data: bytes) -> int:
        """Send what fits now without waiting; returns the count sent."""
        try:
            n = self.sock.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise ConnectionLost(str(exc)) from exc
        self.bytes_sent += n
        return n

    def peer_closed(self) -> bool:
        """True if an idle connection has been closed (or reset) by the peer, or has sent
        unexpected bytes: either way it must not be reused."""
        try:
            return self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) is not None
        except BlockingIOError:
            return False
        except OSError:
            return True

    def shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        """Close now; bytes still queued by `send_soon` are dropped (`flush` first to keep
        them)."""
        self.later = None
        self.pull = None
        if self.sock.fileno() != -1:
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()

    def abort(self) -> None:
        """Close with RST."""
        if self.sock.fileno() != -1:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass
            self.close()
