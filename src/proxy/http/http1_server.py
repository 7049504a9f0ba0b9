"""The HTTP/1.1 downstream codec connection: one task per client connection, no task per request.

Bytes from the client go through the sans-IO parser (proxy.codec.http1); each request head
becomes an `Http1ServerStream` that the router serves inline, one after another, so pipelined
requests get their responses in order by construction. What is HTTP/1's own stays here:
keep-alive and `Connection: close`, response framing (Content-Length, chunked, close-delimited
for HTTP/1.0), the idle and slowloris timeouts, 400/408/413/431 for malformed requests (they
never reach an upstream), upgrades to byte tunnels after `101`, and the hot-upgrade handover.

Deadlines: one cancel scope per connection, cancelled by the listener's watchdog when
`deadline` passes; the deadline moves with the phase (waiting idle, reading a head, waiting on
the upstream) as a plain attribute. A scope per phase, or moving a trio deadline, costs ~4 µs
each (a contextlib manager and a heap update), several times per request: ~9 % of a proxied
request's CPU, measured. When it fires, `phase` says which timeout it was, and the connection
ends with the matching answer (408, 504).

Hot upgrade: a keep-alive connection moves to the next worker generation at its safe point,
waiting for its next request with nothing of one parsed (kind "http1"). Idle ones are woken at
once; busy ones when they get there (the watchdog looks every tick), so an in-flight request
finishes here and no `Connection: close` is added. A request that arrives just as the
connection is woken goes along unparsed (`leftover`). Tunnels move as their relay stops (kind
"tunnel"). A refused connection is served on here. The per-request cost is one attribute test
after the idle receive.
"""

from __future__ import annotations

import socket
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import trio

from proxy.codec import http1
from proxy.codec.http1 import Body, EndOfMessage, Headers, ProtocolError, RequestHead, ResponseHead, Upgraded
from proxy.http import stream_info as flags
from proxy.http.router import Abort, Router
from proxy.http.codec_io import local_address_of, peer_names, send_batch
from proxy.http.stream import ServerStream, UpstreamRequest
from proxy.http.stream_info import StreamInfo
from proxy.http.stream_tunnel import pump_upstream_stream, websocket_accept
from proxy.log import get_logger
from proxy.network import relay as relay_mod
from proxy.network.edge_epoll import wait_readable as _wait_readable
from proxy.network.parking import PARKING
from proxy.network.sockio import ConnectionLost, SockIO
from proxy.upgrade import migration as migration_mod

if TYPE_CHECKING:
    from proxy.http.connection_manager import HttpConnectionManager

log = get_logger("http")

CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
# A connection whose last response the client has not read in this time is not handed over
# in a hot upgrade (it would leave with bytes of ours unsent): it is served on here.
HANDOVER_FLUSH_TIMEOUT = 1.0

_INF = float("inf")
_CHUNKED = (b"transfer-encoding", b"chunked")
_CLOSE = (b"connection", b"close")
_KEEP_ALIVE = (b"connection", b"keep-alive")
_LENGTH_0 = (b"content-length", b"0")

# Connection phases, for what a fired deadline means.
IDLE = 0  # between requests: idle_timeout, close quietly
HEAD = 1  # a head is arriving: request_header_timeout, answer 408
UPSTREAM = 2  # a request is being served: the route timeout, answer 504 (or cut the response)

# A connection in a migration (`Http1Connection.handover`).
STAY = 0  # served here
WANTED = 1  # to be handed over at its next safe point
WOKEN = 2  # its scope was cancelled at the safe point, to hand it over
PARK = 3  # idle for PARK_AFTER: its task ends and its socket waits in proxy.network.parking

# An idle keep-alive connection parks after this long (its task, frames and cancel scope go:
# ~5 kB -> ~1 kB per idle connection); input starts a new task where it stopped, as a hot
# upgrade's adoption does. The watchdog (WATCHDOG_TICK) decides, so parking takes 0.25-0.35 s.
PARK_AFTER = 0.25
PARKED_SCAN_EVERY = 0.5

# How `_serve` ended.
_ENDED = 0
_TUNNEL = 1  # the relay owns the sockets
_HANDOVER = 2


class _Parked:
    """A parked connection: what its next task needs, and when its idle timeout fires."""

    __slots__ = ("sock", "peer", "served", "deadline")

    def __init__(self, sock: socket.socket, peer: Any, served: int, deadline: float) -> None:
        self.sock = sock
        self.peer = peer
        self.served = served
        self.deadline = deadline


def _at_safe_point(dc: Http1Connection) -> bool:
    """Waiting for its next request with nothing of it received (a recv may have brought part
    of it along with the last one): where a connection can be handed over, or parked."""
    return dc.phase == IDLE and not dc.events and dc.parser.between_messages


class _Handover(Exception):
    """A connection marked for a handover received bytes at its safe point: they go along."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.data = data


class Http1Connection:
    """A client connection: socket, parser, parsed events not yet used, and where it stands."""

    __slots__ = (
        "io",
        "parser",
        "events",
        "eof",
        "limits",
        "scope",
        "phase",
        "response_started",
        "deadline",
        "served",
        "leftover",
        "handover",
        "closing",
        "keep_alive",
        "tunnel",
    )

    def __init__(self, io: SockIO, limits: http1.Limits, parser: http1.RequestParser | None = None) -> None:
        self.io = io
        self.limits = limits
        self.parser = parser if parser is not None else http1.RequestParser(limits)
        # A list, not a deque: an empty deque costs 760 bytes (its first block), a third of an
        # idle connection's footprint; the list is short (a head, a body chunk, an end).
        self.events: list[Any] = []
        self.eof = False
        self.scope = trio.CancelScope()  # the connection's one scope (module docstring)
        self.phase = IDLE
        self.response_started = False
        self.deadline = _INF
        # Hot upgrade: requests served so far, bytes received but not fed to the parser (only
        # around a handover), and where the connection stands in a migration (STAY, ...).
        self.served = 0
        self.leftover = b""
        self.handover = STAY
        self.closing = False  # the next response ends the connection (a refused handover)
        self.keep_alive = False  # the request in flight allows another one after it
        self.tunnel = False  # the request in flight became a tunnel

    async def next_event(self) -> Any:
        """The next request event; None at a clean EOF between requests."""
        events = self.events
        while not events:
            if self.eof:
                return None
            data = await self.io.recv()
            if data:
                events.extend(self.parser.feed(data))
            else:
                self.eof = True
                self.parser.feed_eof()  # raises ProtocolError when EOF cuts a request
        return events.pop(0)

    def restart_parser(self, leftover: bytes) -> None:
        """After an upgrade request that did not upgrade, go on parsing HTTP/1.1."""
        self.parser = http1.RequestParser(self.limits)
        if leftover:
            self.events.extend(self.parser.feed(leftover))


class Http1ServerStream(ServerStream):
    """One request on an HTTP/1.1 connection, as the router sees it."""

    __slots__ = ("conn", "server", "out", "chunked", "ended")

    def __init__(self, conn: Http1Connection, server: Http1Server, head: RequestHead, info: StreamInfo, client_ip: str) -> None:
        # ServerStream's fields, inline (one frame per request instead of three)
        self.request = head
        self.response = None
        self.info = info
        self.route = None
        self.downstream_address = client_ip
        self.scheme = b"http" if conn.io.tls is None else b"https"
        self.response_started = False
        self.has_body = head.chunked or bool(head.content_length)
        self.grpc = False
        self.conn = conn
        self.server = server
        self.out: list[bytes] = []  # written, not flushed
        self.chunked = False  # the response body goes out chunked
        self.ended = False  # the response is complete: its flush is the message's end

    async def receive_body(self) -> Body | EndOfMessage:
        event = await self.conn.next_event()
        if event is None:
            raise ConnectionLost("client closed mid-body")
        return event  # type: ignore[no-any-return]

    async def send_continue(self) -> None:
        await self.conn.io.send_all(CONTINUE_100)

    def write_response(self, head: ResponseHead, end_stream: bool) -> None:
        conn = self.conn
        request = self.request
        status = head.status
        headers = head.headers
        keep_alive = conn.keep_alive and not conn.closing and not self.server.manager.draining  # (a drain or an upgrade began meanwhile)
        if request.method == b"HEAD" or status in (204, 304) or status < 200:
            if head.chunked:
                headers.append(_CHUNKED)  # HEAD: say what a GET would get
        elif head.content_length is None:
            if head.chunked or not end_stream:  # a body of unknown length follows
                if request.http_version == b"1.1":
                    self.chunked = True
                    headers.append(_CHUNKED)
                else:
                    keep_alive = False  # HTTP/1.0 knows no chunks: the close ends the body
            else:
                headers.append(_LENGTH_0)  # (an HTTP/2 upstream's head that ended the stream)
        if not keep_alive:
            headers.append(_CLOSE)
        elif request.http_version == b"1.0":
            headers.append(_KEEP_ALIVE)
        conn.keep_alive = keep_alive
        self.ended = end_stream  # (its flush is then the message's end)
        self.out.append(http1.response_head_bytes_11(status, head.reason, headers))
        self.response_started = True
        conn.response_started = True

    def write_data(self, data: bytes) -> None:
        self.out.append(http1.chunk(data) if self.chunked else data)

    def write_end(self, trailers: Headers | tuple[()] = ()) -> None:
        if self.chunked:
            self.out.append(http1.last_chunk(trailers))
        self.ended = True

    async def flush(self) -> None:
        await send_batch(self.conn.io, self.out, self.ended)

    async def respond(self, head: ResponseHead, body: bytes, trailers: Headers | tuple[()] = ()) -> None:
        # (the hot path of a proxied response: one call, one send, with this pass's others)
        self.write_response(head, not body and not trailers)
        out = self.out
        chunked = self.chunked
        if body:
            out.append(http1.chunk(body) if chunked else body)
        if chunked:
            out.append(http1.last_chunk(trailers))
        self.ended = True
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        await self.conn.io.send_soon(data)

    def reply_headers(self, close: bool) -> None:
        # A request body not read (or only partly) would be parsed as the next request:
        # closing is the only safe end then.
        if close or self.has_body:
            self.conn.keep_alive = False

    def set_deadline(self, deadline: float) -> None:
        self.conn.deadline = deadline

    def timed_out(self) -> bool:
        conn = self.conn
        # (`cancel_called` reads the clock: the caller asks only when a cancel came through)
        return conn.phase == UPSTREAM and conn.scope.cancel_called

    async def start_tunnel(self, upstream: UpstreamRequest, response: ResponseHead) -> bool:
        """After 101 (or a CONNECT 2xx): send the head, flush both sides' leftover bytes, then
        hand both sockets to the L4 relay."""
        from proxy.http.http1_upstream import Http1Upstream
        from proxy.http.http2_upstream import H2UpstreamRequest

        if isinstance(upstream, H2UpstreamRequest):
            await self._tunnel_to_stream(upstream, response)
            return True
        if not isinstance(upstream, Http1Upstream):
            return False
        conn = self.conn
        upstream_leftover = b"".join(e.leftover for e in upstream.buffered() if isinstance(e, Upgraded))
        downstream_leftover = b"".join(e.leftover for e in conn.events if isinstance(e, Upgraded))
        conn.events.clear()
        headers = list(response.headers)
        upstream.detach()  # the upstream socket leaves the pool for good (bookkeeping first, then I/O)
        self.response_started = conn.response_started = True
        try:
            await conn.io.send_all(
                http1.response_head_bytes(ResponseHead(response.status, response.reason, b"1.1", headers, True, False, None))
                + upstream_leftover
            )
            if downstream_leftover:
                await upstream.io.send_all(downstream_leftover)
            else:
                await upstream.io.flush()  # the relay writes to this socket next: our bytes first
        except BaseException:
            upstream.io.close()
            raise
        if conn.io.tls is not None or upstream.io.tls is not None:  # TLS either side: opened and sealed, not spliced
            conn.keep_alive = False  # the tunnel is the rest of this connection
            upgrade = http1.header_value(self.request.headers, b"upgrade")
            websocket = response.status == 101 and upgrade is not None and b"websocket" in upgrade.lower()
            await self._pump_tls_tunnel(upstream.io, websocket)
            return True
        self.server.start_relay(conn.io.sock, upstream.io.sock, str(upstream.host.address))
        conn.tunnel = True
        conn.keep_alive = False
        return True

    async def _pump_tls_tunnel(self, up: SockIO, websocket: bool) -> None:
        """A tunnel whose client side is TLS: this request's task copies both ways
        (http/tls_tunnel.py; a WebSocket gets its Close before a drain's deadline). No bytes
        either way for the listener's idle_timeout ends it, as the watchdog cancels the
        connection."""
        from proxy.http.tls_tunnel import pump_tls_tunnel

        server = self.server
        now = server._now
        idle = server.idle_timeout

        def touch() -> None:
            self.set_deadline(now() + idle)

        touch()
        await pump_tls_tunnel(self.conn.io, up, server.manager, touch, websocket)

    async def _tunnel_to_stream(self, upstream: Any, response: ResponseHead) -> None:
        """The upstream is a stream of an HTTP/2 connection (a CONNECT, or a WebSocket as an
        extended CONNECT): no socket to hand the relay, so this request's task pumps the bytes
        (proxy.http.stream_tunnel) until both sides end, then the connection closes. No bytes
        either way for the listener's idle_timeout ends it."""
        conn = self.conn
        downstream_leftover = b"".join(e.leftover for e in conn.events if isinstance(e, Upgraded))
        conn.events.clear()
        headers = list(response.headers)
        key = http1.header_value(self.request.headers, b"sec-websocket-key")
        if response.status == 101 and key is not None and http1.header_value(headers, b"sec-websocket-accept") is None:
            headers.append((b"sec-websocket-accept", websocket_accept(key)))  # (HTTP/2 has no keys)
        self.response_started = conn.response_started = True
        conn.keep_alive = False  # the tunnel is the rest of this connection
        io = conn.io
        now = self.server._now
        idle = self.server.idle_timeout

        async def open_down() -> None:
            await io.send_all(http1.response_head_bytes(ResponseHead(response.status, response.reason, b"1.1", headers, True, False, None)))
            if downstream_leftover:
                upstream.write_data(downstream_leftover)
                await upstream.flush()

        async def receive_down() -> tuple[bytes, bool]:
            data = await io.recv()
            return data, not data

        async def send_down(chunks: list[bytes], end: bool) -> None:
            if chunks:
                await io.send_all(b"".join(chunks))
            if end:
                io.shutdown_write()

        def touch() -> None:
            self.set_deadline(now() + idle)

        await pump_upstream_stream(upstream, open_down, receive_down, send_down, touch)


# Parsers a listener keeps from connections that ended or parked, for the next connection to
# start with (a new one costs 1.15 µs); between messages any parser reads what comes next as a
# fresh one would. Past this many, they are dropped.
SPARE_PARSERS = 64


class Http1Server:
    """A listener's HTTP/1.1 side: serves connections, hands them over, adopts them."""

    def __init__(self, manager: HttpConnectionManager, router: Router, config: Any) -> None:
        http = config.http
        self.manager = manager
        self.router = router
        self.name = config.name
        self.stats = manager.stats
        self.limits = http1.Limits(
            max_request_line=http.max_request_line,
            max_header_bytes=http.max_header_bytes,
            max_header_count=http.max_header_count,
            max_body_bytes=http.max_body_bytes,
        )
        self.header_timeout = float(http.request_header_timeout)
        self.idle_timeout = float(http.idle_timeout)
        self.max_requests = http.max_requests_per_connection
        self.server_name = http.server_name.encode()
        self.tcp = not config.address.is_unix
        # Every connection's local address, when the listener has one specific address (else
        # each connection's getsockname tells: a wildcard or a port 0 listener).
        self.local_address = local_address_of(config.address)
        self.connections: set[Http1Connection] = set()
        self.spare_parsers: list[http1.RequestParser] = []  # (SPARE_PARSERS)
        self.parked: dict[socket.socket, _Parked] = {}
        self._parked_scan_at = 0.0
        self._now = router._now

    # ------------------------------------------------------------------ connection

    def check_deadlines(self, now: float) -> None:
        # Idle since before this (its idle deadline was set when it went idle): park it.
        park_line = now + self.idle_timeout - PARK_AFTER
        parking = not self.manager.draining and not self.manager.migration.active
        for dc in self.connections:
            if dc.deadline <= now:
                dc.scope.cancel()
            elif (
                parking
                and dc.deadline <= park_line
                and dc.handover == STAY
                and dc.io.tls is None  # (a TLS connection cannot park: its state is OpenSSL's)
                and _at_safe_point(dc)
                and not dc.io.unsent
                and not dc.closing
            ):
                dc.handover = PARK
                dc.scope.cancel()
        if self.parked and now >= self._parked_scan_at:
            # Parked connections' idle timeouts, looked at twice a second rather than on every
            # tick (thousands may be parked): they fire up to PARKED_SCAN_EVERY late.
            self._parked_scan_at = now + PARKED_SCAN_EVERY
            for parked in [p for p in self.parked.values() if p.deadline <= now]:
                self._close_parked(parked)

    def drain(self) -> None:
        """Idle keep-alive connections close now; busy ones finish the request in flight and
        answer it with `Connection: close` (Envoy's drain, for HTTP/1.1)."""
        for dc in self.connections:
            if dc.phase == IDLE:
                dc.scope.cancel()
        for parked in list(self.parked.values()):
            self._close_parked(parked)

    # ------------------------------------------------------------------ parking

    def _keep_parser(self, dc: Http1Connection) -> None:
        """The connection is done with its parser (it ended, or parks): a spare, if it can be."""
        if dc.parser.between_messages and len(self.spare_parsers) < SPARE_PARSERS:
            self.spare_parsers.append(dc.parser)

    def _park(self, dc: Http1Connection, peer: Any) -> None:
        """The connection's task is ending idle: its socket waits in the worker's epoll set
        and its next task starts when input comes. Still counted active."""
        sock = dc.io.sock
        if dc.leftover:  # bytes came as it was parked: serve on at once, in a new task
            self.manager.nursery.start_soon(self.connection, sock, peer, dc.served, dc.leftover, False, True)
            return
        parked = _Parked(sock, peer, dc.served, dc.deadline)
        self.parked[sock] = parked
        if not PARKING.park(parked, (sock.fileno(),), lambda: self._unparked(parked), self.manager.nursery, self.stats):
            self._unparked(parked)  # could not park (out of fds): serve on with a task

    def _unparked(self, parked: _Parked) -> None:
        del self.parked[parked.sock]
        self.manager.nursery.start_soon(self.connection, parked.sock, parked.peer, parked.served, b"", False, True)

    def _close_parked(self, parked: _Parked) -> None:
        """Its idle timeout, or a drain: closed quietly, as an idle connection with a task is."""
        sock = parked.sock
        del self.parked[sock]
        PARKING.unpark(parked)
        trio.lowlevel.notify_closing(sock)
        sock.close()
        self.stats.downstream_cx_active -= 1
        self.stats.downstream_cx_destroy += 1

    def wake_parked(self) -> None:
        """A migration begins: parked connections get their tasks back, so that they are
        handed over at once (they are at their safe point)."""
        for parked in list(self.parked.values()):
            PARKING.unpark(parked)
            self._unparked(parked)

    async def connection(
        self,
        sock: socket.socket,
        peer: Any,
        served: int = 0,
        leftover: bytes = b"",
        accepted: bool = True,
        unparked: bool = False,
        tls_io: SockIO | None = None,
    ) -> None:
        """Serve one client connection (accepted: counted in downstream_cx_total here; or
        adopted with `served` requests already served and `leftover` bytes to parse first;
        or unparked: counted active still) until it ends or moves on. `tls_io`: a TlsIO whose
        handshake is done (connection_manager); such a connection is never parked nor handed
        over (its TLS state is OpenSSL's), it drains."""
        stats = self.stats
        manager = self.manager
        if accepted:
            stats.downstream_cx_total += 1
        if not unparked:
            stats.downstream_cx_active += 1
        io: SockIO = SockIO(sock) if tls_io is None else tls_io
        owned = True  # False once a tunnel or the next worker generation owns the socket
        try:
            remote, client_ip, local = peer_names(sock, peer, self.tcp, self.local_address)
            spare = self.spare_parsers
            dc = Http1Connection(io, self.limits, spare.pop() if spare else None)
            dc.served = served
            dc.leftover = leftover
            # Accepted while a migration runs: straight over, nothing read yet.
            outcome = _HANDOVER if manager.migration.active and tls_io is None else _ENDED
            while True:
                if outcome != _HANDOVER:
                    self.connections.add(dc)
                    try:
                        with dc.scope:
                            outcome = await self._serve(dc, remote, client_ip, local)
                    except _Handover as wake:
                        dc.leftover = wake.data
                        outcome = _HANDOVER
                    finally:
                        self.connections.discard(dc)
                    if dc.scope.cancelled_caught:
                        if dc.handover == WOKEN or dc.handover == PARK:
                            outcome = _HANDOVER  # woken at the safe point, not a timeout
                        elif await self._timed_out(dc):
                            # a 504 for a request read in full: the connection serves on
                            dc.scope = trio.CancelScope()
                            dc.deadline = _INF
                            outcome = _ENDED
                            continue
                if outcome == _TUNNEL:
                    owned = False
                    return
                if outcome != _HANDOVER:
                    # The last response may still be queued (send_soon): sent now if the
                    # kernel takes it, else within a bound (a client that reads nothing).
                    if io.unsent and not io.flush_now():
                        with trio.move_on_after(self.idle_timeout):
                            await io.flush()
                    self._keep_parser(dc)
                    return
                if dc.handover == PARK:
                    owned = False
                    self._keep_parser(dc)
                    self._park(dc, peer)
                    return
                if await self._hand_over(dc):
                    owned = False
                    migration_mod.release(sock)
                    stats.downstream_cx_active -= 1
                    stats.downstream_cx_migrated_out += 1
                    return
                # Refused: serve on here. If the migration goes on (the new generation just
                # cannot take this one), the next response closes it so this worker can exit;
                # if the new generation died, this worker is current again: nothing changes.
                dc.handover = STAY
                dc.closing = manager.migration.active
                dc.scope = trio.CancelScope()
                outcome = _ENDED
        except ConnectionLost as exc:
            if log.is_debug():
                log.debug("connection.ended", listener=self.name, reason=repr(exc))
        except trio.Cancelled:
            raise
        except Exception as error:
            stats.downstream_cx_error += 1
            log.error("connection.failed", listener=self.name, error=repr(error), exc_info=error)
        finally:
            stats.downstream_rx_bytes_total += io.bytes_received
            stats.downstream_tx_bytes_total += io.bytes_sent
            if owned:
                io.close()
                stats.downstream_cx_active -= 1
                stats.downstream_cx_destroy += 1

    async def _serve(self, dc: Http1Connection, remote: str, client_ip: str, local: str) -> int:
        """Serve requests until the connection ends: _ENDED, or _TUNNEL if it became a tunnel
        (the relay owns the sockets then). A handover leaves by _Handover or a cancel."""
        served = dc.served
        if dc.leftover:  # adopted, or a refused handover: bytes that came with the connection
            leftover, dc.leftover = dc.leftover, b""
            try:
                dc.events.extend(dc.parser.feed(leftover))
            except ProtocolError as exc:
                await self._protocol_error(dc, exc, remote, local)
                return _ENDED
        router = self.router
        manager = self.manager
        max_requests = self.max_requests
        while True:
            try:
                head = await self._read_head(dc)
            except ProtocolError as exc:
                await self._protocol_error(dc, exc, remote, local)
                return _ENDED
            except (trio.Cancelled, _Handover):
                dc.served = served  # (for a handover)
                raise
            if head is None:
                return _ENDED
            served += 1
            # One request: the router serves it; keep-alive is this connection's to decide.
            dc.keep_alive = (
                head.keep_alive and not manager.draining and not dc.closing and (max_requests is None or served < max_requests)
            )
            dc.served = served  # survives a 504 that keeps the connection (and travels in a handover)
            dc.response_started = False
            if not (head.chunked or head.content_length):
                events = dc.events  # its EndOfMessage came with the head: take it
                if events and type(events[0]) is EndOfMessage:
                    events.pop(0)
            info = StreamInfo(head, self.name, remote, local)
            info.tls = dc.io.tls
            stream = Http1ServerStream(dc, self, head, info, client_ip)
            try:
                await router.serve(stream)
            except Abort:
                return _ENDED
            # Nothing of this request may stay alive while the connection idles: its head,
            # response and stream info were ~3 kB per idle keep-alive connection.
            del stream, head
            if dc.tunnel:
                return _TUNNEL
            if not dc.keep_alive:
                return _ENDED

    async def _read_head(self, dc: Http1Connection) -> RequestHead | None:
        """Wait for the next request head: up to idle_timeout for its first byte, then up to
        request_header_timeout for the rest (slowloris). None when the client is done."""
        events = dc.events
        if not events:
            if dc.parser.between_messages:
                dc.deadline = self._now() + self.idle_timeout
                dc.phase = IDLE
            else:  # part of a head came with the connection (read by the TLS inspector, or in a handover)
                dc.deadline = self._now() + self.header_timeout
                dc.phase = HEAD
            io = dc.io
            # After a response the client's next request cannot be here yet: wait, then read.
            # The waits are trio's own around SockIO's non-blocking recv, not SockIO.recv's:
            # one coroutine level fewer on the wait every request makes (~0.5 % of its
            # instructions, bench_http1_sockets.py under callgrind).
            if dc.response_started:
                await _wait_readable(io.sock)
            data = io.recv_ready()
            while data is None:
                await _wait_readable(io.sock)
                data = io.recv_ready()
            if dc.handover and dc.parser.between_messages:
                raise _Handover(data)  # the safe point of a migration: these bytes go along, unparsed
            while True:
                if not data:
                    dc.eof = True
                    dc.parser.feed_eof()  # raises ProtocolError when EOF cuts a head
                    return None
                events.extend(dc.parser.feed(data))
                if events:
                    break
                if dc.phase == IDLE:  # a head is arriving in pieces: the slowloris clock starts
                    dc.phase = HEAD
                    dc.deadline = self._now() + self.header_timeout
                data = await io.recv()
        event = events.pop(0)
        if type(event) is Upgraded:
            # The previous request asked to upgrade and did not (h2c, or a refused upgrade that
            # kept the connection): its leftover bytes are plain HTTP/1.1 again.
            dc.restart_parser(event.leftover)
            return await self._read_head(dc)
        if type(event) is not RequestHead:  # pragma: no cover - codec bug
            raise ProtocolError("expected a request head")
        dc.phase = UPSTREAM  # (the deadline stays until the route sets its timeout)
        return event

    async def _timed_out(self, dc: Http1Connection) -> bool:
        """The connection's deadline fired: answer as its phase says. True if the connection
        may go on: a 504 for a request whose bytes were all read (as Envoy keeps it open);
        after a 408, a cut response or a half-read body the connection ends."""
        if dc.phase == HEAD:
            self.stats.downstream_rq_header_timeout += 1
            await self._send_quietly(dc, self._local_reply_bytes(408, b"request header timeout", close=True))
        elif dc.phase == UPSTREAM and not dc.response_started:
            go_on = dc.keep_alive and not self.manager.draining and not dc.events and dc.parser.between_messages
            await self._send_quietly(dc, self._local_reply_bytes(504, b"upstream request timeout", close=not go_on))
            return go_on
        return False

    async def _protocol_error(self, dc: Http1Connection, exc: ProtocolError, remote: str, local: str) -> None:
        """A malformed request: answer its 4xx, close, and log it; nothing reaches an upstream."""
        self.stats.downstream_rq_protocol_error += 1
        status = getattr(exc, "status", 400)
        log.info("request.rejected", listener=self.name, peer=remote, status=status, reason=str(exc))
        info = StreamInfo(None, self.name, remote, local)
        info.add_flag(flags.DOWNSTREAM_PROTOCOL_ERROR)
        info.response_code = status
        body = HTTPStatus(status).phrase.lower().encode()
        info.bytes_sent = len(body)
        await self._send_quietly(dc, self._local_reply_bytes(status, body, close=True))
        self.router.count_status(status)
        self.router.log_access(info)

    async def _send_quietly(self, dc: Http1Connection, data: bytes) -> None:
        try:
            with trio.move_on_after(5):
                await dc.io.send_all(data)
        except ConnectionLost:
            pass

    def _local_reply_bytes(self, status: int, body: bytes, close: bool) -> bytes:
        """A reply of the connection's own (400, 408, 504): no filters, no route."""
        headers = [(b"server", self.server_name), (b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        if close:
            headers.append(_CLOSE)
        return http1.response_head_bytes_11(status, b"", headers) + body

    # ------------------------------------------------------------------ tunnels

    def start_relay(self, down: socket.socket, up: socket.socket, host: str) -> None:
        manager = self.manager
        relay = relay_mod.Relay(
            down, up, splice=relay_mod.HAVE_SPLICE, idle_timeout=self.idle_timeout, on_close=manager.tunnel_closed, stats=self.stats
        )
        manager.tunnels[relay] = host
        if manager.migration.active:
            relay.stop(manager.tunnel_handover(host))  # opened during a migration: over at once
        manager.nursery.start_soon(relay.run, manager.nursery)

    # ------------------------------------------------------------------ hot upgrade

    def mark_for_handover(self) -> None:
        for dc in self.connections:
            if dc.io.tls is None:
                dc.handover = WANTED
            else:  # TLS stays here (OpenSSL holds its state): it ends as in a drain
                dc.closing = True  # the response in flight says Connection: close
                if dc.phase == IDLE:
                    dc.scope.cancel()  # idle: closed now (close_notify)

    def wake_for_handover(self) -> None:
        """Wake each connection waiting at its safe point (`_at_safe_point`)."""
        for dc in self.connections:
            if dc.handover == WANTED and _at_safe_point(dc):
                dc.handover = WOKEN
                dc.scope.cancel()

    async def _hand_over(self, dc: Http1Connection) -> bool:
        manager = self.manager
        migration = manager.migration
        if not migration.active or manager.draining:
            return False
        if dc.io.unsent:  # the socket leaves with nothing of ours unsent, or stays
            with trio.move_on_after(HANDOVER_FLUSH_TIMEOUT):
                await dc.io.flush()
            if dc.io.unsent:
                return False
        state = {"served": dc.served, "leftover": migration_mod.b64e(dc.leftover)}
        return await migration.hand_over("http1", self.name, [dc.io.sock], state)

