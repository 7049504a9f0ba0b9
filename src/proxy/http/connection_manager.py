"""The HTTP/1.1 connection manager: one task per downstream connection, no task per request.

Per request: parse the head (httptools codec) → request filters → route → cluster → host (the
cluster's balancer) → pooled upstream connection → send head and stream the body → read the
response → response filters → stream it back → access log. Requests on one connection are
served in order, so pipelined requests get their responses in order by construction.

Errors become local replies with an Envoy response flag (see stream_info); a malformed request
gets its 4xx and the connection closes; it never reaches an upstream. After a `101` (WebSocket
or another upgrade the route allows) both directions become a byte tunnel on the L4 relay.

Hot upgrade (`start_migration`): a keep-alive connection moves to the next worker generation at
its safe point, waiting for its next request with nothing of one parsed (kind "http1"). Idle
ones are woken at once; busy ones when they get there (the watchdog looks every tick), so an
in-flight request finishes here and no `Connection: close` is added. A request that arrives
just as the connection is woken goes along unparsed (`leftover`). Tunnels move as their relay
stops (kind "tunnel"). A refused connection is served on here. The per-request cost is one
attribute test after the idle receive.
"""

from __future__ import annotations

import collections
import socket
from http import HTTPStatus
from typing import Any

import trio

from proxy.clock import clock_reader
from proxy.codec import http1
from proxy.codec.http1 import Body, EndOfMessage, ProtocolError, RequestHead, ResponseHead, Upgraded
from proxy.http import stream_info as flags
from proxy.http.access_log import AccessLogger
from proxy.http.filter import FilterChain, LocalReply, Stream
from proxy.http.stream_info import StreamInfo
from proxy.log import get_logger
from proxy.network import relay as relay_mod
from proxy.network.connect import ConnectFailed
from proxy.network.listener import bound_address
from proxy.network.sockio import ConnectionLost, SockIO
import random

from proxy.router.retry import RetryState
from proxy.router.route_table import choose_cluster, mutate_headers, redirect_location, rewrite_path
from proxy.stats import ListenerStats
from proxy.upgrade import migration as migration_mod
from proxy.upstream.cluster import Cluster
from proxy.upstream.pool import PoolManager, PoolOverflow, UpstreamConnection

log = get_logger("http")

CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
# A request body up to this size is buffered when the route retries, so it can be replayed.
MAX_REPLAY_BODY = 64 * 1024
# How often the watchdog looks for connections past their deadline (idle, header, route).
WATCHDOG_TICK = 0.1
# A connection whose last response the client has not read in this time is not handed over
# in a hot upgrade (it would leave with bytes of ours unsent): it is served on here.
HANDOVER_FLUSH_TIMEOUT = 1.0


class _Downstream:
    """Reading side of a client connection: socket, parser and parsed events not yet used."""

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
    )

    def __init__(self, io: SockIO, limits: http1.Limits) -> None:
        self.io = io
        self.limits = limits
        self.parser = http1.RequestParser(limits)
        self.events: collections.deque[Any] = collections.deque()
        self.eof = False
        # One cancel scope for the whole connection, cancelled by the listener's watchdog when
        # `deadline` passes; the deadline moves with the phase (waiting idle, reading a head,
        # waiting on the upstream) as a plain attribute. A scope per phase, or moving a trio
        # deadline, costs ~4 µs each (a contextlib manager and a heap update), several times
        # per request: ~9 % of a proxied request's CPU, measured. When it fires, `phase` says
        # which timeout it was, and the connection ends with the matching answer (408, 504).
        self.scope = trio.CancelScope()
        self.phase = _IDLE
        self.response_started = False
        self.deadline = _INF
        # Hot upgrade: requests served so far, bytes received but not fed to the parser (only
        # around a handover), and where the connection stands in a migration (_STAY, ...).
        self.served = 0
        self.leftover = b""
        self.handover = _STAY
        self.closing = False  # the next response ends the connection (a refused handover)
        self.keep_alive = False  # the request in flight allows another one after it

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
        return events.popleft()

    def restart_parser(self, leftover: bytes) -> None:
        """After an upgrade request that did not upgrade, go on parsing HTTP/1.1."""
        self.parser = http1.RequestParser(self.limits)
        if leftover:
            self.events.extend(self.parser.feed(leftover))


_INF = float("inf")
_UPSTREAM_DROP = http1.HOP_BY_HOP | {b"expect"}
_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})

# Connection phases, for what a fired deadline means.
_IDLE = 0  # between requests: idle_timeout, close quietly
_HEAD = 1  # a head is arriving: request_header_timeout, answer 408
_UPSTREAM = 2  # a request is being served: the route timeout, answer 504 (or cut the response)

# A connection in a migration (`_Downstream.handover`).
_STAY = 0  # served here
_WANTED = 1  # to be handed over at its next safe point
_WOKEN = 2  # its scope was cancelled at the safe point, to hand it over

# How `_serve` ended.
_CLOSE = 0
_TUNNEL = 1  # the relay owns the sockets
_HANDOVER = 2


class _Handover(Exception):
    """A connection marked for a handover received bytes at its safe point: they go along."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.data = data


class _Abort(Exception):
    """Stop serving this connection: the response was cut midway, or the peer is gone."""


class _UpstreamFailure(Exception):
    """One upstream attempt failed before a response head; `outcome` is what retry policies see."""

    def __init__(self, outcome: str, flag: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.flag = flag


class HttpConnectionManager:
    def __init__(
        self,
        config: Any,
        route_table: Any,
        clusters: dict[str, Cluster],
        pools: PoolManager,
        chain: FilterChain,
        access_logs: list[AccessLogger],
        stats: ListenerStats,
        connection_nursery: trio.Nursery,
    ) -> None:
        http = config.http
        self.name = config.name
        self.routes = route_table
        self.clusters = clusters
        self.pools = pools
        self.chain = chain
        self.access_logs = access_logs
        self.stats = stats
        self.nursery = connection_nursery
        self.limits = http1.Limits(
            max_request_line=http.max_request_line,
            max_header_bytes=http.max_header_bytes,
            max_header_count=http.max_header_count,
            max_body_bytes=http.max_body_bytes,
        )
        self.header_timeout = float(http.request_header_timeout)
        self.idle_timeout = float(http.idle_timeout)
        self.max_requests = http.max_requests_per_connection
        self.via = http.via.encode() if http.via else None
        self.forwarded = http.forwarded_headers
        self.request_id = http.request_id
        self.server_name = http.server_name.encode()
        self.tcp = not config.address.is_unix
        self.connections: set[_Downstream] = set()
        self.draining = False
        self.migration: migration_mod.Migration = migration_mod.NO_MIGRATION
        self.tunnels: dict[relay_mod.Relay, str | None] = {}  # live tunnels and their upstream host
        # The run's clock, read directly: trio.current_time() gets there through three Python
        # calls (~0.6 µs), and a request reads it several times.
        self._now = clock_reader()

    # ------------------------------------------------------------------ connection

    def drain(self) -> None:
        """Graceful stop: idle keep-alive connections close now; busy ones finish the request
        in flight and answer it with `Connection: close` (Envoy's drain, for HTTP/1.1)."""
        self.draining = True
        for dc in self.connections:
            if dc.phase == _IDLE:
                dc.scope.cancel()

    async def run_watchdog(self) -> None:
        """Cancel each connection whose deadline has passed. Runs for the worker's life (in the
        root nursery: it must not hold up a drain). Timeouts fire within WATCHDOG_TICK late."""
        connections = self.connections
        while True:
            await trio.sleep(WATCHDOG_TICK)
            now = trio.current_time()
            for dc in connections:
                if dc.deadline <= now:
                    dc.scope.cancel()
            if self.migration.active:
                self._wake_for_handover()

    async def handle(self, sock: socket.socket, peer: Any) -> None:
        self.stats.downstream_cx_total += 1
        await self._connection(sock, peer, 0, b"")

    async def _connection(self, sock: socket.socket, peer: Any, served: int, leftover: bytes) -> None:
        """Serve one client connection (accepted, or adopted with `served` requests already
        served and `leftover` bytes to parse first) until it ends or moves on."""
        stats = self.stats
        stats.downstream_cx_active += 1
        io = SockIO(sock)
        owned = True  # False once a tunnel or the next worker generation owns the socket
        try:
            if self.tcp:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            remote = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix"
            client_ip = peer[0] if isinstance(peer, tuple) else "unix"
            local = _sockname(sock)
            dc = _Downstream(io, self.limits)
            dc.served = served
            dc.leftover = leftover
            # Accepted while a migration runs: straight over, nothing read yet.
            outcome = _HANDOVER if self.migration.active else _CLOSE
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
                        if dc.handover == _WOKEN:
                            outcome = _HANDOVER  # woken at the safe point, not a timeout
                        elif await self._timed_out(dc):
                            # a 504 for a request read in full: the connection serves on
                            dc.scope = trio.CancelScope()
                            dc.deadline = _INF
                            outcome = _CLOSE
                            continue
                if outcome == _TUNNEL:
                    owned = False
                    return
                if outcome != _HANDOVER:
                    if io.unsent:  # the last response may still be queued (send_soon)
                        with trio.move_on_after(self.idle_timeout):  # a client that reads nothing
                            await io.flush()
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
                dc.handover = _STAY
                dc.closing = self.migration.active
                dc.scope = trio.CancelScope()
                outcome = _CLOSE
        except (ConnectionLost, _Abort) as exc:
            if log.is_debug():
                log.debug("connection.ended", listener=self.name, reason=repr(exc))
        except trio.Cancelled:
            raise
        except Exception as exc:
            stats.downstream_cx_error += 1
            log.error("connection.failed", listener=self.name, error=repr(exc), exc_info=exc)
        finally:
            stats.downstream_rx_bytes_total += io.bytes_received
            stats.downstream_tx_bytes_total += io.bytes_sent
            if owned:
                io.close()
                stats.downstream_cx_active -= 1
                stats.downstream_cx_destroy += 1

    async def _serve(self, dc: _Downstream, remote: str, client_ip: str, local: str) -> int:
        """Serve requests until the connection ends: _CLOSE, or _TUNNEL if it became a tunnel
        (the relay owns the sockets then). A handover leaves by _Handover or a cancel."""
        served = dc.served
        if dc.leftover:  # adopted, or a refused handover: bytes that came with the connection
            leftover, dc.leftover = dc.leftover, b""
            try:
                dc.events.extend(dc.parser.feed(leftover))
            except ProtocolError as exc:
                await self._protocol_error(dc, exc, remote, local)
                return _CLOSE
        while True:
            try:
                head = await self._read_head(dc)
            except ProtocolError as exc:
                await self._protocol_error(dc, exc, remote, local)
                return _CLOSE
            except (trio.Cancelled, _Handover):
                dc.served = served  # (for a handover)
                raise
            if head is None:
                return _CLOSE
            served += 1
            keep_alive, tunnel = await self._handle_request(dc, head, remote, client_ip, local, served)
            if tunnel:
                return _TUNNEL
            if not keep_alive:
                return _CLOSE

    async def _read_head(self, dc: _Downstream) -> RequestHead | None:
        """Wait for the next request head: up to idle_timeout for its first byte, then up to
        request_header_timeout for the rest (slowloris). None when the client is done."""
        events = dc.events
        if not events:
            dc.deadline = self._now() + self.idle_timeout
            dc.phase = _IDLE
            io = dc.io
            # After a response the client's next request cannot be here yet: wait, then read.
            data = await (io.recv_reply() if dc.response_started else io.recv())
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
                if dc.phase == _IDLE:  # a head is arriving in pieces: the slowloris clock starts
                    dc.phase = _HEAD
                    dc.deadline = self._now() + self.header_timeout
                data = await io.recv()
        event = events.popleft()
        if isinstance(event, Upgraded):
            # The previous request asked to upgrade and did not (h2c, or a refused upgrade that
            # kept the connection): its leftover bytes are plain HTTP/1.1 again.
            dc.restart_parser(event.leftover)
            return await self._read_head(dc)
        if not isinstance(event, RequestHead):  # pragma: no cover - codec bug
            raise ProtocolError("expected a request head")
        dc.phase = _UPSTREAM  # (the deadline stays until the route sets its timeout)
        return event

    async def _timed_out(self, dc: _Downstream) -> bool:
        """The connection's deadline fired: answer as its phase says. True if the connection
        may go on: a 504 for a request whose bytes were all read (as Envoy keeps it open);
        after a 408, a cut response or a half-read body the connection ends."""
        if dc.phase == _HEAD:
            self.stats.downstream_rq_header_timeout += 1
            await self._send_quietly(dc, self._local_reply_bytes(408, b"request header timeout", close=True))
        elif dc.phase == _UPSTREAM and not dc.response_started:
            go_on = dc.keep_alive and not self.draining and not dc.events and dc.parser.between_messages
            await self._send_quietly(dc, self._local_reply_bytes(504, b"upstream request timeout", close=not go_on))
            return go_on
        return False

    async def _protocol_error(self, dc: _Downstream, exc: ProtocolError, remote: str, local: str) -> None:
        """A malformed request: answer its 4xx, close, and log it; nothing reaches an upstream."""
        self.stats.downstream_rq_protocol_error += 1
        status = getattr(exc, "status", 400)
        log.info("request.rejected", listener=self.name, peer=remote, status=status, reason=str(exc))
        info = StreamInfo(None, self.name, remote, local)
        info.add_flag(flags.DOWNSTREAM_PROTOCOL_ERROR)
        info.response_code = status
        await self._send_quietly(dc, self._local_reply_bytes(status, HTTPStatus(status).phrase.lower().encode(), close=True))
        self._count_status(status)
        self._log_access(info)

    async def _send_quietly(self, dc: _Downstream, data: bytes) -> None:
        try:
            with trio.move_on_after(5):
                await dc.io.send_all(data)
        except ConnectionLost:
            pass

    # ------------------------------------------------------------------ hot upgrade

    def start_migration(self, migration: migration_mod.Migration) -> None:
        """Hand every live connection over to the next generation, each at its safe point:
        idle keep-alive connections now, busy ones once their response is out (the watchdog
        wakes them), tunnels as their relay stops. Connections accepted from now on go
        straight over."""
        self.migration = migration
        for dc in self.connections:
            dc.handover = _WANTED
        for relay, host in list(self.tunnels.items()):
            relay.stop(self._tunnel_handover(host))
        self._wake_for_handover()

    def _wake_for_handover(self) -> None:
        """Wake each connection waiting at its safe point: between requests, nothing of the
        next one received (a recv may have brought part of it along with the last request)."""
        if self.draining:
            return
        for dc in self.connections:
            if dc.handover == _WANTED and dc.phase == _IDLE and not dc.events and dc.parser.between_messages:
                dc.handover = _WOKEN
                dc.scope.cancel()

    async def _hand_over(self, dc: _Downstream) -> bool:
        migration = self.migration
        if not migration.active or self.draining:
            return False
        if dc.io.unsent:  # the socket leaves with nothing of ours unsent, or stays
            with trio.move_on_after(HANDOVER_FLUSH_TIMEOUT):
                await dc.io.flush()
            if dc.io.unsent:
                return False
        state = {"served": dc.served, "leftover": migration_mod.b64e(dc.leftover)}
        return await migration.hand_over("http1", self.name, [dc.io.sock], state)

    async def adopt(self, sock: socket.socket, state: dict[str, Any]) -> None:
        """The new generation's side of an "http1" handover: serve the connection as if just
        accepted, `served` requests already counted and the `leftover` bytes parsed first."""
        try:
            served = int(state["served"])
            leftover = migration_mod.b64d(state["leftover"])
            sock.setblocking(False)
        except (KeyError, TypeError, ValueError, OSError) as exc:  # a bad state, or a dead socket
            self._adopt_failed(exc, sock)
            return
        try:
            peer: Any = sock.getpeername()
        except OSError:
            peer = ""  # the client is already gone; the first read will tell
        self.stats.downstream_cx_migrated_in += 1
        await self._connection(sock, peer, served, leftover)

    async def adopt_tunnel(self, down: socket.socket, up: socket.socket, state: dict[str, Any]) -> None:
        """The new generation's side of a "tunnel" handover: relay on, carried bytes first."""
        try:
            carried = relay_mod.carried(state)
            host = state.get("host")
            down.setblocking(False)
            up.setblocking(False)
        except (KeyError, TypeError, ValueError, OSError) as exc:  # a bad state, or a dead socket
            self._adopt_failed(exc, down, up)
            return
        stats = self.stats
        stats.downstream_cx_active += 1
        stats.downstream_cx_migrated_in += 1
        relay = relay_mod.Relay(down, up, splice=relay_mod.HAVE_SPLICE, idle_timeout=self.idle_timeout, on_close=self._tunnel_closed, **carried)
        self.tunnels[relay] = host
        if self.migration.active:
            relay.stop(self._tunnel_handover(host))
        await relay.run(self.nursery)

    def _adopt_failed(self, exc: Exception, *socks: socket.socket) -> None:
        self.stats.downstream_cx_error += 1
        log.error("connection.adopt_failed", listener=self.name, error=repr(exc), exc_info=exc)
        for sock in socks:
            trio.lowlevel.notify_closing(sock)
            sock.close()

    def _tunnel_handover(self, host: str | None) -> relay_mod.Handover:
        migration = self.migration
        name = self.name

        async def hand_over(relay: relay_mod.Relay) -> bool:
            if self.draining:
                return False
            state = {"host": host, **relay.migration_state()}
            return await migration.hand_over("tunnel", name, [relay.down, relay.up], state)

        return hand_over

    def _tunnel_closed(self, relay: relay_mod.Relay) -> None:
        self.tunnels.pop(relay, None)
        relay_mod.count_downstream_close(self.stats, relay)

    # ------------------------------------------------------------------ one request

    async def _handle_request(
        self, dc: _Downstream, head: RequestHead, remote: str, client_ip: str, local: str, served: int
    ) -> tuple[bool, bool]:
        """Serve one request; returns (keep the connection alive, became a tunnel)."""
        stats = self.stats
        stats.downstream_rq_total += 1
        stats.downstream_rq_active += 1
        info = StreamInfo(head, self.name, remote, local)
        stream = Stream(head, info, client_ip)
        bytes_before = (dc.io.bytes_received, dc.io.bytes_sent)
        keep_alive = head.keep_alive and not self.draining and not dc.closing and (self.max_requests is None or served < self.max_requests)
        dc.keep_alive = keep_alive
        dc.served = served  # survives a 504 that keeps the connection (and travels in a handover)
        tunnel = cancelled = False
        dc.response_started = False
        if not (head.chunked or head.content_length):
            events = dc.events  # its EndOfMessage came with the head: take it
            if events and isinstance(events[0], EndOfMessage):
                events.popleft()
        try:
            keep_alive, tunnel = await self._proxy(dc, stream, keep_alive)
        except ProtocolError as exc:
            # The request body turned out malformed midway: nothing more can be trusted.
            info.add_flag(flags.DOWNSTREAM_PROTOCOL_ERROR)
            stats.downstream_rq_protocol_error += 1
            if info.response is None:
                status = getattr(exc, "status", 400)
                info.response_code = status
                await self._send_quietly(dc, self._local_reply_bytes(status, str(exc).encode(), close=True))
            keep_alive = False
        except ConnectionLost:
            info.add_flag(flags.DOWNSTREAM_CONNECTION_TERMINATION)
            keep_alive = False
        except _Abort:
            keep_alive = False
        except trio.Cancelled:
            cancelled = True
            raise
        except Exception as exc:
            # A bug, not the peer's fault: answer 500 if nothing was sent yet, log, and close.
            log.error("request.failed", listener=self.name, error=repr(exc), exc_info=exc)
            stats.downstream_cx_error += 1
            if info.response is None:
                info.response_code = 500
                await self._send_quietly(dc, self._local_reply_bytes(500, b"internal error", close=True))
            keep_alive = False
        finally:
            # (`cancel_called` reads the clock: ask only when a cancel came through)
            if cancelled and dc.phase == _UPSTREAM and dc.scope.cancel_called:
                # The route timeout fired (answered after the scope exits, in _timed_out).
                info.add_flag(flags.UPSTREAM_TIMEOUT)
                cluster = self.clusters.get(info.cluster)
                if cluster is not None:
                    cluster.stats.upstream_rq_timeout += 1
                if not dc.response_started:
                    info.response_code = 504
            stats.downstream_rq_active -= 1
            info.bytes_received = dc.io.bytes_received - bytes_before[0]
            info.bytes_sent = dc.io.bytes_sent - bytes_before[1]
            self._count_status(info.response_code)
            info.finish()
            stats.downstream_rq_time.observe(info.duration * 1000)
            if info.upstream_service_time is not None:
                cluster = self.clusters.get(info.cluster)
                if cluster is not None:
                    cluster.stats.upstream_rq_time.observe(info.upstream_service_time * 1000)
            if self.access_logs:
                self._log_access(info)
        return keep_alive, tunnel

    async def _proxy(self, dc: _Downstream, stream: Stream, keep_alive: bool) -> tuple[bool, bool]:
        head = stream.request
        info = stream.info
        host, path, query = _request_target(head)
        if self.request_id:
            rid = http1.header_value(head.headers, b"x-request-id")
            if rid is None:
                rid = _new_request_id()
                head.headers.append((b"x-request-id", rid))
            info.request_id = rid.decode("latin-1")

        upgrade = head.upgrade
        if upgrade == b"h2c":
            upgrade = None  # never forwarded: serve it as plain HTTP/1.1 (RFC 9113 dropped h2c)

        reply = await self.chain.run_request(stream) if self.chain.request else None
        match = None
        if reply is None:
            match = self.routes.match(head.method, host, path, query, head.headers, info)
            if match is None:
                reply = LocalReply(404, b"no route", flag=flags.NO_ROUTE)
            else:
                stream.route = match
                info.route_name = match.route.name or ""
                reply = self._route_local_reply(match, head, host, path, query, upgrade)
        if reply is not None:
            return await self._send_local_reply(dc, stream, reply, keep_alive, upgrade), False

        route = match.route
        cluster_name = choose_cluster(route, head.headers, _rng)
        cluster = self.clusters.get(cluster_name) if cluster_name else None
        if cluster is None:
            reply = LocalReply(503, b"unknown cluster", flag=flags.NO_HEALTHY_UPSTREAM)
            return await self._send_local_reply(dc, stream, reply, keep_alive, upgrade), False
        info.cluster = cluster.name

        up_head = self._upstream_head(stream, match, host, path, query, upgrade)
        try:
            return await self._forward(dc, stream, cluster, route, up_head, keep_alive, upgrade)
        except _LocalReplyRaised as raised:  # a body filter answered locally
            return await self._send_local_reply(dc, stream, raised.reply, False, upgrade), False

    async def _forward(
        self, dc: _Downstream, stream: Stream, cluster: Cluster, route: Any, up_head: RequestHead, keep_alive: bool, upgrade: bytes | None
    ) -> tuple[bool, bool]:
        """Send the request upstream (with retries when the route has them and the body can be
        replayed), then relay the response."""
        head = stream.request
        info = stream.info
        has_body = head.chunked or bool(head.content_length)
        body: bytes | None = b"" if not has_body else None
        if has_body and route.retry is not None and head.content_length is not None and head.content_length <= MAX_REPLAY_BODY:
            body = await self._read_body(dc, stream, expect=head.expect_continue)
        retry = RetryState(route.retry, body_replayable=body is not None) if route.retry is not None else None

        deadline = self._now() + route.timeout if route.timeout else _INF
        dc.deadline = deadline  # the route timeout: fires into _timed_out (504)
        fresh = False
        reply: LocalReply | None = None
        while True:
            info.attempts += 1
            try:
                conn, response, events = await self._attempt(dc, stream, cluster, up_head, body, route, fresh, body is not None)
                if retry is not None and retry.policy.retriable(response.status):
                    if await self._retry(retry, response.status, cluster, deadline):
                        self.pools.pool(conn.host, cluster).release(conn, False)  # its body is not wanted
                        continue
                    if retry.retries:
                        info.add_flag(flags.RETRY_LIMIT_EXCEEDED)
                break
            except _UpstreamFailure as failure:
                if failure.outcome == "reused-closed" and not fresh:
                    # The pooled connection died while idle: one more try on a new one.
                    cluster.stats.upstream_cx_reused_closed += 1
                    fresh = True
                    continue
                if retry is not None and await self._retry(retry, failure.outcome, cluster, deadline):
                    continue
                if retry is not None and retry.retries:
                    info.add_flag(flags.RETRY_LIMIT_EXCEEDED)
                reply = LocalReply(_failure_status(failure.flag), str(failure).encode(), flag=failure.flag)
            return await self._send_local_reply(dc, stream, reply, keep_alive, upgrade), False
        return await self._relay_response(dc, stream, cluster, conn, response, events, keep_alive, upgrade)

    async def _retry(self, retry: RetryState, outcome: int | str, cluster: Cluster, deadline: float) -> bool:
        """Grant a retry if the policy allows one and its back-off ends before the deadline."""
        if outcome == "reused-closed":
            outcome = "reset"
        if not retry.should_retry(outcome):
            if retry.retries:
                cluster.stats.upstream_rq_retry_exhausted += 1
            return False
        backoff = retry.next_backoff()
        if trio.current_time() + backoff >= deadline:
            return False
        cluster.stats.upstream_rq_retry += 1
        await trio.sleep(backoff)
        return True

    def _route_local_reply(self, match: Any, head: RequestHead, host: bytes, path: bytes, query: bytes, upgrade: bytes | None) -> LocalReply | None:
        route = match.route
        if route.direct_response is not None:
            direct = route.direct_response
            return LocalReply(direct.status, direct.body, list(direct.headers))
        if route.redirect is not None:
            code, location = redirect_location(route, b"http", host, path, query)
            return LocalReply(code, b"", [(b"location", location)])
        if head.method == b"CONNECT" and not route.allow_connect:
            return LocalReply(403, b"CONNECT not allowed", flag=flags.LOCAL_RESET, close=True)
        if upgrade is not None and upgrade != b"connect" and upgrade not in route.allow_upgrades:
            return LocalReply(403, b"upgrade not allowed", close=True)
        return None

    def _upstream_head(self, stream: Stream, match: Any, host: bytes, path: bytes, query: bytes, upgrade: bytes | None) -> RequestHead:
        """The request as the upstream gets it, built in one pass over the client's headers:
        hop-by-hop fields (and those Connection names) dropped, Expect dropped (the proxy
        answers 100-continue itself), X-Forwarded-* and Via set, Host rewritten if asked."""
        head = stream.request
        drop = _UPSTREAM_DROP
        for name, value in head.headers:
            if len(name) == 10 and name.lower() == b"connection":
                named = {t.strip().lower() for t in value.split(b",")}
                named.discard(b"")
                drop = drop | named
        forwarded = self.forwarded
        route = match.route
        host_rewrite = route.host_rewrite
        headers = []
        xff = None
        has_host = has_forwarded_host = False
        for field in head.headers:
            lname = field[0].lower()
            if lname in drop:
                continue
            if lname == b"host":
                if host_rewrite is not None:
                    continue
                has_host = True
            elif forwarded and lname in _FORWARDED:
                if lname == b"x-forwarded-for":
                    xff = field[1] if xff is None else xff + b", " + field[1]
                    continue
                if lname == b"x-forwarded-proto":
                    continue
                has_forwarded_host = True  # kept as the client sent it
            headers.append(field)
        if host_rewrite is not None:
            headers.insert(0, (b"host", host_rewrite))
        elif not has_host and host:
            headers.insert(0, (b"host", host))
        if upgrade is not None and upgrade != b"connect":
            headers.append((b"connection", b"upgrade"))
            headers.append((b"upgrade", http1.header_value(head.headers, b"upgrade") or upgrade))
        if head.chunked:
            headers.append((b"transfer-encoding", b"chunked"))
        if forwarded:
            ip = stream.downstream_address.encode()
            headers.append((b"x-forwarded-for", xff + b", " + ip if xff else ip))
            headers.append((b"x-forwarded-proto", b"http"))
            if host and not has_forwarded_host:
                headers.append((b"x-forwarded-host", host))
        if self.via:
            _append_header(headers, b"via", self.via)
        target = path + b"?" + query if query else path
        if route.prefix_rewrite is not None or route.regex_rewrite is not None:
            target = rewrite_path(route, target)
        # Positional: a slotted dataclass built with keywords costs ~0.4 µs more.
        return RequestHead(head.method, target, b"1.1", headers, True, head.chunked, head.content_length, False, upgrade)

    async def _read_body(self, dc: _Downstream, stream: Stream, expect: bool) -> bytes:
        """Buffer the whole request body (small bodies of retried routes)."""
        if expect:
            await dc.io.send_all(CONTINUE_100)
        parts = []
        while True:
            event = await dc.next_event()
            if isinstance(event, Body):
                data = event.data
                if self.chain.request_body:
                    result = await self.chain.run_request_body(stream, data, False)
                    if isinstance(result, LocalReply):
                        raise _LocalReplyRaised(result)
                    data = result
                parts.append(data)
            elif isinstance(event, EndOfMessage):
                return b"".join(parts)
            elif event is None:
                raise ConnectionLost("client closed mid-body")

    async def _attempt(
        self,
        dc: _Downstream,
        stream: Stream,
        cluster: Cluster,
        up_head: RequestHead,
        body: bytes | None,
        route: Any,
        fresh: bool,
        retry_on_reuse: bool,
    ) -> tuple[UpstreamConnection, ResponseHead, collections.deque[Any]]:
        """One try: pick a host, get a connection, send the request, read the response head."""
        info = stream.info
        host = cluster.balancer.choose()
        if host is None:
            raise _UpstreamFailure("connect-failure", flags.NO_HEALTHY_UPSTREAM, "no healthy upstream")
        pool = self.pools.pool(host, cluster)
        try:
            conn = None if fresh else pool.take_idle()
            if conn is not None:
                reused = True
            else:
                conn, reused = await pool.acquire(fresh)
        except ConnectFailed as exc:
            host.stats.cx_connect_fail += 1
            cluster.stats.upstream_cx_connect_fail += 1
            raise _UpstreamFailure("connect-failure", flags.UPSTREAM_CONNECT_FAILURE, f"upstream connect error: {exc.reason}") from exc
        except PoolOverflow as exc:
            raise _UpstreamFailure("overflow", flags.UPSTREAM_OVERFLOW, "upstream overflow") from exc
        info.upstream_host = str(host.address)
        info.upstream_local_address = conn.local_address
        cstats = cluster.stats
        cstats.upstream_rq_total += 1
        cstats.upstream_rq_active += 1
        try:
            start = self._now()
            if route.request_mutations:
                # Applied per try, once the host is known: values may say %upstream_host%.
                up_head = _with_headers(up_head, list(up_head.headers))
                mutate_headers(up_head.headers, route.request_mutations, lambda template: template.render_bytes(info))
            head_bytes = http1.request_head_bytes(up_head)
            conn.parser.start(up_head.method)
            if body is not None:  # the whole request: out with this pass's other sends
                if body or up_head.chunked:
                    head_bytes += http1.chunk(body) + http1.last_chunk() if up_head.chunked else body
                await conn.io.send_soon(head_bytes)
            else:
                await conn.io.send_all(head_bytes)
                await self._stream_request_body(dc, stream, conn, up_head)
            per_try = route.retry.per_try_timeout if route.retry is not None else None
            if per_try is None:
                response, events = await self._read_response_head(conn, reused and retry_on_reuse)
            else:
                with trio.CancelScope(deadline=trio.current_time() + per_try) as scope:
                    response, events = await self._read_response_head(conn, reused and retry_on_reuse)
                if scope.cancelled_caught:
                    cstats.upstream_rq_per_try_timeout += 1
                    raise _UpstreamFailure("timeout", flags.UPSTREAM_TIMEOUT, "upstream per-try timeout")
            info.upstream_service_time = self._now() - start
            return conn, response, events
        except BaseException as exc:
            pool.release(conn, False)  # whatever went wrong, this connection is not reused
            if isinstance(exc, (ConnectionLost, http1.ProtocolError)):
                cstats.upstream_rq_reset += 1
                if isinstance(exc, _ReusedClosed):
                    raise _UpstreamFailure("reused-closed", flags.UPSTREAM_CONNECTION_TERMINATION, "upstream closed a reused connection") from exc
                flag = flags.UPSTREAM_PROTOCOL_ERROR if isinstance(exc, http1.ProtocolError) else flags.UPSTREAM_CONNECTION_TERMINATION
                raise _UpstreamFailure("reset", flag, "upstream connect error or disconnect/reset before headers") from exc
            raise
        finally:
            cstats.upstream_rq_active -= 1

    async def _stream_request_body(self, dc: _Downstream, stream: Stream, conn: UpstreamConnection, up_head: RequestHead) -> None:
        head = stream.request
        if not (head.chunked or head.content_length):
            return
        if head.expect_continue:
            await dc.io.send_all(CONTINUE_100)
        chunked = up_head.chunked
        filters = self.chain.request_body
        while True:
            event = await dc.next_event()
            if isinstance(event, Body):
                data = event.data
                if filters:
                    result = await self.chain.run_request_body(stream, data, False)
                    if isinstance(result, LocalReply):
                        raise _LocalReplyRaised(result)
                    data = result
                if data:
                    await conn.io.send_all(http1.chunk(data) if chunked else data)
            elif isinstance(event, EndOfMessage):
                if chunked:
                    await conn.io.send_all(http1.last_chunk(event.trailers))
                return
            else:
                raise ConnectionLost("client closed mid-body")

    async def _read_response_head(self, conn: UpstreamConnection, reused: bool) -> tuple[ResponseHead, collections.deque[Any]]:
        events: collections.deque[Any] = collections.deque()
        got_any = False
        while True:
            while events:
                event = events.popleft()
                if isinstance(event, ResponseHead):
                    if 100 <= event.status < 200 and event.status != 101:
                        continue  # 100-continue was answered by us; other 1xx are dropped (Envoy)
                    return event, events
            try:
                data = await (conn.io.recv() if got_any else conn.io.recv_reply())
            except ConnectionLost:
                if reused and not got_any:
                    raise _ReusedClosed() from None
                raise
            if not data:
                if reused and not got_any:
                    raise _ReusedClosed()
                events.extend(conn.parser.feed_eof())
                if not events:
                    raise ConnectionLost("upstream closed before a response")
                continue
            got_any = True
            events.extend(conn.parser.feed(data))

    async def _relay_response(
        self,
        dc: _Downstream,
        stream: Stream,
        cluster: Cluster,
        conn: UpstreamConnection,
        response: ResponseHead,
        events: collections.deque[Any],
        keep_alive: bool,
        upgrade: bytes | None,
    ) -> tuple[bool, bool]:
        info = stream.info
        pool = self.pools.pool(conn.host, cluster)
        request = stream.request
        stream.response = response
        info.response = response
        try:
            if self.chain.response:
                await self.chain.run_response(stream)
            tunnel = response.status == 101 and upgrade is not None
            if tunnel or (request.method == b"CONNECT" and 200 <= response.status < 300):
                tunnel_conn, conn = conn, None  # the relay owns the upstream socket from here
                return await self._start_tunnel(dc, stream, cluster, tunnel_conn, response, events)

            headers = http1.strip_hop_by_hop(response.headers)
            _mutate_response(stream, headers)
            if self.via:
                _append_header(headers, b"via", self.via)
            no_body = request.method == b"HEAD" or response.status in (204, 304) or response.status < 200
            close_delimited = not no_body and response.content_length is None and not response.chunked
            downstream_chunked = close_delimited and request.http_version == b"1.1" or (response.chunked and not no_body)
            if response.chunked and no_body:
                headers.append((b"transfer-encoding", b"chunked"))  # HEAD: say what a GET would get
            if downstream_chunked:
                headers.append((b"transfer-encoding", b"chunked"))
            if close_delimited and not downstream_chunked:
                keep_alive = False
            if self.draining:
                keep_alive = False  # the drain began while this request was in flight
            if not keep_alive:
                headers.append((b"connection", b"close"))
            elif request.http_version == b"1.0":
                headers.append((b"connection", b"keep-alive"))
            info.response_code = response.status
            head_bytes = http1.response_head_bytes_11(response.status, response.reason, headers)
            dc.response_started = True
            body_filters = self.chain.response_body
            pending = head_bytes
            while True:
                while events:
                    event = events.popleft()
                    if isinstance(event, Body):
                        data = event.data
                        if body_filters:
                            data = await self.chain.run_response_body(stream, data, False)
                        if data:
                            piece = http1.chunk(data) if downstream_chunked else data
                            if pending:
                                pending += piece
                            else:
                                await dc.io.send_all(piece)
                    elif isinstance(event, EndOfMessage):
                        tail = http1.last_chunk(event.trailers) if downstream_chunked else b""
                        if pending or tail:  # the response's end: out with this pass's other sends
                            await dc.io.send_soon(pending + tail if pending else tail)
                        pool.release(conn, response.keep_alive and not close_delimited)
                        conn = None  # type: ignore[assignment]
                        return keep_alive, False
                if pending:
                    await dc.io.send_all(pending)
                    pending = b""
                try:
                    data = await conn.io.recv()
                    if data:
                        events.extend(conn.parser.feed(data))
                    else:
                        events.extend(conn.parser.feed_eof())
                        if not events:
                            raise ConnectionLost("upstream closed mid-response")
                except (ConnectionLost, http1.ProtocolError) as exc:
                    # The upstream broke mid-response: the client cannot be told cleanly; cut it.
                    info.add_flag(flags.UPSTREAM_CONNECTION_TERMINATION)
                    log.debug("response.aborted", listener=self.name, error=repr(exc))
                    raise _Abort() from exc
        except ConnectionLost:
            info.add_flag(flags.DOWNSTREAM_CONNECTION_TERMINATION)  # the client went away
            raise _Abort() from None
        finally:
            if conn is not None:
                pool.release(conn, False)

    async def _start_tunnel(
        self,
        dc: _Downstream,
        stream: Stream,
        cluster: Cluster,
        conn: UpstreamConnection,
        response: ResponseHead,
        events: collections.deque[Any],
    ) -> tuple[bool, bool]:
        """After 101 (or a CONNECT 2xx): send the head, flush both sides' leftover bytes, then
        hand both sockets to the L4 relay."""
        info = stream.info
        info.response_code = response.status
        upstream_leftover = b"".join(e.leftover for e in events if isinstance(e, Upgraded))
        downstream_leftover = b"".join(e.leftover for e in dc.events if isinstance(e, Upgraded))
        dc.events.clear()
        headers = list(response.headers)
        # The upstream socket leaves the pool for good (bookkeeping first, then I/O).
        self.pools.pool(conn.host, cluster).detach(conn)
        dc.response_started = True
        try:
            await dc.io.send_all(
                http1.response_head_bytes(ResponseHead(response.status, response.reason, b"1.1", headers, True, False, None))
                + upstream_leftover
            )
            if downstream_leftover:
                await conn.io.send_all(downstream_leftover)
            else:
                await conn.io.flush()  # the relay writes to this socket next: our bytes first
        except BaseException:
            conn.io.close()
            raise
        relay = relay_mod.Relay(dc.io.sock, conn.io.sock, splice=relay_mod.HAVE_SPLICE, idle_timeout=self.idle_timeout, on_close=self._tunnel_closed)
        host = str(conn.host.address)
        self.tunnels[relay] = host
        if self.migration.active:
            relay.stop(self._tunnel_handover(host))  # opened during a migration: over at once
        self.nursery.start_soon(relay.run, self.nursery)
        return False, True

    # ------------------------------------------------------------------ local replies

    async def _send_local_reply(self, dc: _Downstream, stream: Stream, reply: LocalReply, keep_alive: bool, upgrade: bytes | None) -> bool:
        info = stream.info
        head = stream.request
        if reply.flag:
            info.add_flag(reply.flag)
        self.stats.downstream_rq_local_reply += 1
        # The client may still be sending a body we will not read: closing is the only safe end,
        # unless it is small and already here... keep it simple and correct: close.
        # A request body we have not read (or only partly) would be parsed as the next request:
        # closing is the only safe end then.
        body_pending = head.chunked or bool(head.content_length)
        close = reply.close or not keep_alive or body_pending or upgrade is not None or self.draining
        info.response_code = reply.status
        body = b"" if head.method == b"HEAD" else reply.body
        headers = list(reply.headers)
        _mutate_response(stream, headers)
        response = ResponseHead(reply.status, b"", b"1.1", headers, not close, False, len(reply.body))
        stream.response = response
        info.response = response
        if self.chain.response:
            await self.chain.run_response(stream)
        dc.response_started = True
        await dc.io.send_soon(self._local_reply_bytes(reply.status, reply.body, close=close, headers=response.headers, send_body=body))
        return not close

    def _local_reply_bytes(
        self, status: int, body: bytes, close: bool, headers: list[tuple[bytes, bytes]] | None = None, send_body: bytes | None = None
    ) -> bytes:
        out = [(b"server", self.server_name)]
        names = {n.lower() for n, _ in headers} if headers else set()
        if body and b"content-type" not in names:
            out.append((b"content-type", b"text/plain"))
        out.append((b"content-length", str(len(body)).encode()))
        if headers:
            out.extend(headers)
        if close:
            out.append((b"connection", b"close"))
        head = ResponseHead(status, b"", b"1.1", out, not close, False, len(body))
        return http1.response_head_bytes(head) + (body if send_body is None else send_body)

    # ------------------------------------------------------------------ bookkeeping

    def _count_status(self, status: int) -> None:
        stats = self.stats
        codes = stats.downstream_rq_code
        codes[status] = codes.get(status, 0) + 1
        klass = status // 100
        if klass == 2:
            stats.downstream_rq_2xx += 1
        elif klass == 4:
            stats.downstream_rq_4xx += 1
        elif klass == 5:
            stats.downstream_rq_5xx += 1
        elif klass == 3:
            stats.downstream_rq_3xx += 1
        elif klass == 1:
            stats.downstream_rq_1xx += 1

    def _log_access(self, info: StreamInfo) -> None:
        for logger in self.access_logs:
            logger.log(info)


class _ReusedClosed(ConnectionLost):
    pass


class _LocalReplyRaised(Exception):
    def __init__(self, reply: LocalReply) -> None:
        super().__init__(reply.status)
        self.reply = reply


_rng = random.Random()


def _new_request_id() -> bytes:
    """A random UUID-shaped id. uuid4() reads os.urandom per call (a syscall, ~17 % of a
    direct-response request's CPU); a request id needs uniqueness, not secrecy."""
    h = _rng.getrandbits(128).to_bytes(16, "big").hex()  # 0.67 µs; an f"{:032x}" 0.94
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}".encode()


def _mutate_response(stream: Stream, headers: list[tuple[bytes, bytes]]) -> None:
    """The matched route's response header adds and removes (route, vhost, table levels)."""
    match = stream.route
    if match is not None and match.route.response_mutations:
        info = stream.info
        mutate_headers(headers, match.route.response_mutations, lambda template: template.render_bytes(info))


def _with_headers(head: RequestHead, headers: list[tuple[bytes, bytes]]) -> RequestHead:
    return RequestHead(
        method=head.method,
        target=head.target,
        http_version=head.http_version,
        headers=headers,
        keep_alive=head.keep_alive,
        chunked=head.chunked,
        content_length=head.content_length,
        expect_continue=head.expect_continue,
        upgrade=head.upgrade,
    )


def _failure_status(flag: str) -> int:
    if flag in (flags.UPSTREAM_OVERFLOW, flags.NO_HEALTHY_UPSTREAM):
        return 503
    if flag == flags.UPSTREAM_TIMEOUT:
        return 504
    return 502


def _request_target(head: RequestHead) -> tuple[bytes, bytes, bytes]:
    """(host, path, query) of a request: Host header, or the authority of an absolute-form target."""
    target = head.target
    host = http1.header_value(head.headers, b"host") or b""
    if target[:1] != b"/":
        if b"://" in target:
            scheme_end = target.index(b"://") + 3
            slash = target.find(b"/", scheme_end)
            authority = target[scheme_end:] if slash < 0 else target[scheme_end:slash]
            target = b"/" if slash < 0 else target[slash:]
            host = authority.rpartition(b"@")[2] or host
        elif head.method == b"CONNECT":
            return target, b"/", b""  # authority-form: routes match CONNECT as path "/"
    path, _, query = target.partition(b"?")
    return host, path, query


def _append_header(headers: list[tuple[bytes, bytes]], name: bytes, value: bytes) -> None:
    for i, (n, v) in enumerate(headers):
        if n.lower() == name:
            headers[i] = (n, v + b", " + value)
            return
    headers.append((name, value))


def _sockname(sock: socket.socket) -> str:
    try:
        return bound_address(sock)
    except OSError:
        return "-"
