"""Multiplexed downstream connections: many streams on one connection, each served by a task.

For any `proxy.codec.mux.ServerCodec` (HTTP/2, the RPC protocols, the test-only RPC codec):

    connection task: recv -> codec.receive -> events -> streams   (one reader per connection)
    stream workers (the connection's child nursery): Router.serve(stream), one stream at a
            time; a worker that finishes a stream parks and takes the next one (see
            MuxConnection._stream_worker), so a busy connection spawns no task per request
    writes: a stream queues frames in the codec and flushes; one task at a time sends the
            codec's bytes (the others' frames go with them), through SockIO.send_soon so the
            replies of one scheduler pass leave together

Flow control belongs to the codec; this layer only waits: a stream whose data the codec did
not take waits for `WindowOpened`, a request body is acknowledged as the router consumes it
(windows open as the other side drains, not before), and a stream that writes while more than
MAX_BACKLOG bytes wait to go out (a peer that reads nothing) waits for them to leave.

Deadlines: a stream is served inside its worker's cancel scope, cancelled by the listener's
watchdog when its `deadline` passes (the route timeout: 504, or a reset once the response has started); a
connection with no stream open closes after idle_timeout. A drain sends GOAWAY and lets the
open streams finish. A hot upgrade moves HTTP/2 connections at their idle point
(http2_migration).
"""

from __future__ import annotations

import collections
import socket
from typing import TYPE_CHECKING, Any

import outcome
import trio
from trio.lowlevel import Abort, Task, current_task, reschedule, wait_task_rescheduled

from proxy.codec import mux
from proxy.codec.http1 import Body, EndOfMessage, Headers, ResponseHead, Upgraded
from proxy.http import http2_migration
from proxy.http.codec_io import MAX_BACKLOG, CodecWriter, peer_names
from proxy.http.router import Abort as AbortStream
from proxy.http.router import Router
from proxy.http.stream import ServerStream, StreamReset, UpstreamRequest
from proxy.http.stream_info import StreamInfo
from proxy.http.stream_tunnel import pump_upstream_stream, run_both
from proxy.log import get_logger
from proxy.network.sockio import ConnectionLost, SockIO
from proxy.upgrade import migration as migration_mod

if TYPE_CHECKING:
    from proxy.http.connection_manager import HttpConnectionManager

log = get_logger("http")

# Between the two GOAWAYs of a drain: about a round trip, so requests in flight are not refused.
GOAWAY_GRACE = 1.0

_INF = float("inf")
_EOM = EndOfMessage()

# Parked stream workers a connection keeps (a burst's concurrency), and once it had no stream
# open for TRIM_WORKERS_AFTER (an idle connection should not hold a task per past stream).
MAX_IDLE_WORKERS = 16
MAX_IDLE_WORKERS_WHEN_IDLE = 1
TRIM_WORKERS_AFTER = 1.0  # seconds with no stream open


class MuxServerStream(ServerStream):
    """One request of a multiplexed connection, as the router sees it."""

    __slots__ = (
        "conn",
        "stream_id",
        "scope",
        "deadline",
        "inbound",
        "readable",
        "request_ended",
        "out",
        "ended",
        "window",
        "reset_code",
        "timer_fired",
        "cancel_requested",
    )

    def __init__(self, conn: MuxConnection, stream_id: int, head: Any, info: StreamInfo, client_ip: str, end_stream: bool) -> None:
        super().__init__(head, info, client_ip)
        self.conn = conn
        self.stream_id = stream_id
        self.scope: trio.CancelScope | None = None  # its worker's, while the worker serves it
        self.deadline = _INF
        self.inbound: collections.deque[Any] = collections.deque()  # (event, flow_length)
        self.readable: trio.Event | None = None  # set when `inbound` gets something
        self.request_ended = end_stream
        self.out: list[Any] = []  # written, not given to the codec yet
        self.ended = False
        self.window: trio.Event | None = None  # set when flow control lets sends go on
        self.reset_code: int | None = None  # the peer reset the stream
        self.timer_fired = False
        self.cancel_requested = False
        # A CONNECT's (or an extended CONNECT's) DATA are the tunnel's bytes, not a body to send
        # before the answer: start_tunnel carries them once the upstream said yes.
        self.has_body = not end_stream and head.upgrade is None

    def cancel(self) -> None:
        """End the exchange at its next checkpoint (a reset, the route timeout). Before a
        worker took the stream, the worker cancels it on taking it, before serving anything."""
        self.cancel_requested = True
        if self.scope is not None:
            self.scope.cancel()

    async def receive_body(self) -> Body | EndOfMessage:
        inbound = self.inbound
        while not inbound:
            if self.reset_code is not None:
                raise StreamReset("the client reset the stream", self.reset_code)
            self.readable = trio.Event()
            await self.readable.wait()
        event, flow_length = inbound.popleft()
        if flow_length:
            self.conn.codec.acknowledge(self.stream_id, flow_length)
            await self.conn.flush()
        return event  # type: ignore[no-any-return]

    async def send_continue(self) -> None:
        self.conn.codec.send_response(self.stream_id, ResponseHead(100, b"", b"2", [], True, False, None), False)
        await self.conn.flush()

    def write_response(self, head: ResponseHead, end_stream: bool) -> None:
        self.out.append(head)
        if end_stream:
            self.ended = True
        self.response_started = True

    def write_data(self, data: bytes) -> None:
        self.out.append(data)

    def write_end(self, trailers: Headers | tuple[()] = ()) -> None:
        self.out.append(list(trailers) if trailers else _EOM)
        self.ended = True

    async def flush(self) -> None:
        if self.reset_code is not None:
            raise StreamReset("the client reset the stream", self.reset_code)
        codec = self.conn.codec
        sid = self.stream_id
        out = self.out
        self.out = []
        last = len(out) - 1
        for i, item in enumerate(out):
            if type(item) is ResponseHead:
                codec.send_response(sid, item, self.ended and i == last)
            elif type(item) is bytes:
                end = self.ended and i == last - 1 and out[last] is _EOM
                await self._send_data(item, end)
                if end:
                    break
            elif item is _EOM:
                await self._send_data(b"", True)
            else:
                codec.send_trailers(sid, item)
        await self.conn.flush()

    async def _send_data(self, data: bytes, end_stream: bool) -> None:
        codec = self.conn.codec
        sid = self.stream_id
        while True:
            taken = codec.send_data(sid, data, end_stream)
            if taken >= len(data):
                return
            data = data[taken:]
            await self.conn.flush()  # out with what was taken; then wait for the window
            if self.reset_code is not None:
                raise StreamReset("the client reset the stream", self.reset_code)
            self.window = trio.Event()
            await self.window.wait()

    def reply_headers(self, close: bool) -> None:
        pass  # a multiplexed connection outlives any one reply

    def set_deadline(self, deadline: float) -> None:
        self.deadline = deadline

    def timed_out(self) -> bool:
        return self.timer_fired

    async def start_tunnel(self, upstream: UpstreamRequest, response: ResponseHead) -> bool:
        """A CONNECT 2xx, or the 101 of an HTTP/1 upstream to an extended CONNECT (RFC 8441:
        WebSocket over this stream): the stream's DATA and the upstream socket's bytes become
        one tunnel, run here until both directions end. Flow control holds on both sides: the
        upstream is read no faster than the client's window lets us send, and the client's
        data is acknowledged as it goes upstream. No bytes either way for the listener's
        idle_timeout ends it (a reset, as any cut response)."""
        from proxy.http.http1_upstream import Http1Upstream
        from proxy.http.http2_upstream import H2UpstreamRequest

        if isinstance(upstream, H2UpstreamRequest):
            await self._tunnel_to_stream(upstream, response)
            return True
        if not isinstance(upstream, Http1Upstream):
            return False
        leftover = b"".join(e.leftover for e in upstream.buffered() if isinstance(e, Upgraded))
        upstream.detach()  # the socket leaves the pool for good: the tunnel closes it
        io = upstream.io
        server = self.conn.server
        now = server.router._now
        idle = server.idle_timeout
        self.deadline = now() + idle  # the route timeout is for the handshake, not the tunnel
        try:
            # (the codec says 200 for a 101 on an extended CONNECT, without Sec-WebSocket-Accept)
            self.write_response(ResponseHead(response.status, response.reason, b"1.1", list(response.headers), True, False, None), False)
            if leftover:
                self.write_data(leftover)
            await self.flush()

            async def client_to_upstream() -> None:
                while True:
                    event = await self.receive_body()
                    self.deadline = now() + idle
                    if type(event) is Body:
                        if event.data:
                            await io.send_all(event.data)
                    else:  # END_STREAM: the client is done sending
                        await io.flush()
                        io.shutdown_write()  # (a TLS upstream: close_notify first)
                        return

            async def upstream_to_client() -> None:
                while True:
                    data = await io.recv()
                    self.deadline = now() + idle
                    if not data:
                        self.write_end()
                        await self.flush()
                        return
                    self.write_data(data)
                    await self.flush()

            await run_both(client_to_upstream, upstream_to_client)
        finally:
            io.close()
        return True

    async def _tunnel_to_stream(self, upstream: Any, response: ResponseHead) -> None:
        """The tunnel of an HTTP/2 upstream's CONNECT or extended CONNECT stream: DATA to
        DATA (proxy.http.stream_tunnel), the same idle rule as above."""
        server = self.conn.server
        now = server.router._now
        idle = server.idle_timeout

        async def open_down() -> None:
            self.write_response(ResponseHead(response.status, response.reason, b"1.1", list(response.headers), True, False, None), False)
            await self.flush()

        async def receive_down() -> tuple[bytes, bool]:
            event = await self.receive_body()
            if type(event) is not Body:
                return b"", True
            inbound = self.inbound
            if inbound and type(inbound[0][0]) is EndOfMessage:  # the end came with it
                inbound.popleft()
                return event.data, True
            return event.data, False

        async def send_down(chunks: list[bytes], end: bool) -> None:
            for chunk in chunks:
                self.write_data(chunk)
            if end:
                self.write_end()
            await self.flush()

        def touch() -> None:
            self.deadline = now() + idle

        await pump_upstream_stream(upstream, open_down, receive_down, send_down, touch)


class MuxConnection:
    """One client connection of a multiplexed codec."""

    def __init__(self, server: MuxServer, io: SockIO, codec: mux.ServerCodec, remote: str, client_ip: str, local: str) -> None:
        self.server = server
        self.io = io
        self.codec = codec
        codec.count_into(server.stats)  # (HTTP/2: resets, GOAWAYs, stalls)
        self.remote = remote
        self.client_ip = client_ip
        self.local = local
        self.streams: dict[int, MuxServerStream] = {}
        # Send what the codec queued: one task at a time sends, the others' frames go along.
        self.writer = CodecWriter(io, codec)
        self.flush = self.writer.flush
        self.scope = trio.CancelScope()
        self.deadline = _INF  # idle_timeout while no stream is open
        self.goaway_sent = False
        self.nursery: trio.Nursery | None = None
        self.idle_workers: list[Task] = []  # parked stream workers, waiting for a stream
        # Hot upgrade (http2_migration): where it stands, and whether the reader waits in recv.
        self.handover = http2_migration.STAY
        self.wanted_until = _INF
        self.reading = False
        self.recv_scope: trio.CancelScope | None = None

    async def run(self, leftover: bytes = b"", initiate: bool = True) -> None:
        """Read, decode and dispatch until the client goes, breaks the protocol, idles out, is
        drained or is woken for a handover; `leftover`: bytes already read (by a protocol
        detector, or before a handover); `initiate=False` goes on where the codec stands."""
        server = self.server
        codec = self.codec
        io = self.io
        now = server.router._now
        if initiate:
            codec.initiate()
        await self.flush()
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                with self.scope:
                    data = leftover
                    while True:
                        if not data:
                            if not self.streams:
                                self.deadline = now() + server.idle_timeout
                            self.reading = True  # (a safe point to cancel at)
                            data = await (http2_migration.recv(self) if self.handover else io.recv())
                            self.reading = False
                            if not data:
                                break
                        try:
                            events = codec.receive(data, now())
                        except mux.CodecError as exc:
                            server.stats.downstream_rq_protocol_error += 1
                            log.info("connection.protocol_error", listener=server.name, peer=self.remote, reason=str(exc))
                            await self._flush_quietly()
                            break
                        data = b""
                        for event in events:
                            self._dispatch(event)
                        await self.flush()
                        if self.goaway_sent and not self.streams:
                            break
                # The client is gone (or broke the protocol): so are its streams.
                nursery.cancel_scope.cancel()
        finally:
            self.nursery = None

    def _dispatch(self, event: Any) -> None:
        kind = type(event)
        streams = self.streams
        if kind is mux.DataReceived:
            stream = streams.get(event.stream_id)
            if stream is None:
                self.codec.acknowledge(event.stream_id, event.flow_length)  # a stream we let go
                return
            if event.data or event.flow_length:
                stream.inbound.append((Body(event.data), event.flow_length))
            if event.end_stream:
                stream.request_ended = True
                stream.inbound.append((_EOM, 0))
            _wake(stream.readable)
        elif kind is mux.RequestReceived:
            self._open_stream(event)
        elif kind is mux.TrailersReceived:
            stream = streams.get(event.stream_id)
            if stream is not None:
                stream.request_ended = True
                stream.inbound.append((EndOfMessage(event.trailers), 0))
                _wake(stream.readable)
        elif kind is mux.StreamReset:
            stream = streams.get(event.stream_id)
            if stream is not None:
                stream.reset_code = event.error_code
                if event.remote:
                    self.server.stats.downstream_rq_rx_reset += 1
                stream.cancel()
                _wake(stream.readable)
                _wake(stream.window)
        elif kind is mux.WindowOpened:
            if event.stream_id == 0:
                for stream in streams.values():
                    _wake(stream.window)
            else:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    _wake(stream.window)
        elif kind is mux.GoAwayReceived:
            self.goaway_sent = True  # no new streams either way: finish those open, then close

    def _open_stream(self, event: mux.RequestReceived) -> None:
        server = self.server
        head = event.head
        info = StreamInfo(head, server.name, self.remote, self.local)
        info.protocol = self.codec.protocol
        info.tls = self.io.tls
        stream = MuxServerStream(self, event.stream_id, head, info, self.client_ip, event.end_stream)
        stream.scheme = event.scheme
        if event.end_stream:
            stream.inbound.append((_EOM, 0))
        self.streams[event.stream_id] = stream
        self.deadline = _INF
        if self.idle_workers:
            reschedule(self.idle_workers.pop(), outcome.Value(stream))
        else:
            assert self.nursery is not None
            self.nursery.start_soon(self._stream_worker, stream)

    async def _stream_worker(self, stream: MuxServerStream | None) -> None:
        """Serve streams one after another. A task spawned per stream, with a cancel scope of
        its own, cost about 30 us a request here (a tenth of an HTTP/2 request's CPU); a
        parked worker is woken for a fraction of that, and shares one scope with the streams
        it serves until one of them is cancelled (a cancelled scope cannot be reused, and
        trio lets a scope be entered only once, hence the two loops)."""
        while stream is not None:
            with trio.CancelScope() as scope:
                while stream is not None:
                    stream.scope = scope
                    if stream.cancel_requested:
                        scope.cancel()  # reset (or timed out) before this worker took it
                    await self._serve_stream(stream)
                    stream = await self._next_stream()
            # The scope caught a cancel: for the stream being served, or, if that one had just
            # finished (left `streams`) when the cancel came, a late one (nothing else of the
            # worker's is lost).
            if stream is not None:
                if self.streams.get(stream.stream_id) is stream:
                    await self._serve_stream(stream, cancelled=True)
                else:
                    await self._flush_after_stream()
                stream = await self._next_stream()

    async def _next_stream(self) -> MuxServerStream | None:
        """Park until _open_stream hands this worker a stream; None: too many wait already,
        the worker ends."""
        idle = self.idle_workers
        if len(idle) >= MAX_IDLE_WORKERS:
            return None
        task = current_task()
        idle.append(task)

        def abort(_: Any) -> Abort:  # the connection ends (or a late cancel): not waiting any more
            idle.remove(task)
            return Abort.SUCCEEDED

        return await wait_task_rescheduled(abort)  # type: ignore[no-any-return]

    async def _serve_stream(self, stream: MuxServerStream, cancelled: bool = False) -> None:
        """One exchange, inside the worker's scope. A cancel (reset, route timeout) leaves by
        Cancelled; the worker then calls again with `cancelled`, outside the scope, to answer
        (504) or reset what is left."""
        sid = stream.stream_id
        router = self.server.router
        try:
            try:
                if not cancelled:
                    await router.serve(stream)
                elif stream.timer_fired:
                    if stream.response_started:
                        raise AbortStream()  # a response cut midway: reset below
                    await router.send_quietly(stream, router.timeout_reply())
            except AbortStream:
                if stream.reset_code is None:
                    self._reset(sid, mux.CANCEL)
            else:
                self._after_serve(stream)
        except (ConnectionLost, StreamReset):
            pass
        except Exception as exc:  # noqa: BLE001 - one stream's bug must not end its connection
            self.server.stats.downstream_cx_error += 1
            log.error("stream.failed", listener=self.server.name, error=repr(exc), exc_info=exc)
            self._reset(sid, mux.CANCEL)
        await self._finish_stream(stream)

    def _after_serve(self, stream: MuxServerStream) -> None:
        sid = stream.stream_id
        if stream.reset_code is None and not stream.ended:
            self._reset(sid, mux.CANCEL)
        if stream.reset_code is None and not stream.request_ended:
            # The response is complete before the request (a local reply to an upload):
            # the rest of the request is not wanted (RFC 9113 §8.1).
            self._reset(sid, mux.NO_ERROR)

    async def _finish_stream(self, stream: MuxServerStream) -> None:
        sid = stream.stream_id
        stream.scope = None
        self.streams.pop(sid, None)  # from here nothing cancels it
        codec = self.codec
        for _, flow_length in stream.inbound:  # data never consumed still holds window
            if flow_length:
                codec.acknowledge(sid, flow_length)
        await self._flush_after_stream()

    async def _flush_after_stream(self) -> None:
        try:
            await self.flush()
        except ConnectionLost:
            pass
        if not self.streams:
            if self.goaway_sent:
                self.scope.cancel()  # drained: the connection ends
            else:
                self.deadline = self.server.router._now() + self.server.idle_timeout

    def trim_workers(self) -> None:
        """An idle connection keeps one parked worker (the watchdog calls this once the
        connection had no stream for TRIM_WORKERS_AFTER: between two bursts it keeps them)."""
        idle = self.idle_workers
        while len(idle) > MAX_IDLE_WORKERS_WHEN_IDLE:
            reschedule(idle.pop(), outcome.Value(None))

    def _reset(self, stream_id: int, code: int) -> None:
        self.server.stats.downstream_rq_tx_reset += 1
        self.codec.reset(stream_id, code)

    async def _flush_quietly(self) -> None:
        try:
            with trio.move_on_after(1):
                await self.flush()
                await self.io.flush()
        except ConnectionLost:
            pass

    async def drain(self) -> None:
        """GOAWAY in two steps: first "no new streams after the highest possible id", then,
        about a round trip later, the real last id; then close once the open streams end."""
        if self.goaway_sent:
            return
        self.goaway_sent = True
        self.codec.goaway(mux.NO_ERROR, 2**31 - 1)
        try:
            await self.flush()
            await trio.sleep(GOAWAY_GRACE)
            self.codec.goaway(mux.NO_ERROR, None)
            await self.flush()
        except ConnectionLost:
            pass
        if not self.streams:
            self.scope.cancel()


class MuxServer:
    """A listener's side for one multiplexed codec."""

    def __init__(self, manager: HttpConnectionManager, router: Router, config: Any, codec_factory: Any) -> None:
        self.manager = manager
        self.router = router
        self.name = config.name
        self.stats = manager.stats
        self.codec_factory = codec_factory
        self.idle_timeout = float(config.http.idle_timeout)
        self.tcp = not config.address.is_unix
        self.connections: set[MuxConnection] = set()

    def check_deadlines(self, now: float) -> None:
        for conn in self.connections:
            if conn.deadline <= now:
                conn.scope.cancel()
            if len(conn.idle_workers) > MAX_IDLE_WORKERS_WHEN_IDLE and not conn.streams and now >= conn.deadline - self.idle_timeout + TRIM_WORKERS_AFTER:
                conn.trim_workers()
            for stream in conn.streams.values():
                if stream.deadline <= now:
                    stream.timer_fired = True
                    stream.deadline = _INF
                    stream.cancel()

    def drain(self) -> None:
        for conn in self.connections:
            self.manager.nursery.start_soon(conn.drain)

    async def connection(self, sock: socket.socket, peer: Any, leftover: bytes = b"", codec: Any = None, io: SockIO | None = None) -> None:
        """Serve one client connection (accepted, or adopted with its `codec` restored and
        `leftover` bytes to read first) until it ends or moves to the next generation. `io`:
        a TlsIO whose handshake is done; such a connection is never handed over, it drains."""
        stats = self.stats
        manager = self.manager
        stats.downstream_cx_active += 1
        if io is None:
            io = SockIO(sock)
        conn = None
        owned = True  # False once the next worker generation owns the socket
        try:
            remote, client_ip, local = peer_names(sock, peer, self.tcp)
            conn = MuxConnection(self, io, codec or self.codec_factory(), remote, client_ip, local)
            self.connections.add(conn)
            if manager.draining:
                manager.nursery.start_soon(conn.drain)
            elif manager.migration.active:
                http2_migration.want(conn)
            initiate = codec is None
            while True:
                await conn.run(leftover, initiate)
                if conn.handover != http2_migration.WOKEN:
                    break
                rest = await http2_migration.resume(conn)
                if rest is None:
                    owned = False
                    migration_mod.release(sock)
                    stats.downstream_cx_active -= 1
                    stats.downstream_cx_migrated_out += 1
                    return
                leftover, initiate = rest, False
            await conn._flush_quietly()
        except ConnectionLost as exc:
            if log.is_debug():
                log.debug("connection.ended", listener=self.name, reason=repr(exc))
        except trio.Cancelled:
            raise
        except Exception as error:
            stats.downstream_cx_error += 1
            log.error("connection.failed", listener=self.name, error=repr(error), exc_info=error)
        finally:
            if conn is not None:
                self.connections.discard(conn)
            stats.downstream_rx_bytes_total += io.bytes_received
            stats.downstream_tx_bytes_total += io.bytes_sent
            if owned:
                io.close()
                stats.downstream_cx_active -= 1
                stats.downstream_cx_destroy += 1


def _wake(event: trio.Event | None) -> None:
    if event is not None:
        event.set()


__all__ = ["MAX_BACKLOG", "MuxConnection", "MuxServer", "MuxServerStream"]
