"""HTTP/2 upstream connections and their per-host pool: many requests on each connection.

    H2HostPool (per host) ── H2Connection (a socket, a ClientConnection codec, a reader task)
                               └── H2UpstreamRequest per request: the router's UpstreamRequest

- A request goes on a connection with room under the peer's SETTINGS_MAX_CONCURRENT_STREAMS;
  when all are full another connection opens, up to the cluster's max_connections; beyond
  that requests wait (max_pending_requests, then 503 UO), as with HTTP/1.
- GOAWAY: the streams at or below its last id finish; those above it were never processed and
  come back as refused (the router retries them on a fresh connection, like a reused HTTP/1
  connection found closed); no new stream goes to that connection, which closes when empty.
- Flow control: response DATA is acknowledged as the router consumes it, so the upstream's
  window opens as the client drains, not before; a request body waits for our send window.
- A dead connection fails each of its streams (StreamReset); one idle past idle_timeout closes.
- Keepalive (the cluster's http2.keepalive_interval/_timeout, Envoy's connection_keepalive):
  nothing received for the interval sends a PING; nothing at all received within the timeout
  closes the connection (upstream_cx_keepalive_timeout), failing its streams as above. A timer
  task per connection, only when configured: the reader only notes when its last bytes came.
  (Folding the timer into the reader would mean a cancel scope per read, or cancelling it in
  the middle of a send.)

The reader tasks live in the pool manager's nursery (a pooled connection belongs to its pool,
not to the request that opened it).
"""

from __future__ import annotations

import collections
import struct
from typing import TYPE_CHECKING, Any

import trio

from proxy.clock import clock_reader
from proxy.codec import http2, mux
from proxy.codec.http1 import Body, EndOfMessage, Headers, RequestHead, ResponseHead
from proxy.http.codec_io import CodecWriter
from proxy.http.stream import ReusedClosed, StreamReset, UpstreamRequest
from proxy.upstream.pool import open_connection, wait_for_room
from proxy.log import get_logger
from proxy.network.connect import ConnectFailed
from proxy.network.sockio import ConnectionLost, SockIO

if TYPE_CHECKING:
    from proxy.upstream.cluster import Cluster
    from proxy.upstream.host import Host

log = get_logger("pool")

# Streams a connection still connecting is counted on for (RFC 9113 §6.5.2 recommends at least
# 100 concurrent streams; its SETTINGS will say): requests beyond that open another connection.
ASSUMED_STREAMS = 100

_EOM = EndOfMessage()


class H2Connection:
    """One HTTP/2 connection to an upstream host."""

    def __init__(self, pool: H2HostPool, io: SockIO) -> None:
        self.pool = pool
        self.io = io
        self.codec = http2.ClientConnection()
        self.codec.count_into(pool.cluster.stats)
        self.streams: dict[int, H2UpstreamRequest] = {}
        self.flush = CodecWriter(io, self.codec).flush  # (one task at a time sends)
        self.alive = True
        self.going_away = False  # the peer sent GOAWAY: no new streams here
        self.kicked = False  # a flush task is scheduled (kick)
        self.idle_since = pool._now()
        self.last_rx = self.idle_since  # when bytes last came from the peer (keepalive)
        self.keepalive_scope: trio.CancelScope | None = None
        # The peer's first SETTINGS came (or the connection ended): an extended CONNECT waits for
        # it, since only those SETTINGS may allow one (RFC 8441 §3).
        self.settings_seen = trio.Event()
        try:
            name = io.sock.getsockname()
            self.local_address = f"{name[0]}:{name[1]}" if isinstance(name, tuple) else "unix"
        except OSError:
            self.local_address = "-"

    @property
    def has_room(self) -> bool:
        return self.alive and not self.going_away and self.codec.available_streams > 0

    def kick(self) -> None:
        """Flush soon, from the pool's nursery, after a synchronous reset or acknowledge, if
        that queued anything (h2 holds WINDOW_UPDATEs back until half a window is due, so a
        small response queues nothing) and no flush is already on its way: no task per
        response."""
        nursery = self.pool.manager.nursery
        if nursery is not None and self.alive and not self.kicked and self.codec.outbound_backlog():
            self.kicked = True
            nursery.start_soon(self._flush_quietly)

    async def _flush_quietly(self) -> None:
        self.kicked = False
        try:
            await self.flush()
        except ConnectionLost:
            pass

    async def run(self) -> None:
        """The reader: frames in, events to their streams, until the connection ends."""
        codec = self.codec
        now = self.pool._now
        try:
            while True:
                data = await self.io.recv()
                if not data:
                    break
                t = self.last_rx = now()
                try:
                    events = codec.receive(data, t)
                except mux.CodecError as exc:
                    log.info("upstream.protocol_error", host=str(self.pool.host.address), reason=str(exc))
                    break
                for event in events:
                    self._dispatch(event)
                await self.flush()
                if self.going_away and not self.streams:
                    break
        except (ConnectionLost, trio.ClosedResourceError):
            pass  # (closed: by the peer, or by another task, the keepalive or the idle sweeper)
        finally:
            self.close()

    async def keepalive(self, interval: float, timeout: float) -> None:
        """PING the peer once nothing has come from it for `interval`; close the connection if
        nothing (the ACK or any other frame) comes within `timeout` of it."""
        now = self.pool._now
        pings = 0
        with trio.CancelScope() as self.keepalive_scope:  # (cancelled by close)
            while self.alive:
                due = self.last_rx + interval
                if now() < due:
                    await trio.sleep_until(due)
                    continue
                sent = now()
                pings += 1
                self.codec.ping(struct.pack("!Q", pings))
                try:
                    await self.flush()
                except (ConnectionLost, trio.ClosedResourceError):
                    return  # (the reader finds it too and closes)
                await trio.sleep_until(sent + timeout)
                if self.last_rx < sent and self.alive:
                    self.pool.cluster.stats.upstream_cx_keepalive_timeout += 1
                    log.info("upstream.keepalive_timeout", host=str(self.pool.host.address), streams=len(self.streams))
                    self.close()
                    return

    def _dispatch(self, event: Any) -> None:
        kind = type(event)
        if kind is mux.DataReceived or kind is http2.ResponseReceived or kind is mux.TrailersReceived:
            stream = self.streams.get(event.stream_id)
            if stream is None:
                if kind is mux.DataReceived and event.flow_length:
                    self.codec.acknowledge(event.stream_id, event.flow_length)
                return
            stream.inbound.append(event)
            _wake(stream.readable)
        elif kind is mux.StreamReset:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.reset_code = event.error_code
                _wake(stream.readable)
                _wake(stream.window)
        elif kind is mux.WindowOpened:
            targets = self.streams.values() if event.stream_id == 0 else [s for s in (self.streams.get(event.stream_id),) if s]
            for stream in targets:
                _wake(stream.window)
        elif kind is mux.GoAwayReceived:
            self.going_away = True  # (the codec reports the refused streams as resets)
        elif kind is http2.SettingsChanged:
            self.settings_seen.set()
            self.pool.wake_all()  # maybe more room now

    def close(self) -> None:
        if not self.alive:
            return
        self.alive = False
        self.settings_seen.set()  # (a request waiting for them finds the connection gone)
        if self.keepalive_scope is not None:
            self.keepalive_scope.cancel()
        for stream in list(self.streams.values()):
            if stream.reset_code is None:
                stream.reset_code = -1  # the connection is gone
            _wake(stream.readable)
            _wake(stream.window)
        self.io.close()
        self.pool.connection_closed(self)


class H2UpstreamRequest(UpstreamRequest):
    __slots__ = (
        "conn",
        "host",
        "local_address",
        "sid",
        "inbound",
        "readable",
        "window",
        "reset_code",
        "out",
        "ended",
        "response",
        "done",
        "waiting_head",
    )

    def __init__(self, conn: H2Connection) -> None:
        self.conn = conn
        self.host = conn.pool.host
        self.local_address = conn.local_address
        self.sid = 0
        self.inbound: collections.deque[Any] = collections.deque()
        self.readable: trio.Event | None = None
        self.window: trio.Event | None = None
        self.reset_code: int | None = None
        self.out: list[Any] = []
        self.ended = False
        self.response: ResponseHead | None = None
        self.done = False
        self.waiting_head: RequestHead | None = None  # an extended CONNECT, until the peer's SETTINGS

    # -- the request
    def write_request(self, head: RequestHead, body: bytes | None) -> None:
        if head.upgrade is not None:
            body = None  # a CONNECT (or extended CONNECT): the stream stays open for the tunnel
            if head.upgrade != b"connect" and not self.conn.settings_seen.is_set():
                self.waiting_head = head  # opened by flush(), once the SETTINGS say whether it may be
                return
        self._open(head, body)

    def _open(self, head: RequestHead, body: bytes | None) -> None:
        conn = self.conn
        try:
            self.sid = conn.codec.send_request(head, b"http", body is not None and not body and not head.chunked)
        except http2.NoStreamAvailable as exc:
            raise ReusedClosed(f"upstream connection has no stream left: {exc}") from exc
        except ValueError as refused:
            raise StreamReset(f"the request cannot go over HTTP/2: {refused}") from refused
        conn.streams[self.sid] = self
        conn.idle_since = 0.0
        if body is not None:
            if body or head.chunked:
                self.out.append(body)
                self.out.append(_EOM)
            self.ended = True

    def write_data(self, data: bytes) -> None:
        self.out.append(data)

    def write_end(self, trailers: Headers | tuple[()] = ()) -> None:
        self.out.append(list(trailers) if trailers else _EOM)
        self.ended = True

    async def flush(self) -> None:
        if self.waiting_head is not None:
            await self.conn.flush()  # our preface first: an h2c server says nothing before it
            await self.conn.settings_seen.wait()  # (bounded by the route timeout)
            head, self.waiting_head = self.waiting_head, None
            self._open(head, None)
        codec = self.conn.codec
        out, self.out = self.out, []
        for i, item in enumerate(out):
            if type(item) is bytes:
                end = i + 1 < len(out) and out[i + 1] is _EOM
                await self._send_data(item, end)
                if end:
                    break
            elif item is _EOM:
                await self._send_data(b"", True)
            else:
                codec.send_trailers(self.sid, item)
        await self.conn.flush()

    async def _send_data(self, data: bytes, end_stream: bool) -> None:
        codec = self.conn.codec
        while True:
            self._check_reset()
            taken = codec.send_data(self.sid, data, end_stream)
            if taken >= len(data):
                return
            data = data[taken:]
            await self.conn.flush()
            self.window = trio.Event()
            await self.window.wait()

    def _check_reset(self) -> None:
        code = self.reset_code
        if code is None:
            return
        if code == http2.REFUSED_STREAM and self.response is None:
            raise ReusedClosed("the upstream refused the stream (never processed)")
        raise StreamReset("upstream reset the stream" if code >= 0 else "upstream connection lost", max(code, 0))

    # -- the response
    async def _next(self) -> Any:
        inbound = self.inbound
        while not inbound:
            self._check_reset()
            self.readable = trio.Event()
            await self.readable.wait()
        return inbound.popleft()

    async def receive_head(self, reused: bool) -> ResponseHead:
        while True:
            event = await self._next()
            if type(event) is http2.ResponseReceived:
                self.response = event.head
                if event.end_stream:
                    self.inbound.appendleft(_EOM)
                return event.head
            # (1xx are dropped by the codec's InformationalReceived: never queued here)

    def _translate(self, event: Any) -> Any:
        if type(event) is mux.DataReceived:
            if event.flow_length:
                self.conn.codec.acknowledge(self.sid, event.flow_length)  # consumed: open the window
            if event.end_stream:
                self.done = True
                return [Body(event.data), _EOM] if event.data else [_EOM]
            return [Body(event.data)]
        if type(event) is mux.TrailersReceived:
            self.done = True
            return [EndOfMessage(event.trailers)]
        self.done = True  # _EOM
        return [event]

    def buffered(self) -> list[Any]:
        out: list[Any] = []
        while self.inbound:
            out.extend(self._translate(self.inbound.popleft()))
        if out:
            self.conn.kick()  # (window updates)
        return out

    async def receive(self) -> list[Any]:
        out = self._translate(await self._next())
        while self.inbound:
            out.extend(self._translate(self.inbound.popleft()))
        await self.conn.flush()  # window updates go out as we consume
        return out

    def release(self, complete: bool) -> None:
        conn = self.conn
        if self.sid and conn.streams.pop(self.sid, None) is not None:
            if not (complete and self.done) and self.reset_code is None and conn.alive:
                conn.codec.reset(self.sid, mux.CANCEL)  # not wanted any more
                conn.kick()
            for event in self.inbound:  # data never consumed still holds the connection window
                if type(event) is mux.DataReceived and event.flow_length:
                    conn.codec.acknowledge(self.sid, event.flow_length)
        conn.pool.stream_done(conn)


class H2HostPool:
    """One host's HTTP/2 connections: multiplexed, bounded by the cluster's limits."""

    def __init__(self, host: Host, cluster: Cluster, manager: Any) -> None:
        config = cluster.config
        self.host = host
        self.cluster = cluster
        self.manager = manager
        self.connections: list[H2Connection] = []
        self.connecting = 0
        self.connect_failure: ConnectFailed | None = None  # the latest, for those waiting on it
        self.waiters: collections.deque[trio.Event] = collections.deque()
        self.max_connections = config.max_connections
        self.max_pending = config.max_pending_requests
        self.idle_timeout = float(config.idle_timeout)
        h2 = config.http2
        # (interval, timeout) of the PING keepalive; None: off (config sets both or neither)
        self.keepalive: tuple[float, float] | None = None
        if h2.keepalive_interval is not None and h2.keepalive_timeout is not None:
            self.keepalive = (float(h2.keepalive_interval), float(h2.keepalive_timeout))
        self._now = clock_reader()

    @property
    def open(self) -> int:
        return len(self.connections) + self.connecting

    def take_idle(self) -> H2UpstreamRequest | None:
        """A stream on an open connection with room, without awaiting."""
        for conn in self.connections:
            if conn.has_room:
                return H2UpstreamRequest(conn)
        return None

    async def acquire(self, fresh: bool = False) -> tuple[H2UpstreamRequest, bool]:
        """A stream on a connection with room, and whether the connection was open already;
        as the HTTP/1 pool: connect while under max_connections, else wait (max_pending)."""
        while True:
            if not fresh:
                request = self.take_idle()
                if request is not None:
                    return request, True
            if self.connecting and len(self.waiters) < self.connecting * ASSUMED_STREAMS:
                # A connection is on its way and will have room for this one too: wait for it
                # rather than open one per request (a burst would open as many as it has). If
                # it fails, so does this request, with the same reason (as Envoy's pending
                # requests do), rather than each waiter trying again in turn.
                failure = self.connect_failure
                await wait_for_room(self, f"{self.open} HTTP/2 connections, {self.connecting} connecting")
                if self.connect_failure is not failure and self.connect_failure is not None:
                    raise ConnectFailed(self.host, self.connect_failure.reason)
                continue
            if self.open < self.max_connections:
                self.connecting += 1
                try:
                    io = await open_connection(self.host, self.cluster, "http2")
                except ConnectFailed as exc:
                    self.connect_failure = exc
                    self.wake_all()  # those waiting for this connection fail with it
                    raise
                except BaseException:
                    self.wake_waiters()  # (cancelled: the slot it held is free again)
                    raise
                finally:
                    self.connecting -= 1
                return H2UpstreamRequest(self.adopt(io)), False
            await wait_for_room(self, f"{self.open} HTTP/2 connections full")
            fresh = False

    def adopt(self, io: SockIO) -> H2Connection:
        """A new connection on `io` (open_connection's, counted): start it and its tasks."""
        conn = H2Connection(self, io)
        conn.codec.initiate()
        self.connections.append(conn)
        nursery = self.manager.nursery
        if nursery is None:  # pragma: no cover - the pool manager runs in every worker
            raise RuntimeError("HTTP/2 pools need the pool manager's nursery")
        nursery.start_soon(conn.run)
        if self.keepalive is not None:
            nursery.start_soon(conn.keepalive, *self.keepalive)
        self.wake_all()  # a new connection has room for those waiting for it
        return conn

    def stream_done(self, conn: H2Connection) -> None:
        if not conn.streams:
            conn.idle_since = self._now()
            if conn.going_away and conn.alive:
                conn.close()
                return
        self.wake_waiters()

    def wake_waiters(self) -> None:
        if self.waiters:
            self.waiters.popleft().set()

    def wake_all(self) -> None:
        for event in self.waiters:
            event.set()

    def connection_closed(self, conn: H2Connection) -> None:
        if conn in self.connections:
            self.connections.remove(conn)
            self.cluster.stats.upstream_cx_active -= 1
            self.host.stats.cx_active -= 1
        self.wake_waiters()

    def sweep(self, now: float) -> None:
        cutoff = now - self.idle_timeout
        for conn in list(self.connections):
            if not conn.streams and conn.idle_since and conn.idle_since <= cutoff:
                conn.close()

    def close_all(self) -> None:
        for conn in list(self.connections):
            conn.close()

    def snapshot(self) -> dict[str, Any]:
        return {"open": self.open, "idle": sum(1 for c in self.connections if not c.streams), "pending": len(self.waiters), "protocol": "http2"}


def _wake(event: trio.Event | None) -> None:
    if event is not None:
        event.set()
