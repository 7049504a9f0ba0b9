"""The HTTP connection manager of one listener: codec connections above, one router below.

    accept ─► HttpConnectionManager.handle ─► downstream codec connection (http1_server, ...)
                                                 └─► Router.serve(stream)  (proxy.http.router)

It owns what is the listener's rather than a connection's: the router (route table, filters,
clusters, pools, access logs, stats), the watchdog that fires deadlines, the drain, the live
byte tunnels, and the hot-upgrade migration that moves connections to the next generation
(each codec knows its own safe point; see http1_server). The path of one request, whatever
the protocol, is in proxy.http.router; the stream API between them in proxy.http.stream.
"""

from __future__ import annotations

import socket
from typing import Any

import trio

from proxy.http import codecs, http2_migration
from proxy.http.access_log import AccessLogger
from proxy.http.filter import FilterChain
from proxy.http.http1_server import HANDOVER_FLUSH_TIMEOUT, Http1Connection, Http1Server
from proxy.http.multiplex import MuxServer
from proxy.http.router import Router
from proxy.log import get_logger
from proxy.network import relay as relay_mod
from proxy.stats import ListenerStats
from proxy.upgrade import migration as migration_mod
from proxy.upstream.cluster import Cluster
from proxy.upstream.pool import PoolManager

__all__ = ["HANDOVER_FLUSH_TIMEOUT", "WATCHDOG_TICK", "HttpConnectionManager"]

log = get_logger("http")

# How often the watchdog looks for connections past their deadline (idle, header, route).
WATCHDOG_TICK = 0.1
# The HTTP/2 connection preface (RFC 9113 §3.4): on a `protocol: http` listener, a client that
# starts with it speaks HTTP/2 (prior knowledge); any other first bytes are HTTP/1.1.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


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
        self.name = config.name
        self.stats = stats
        self.nursery = connection_nursery
        self.idle_timeout = float(config.http.idle_timeout)
        self.pools = pools
        self.clusters = clusters
        self.router = Router(config, route_table, clusters, pools, chain, access_logs, stats)
        self.http1 = Http1Server(self, self.router, config)
        # A multiplexed codec (proxy.http.codecs) when the listener names one; `http` serves
        # HTTP/1.1 and HTTP/2 on one port, told apart by the connection preface.
        self.mux: MuxServer | None = None
        self.detect = config.protocol == codecs.AUTO_HTTP
        self.header_timeout = float(config.http.request_header_timeout)
        if config.protocol != codecs.HTTP1:
            self.mux = MuxServer(self, self.router, config, codecs.server_codec_factory(config))
        self.draining = False
        self.drain_started = trio.Event()
        self.drain_deadline: float | None = None
        self.migration: migration_mod.Migration = migration_mod.NO_MIGRATION
        self.tunnels: dict[relay_mod.Relay, str | None] = {}  # live tunnels and their upstream host
        # TLS termination: the handshake first, then ALPN (or the protocol) picks the codec.
        self.tls: Any = None
        self.tls_side: Any = None  # network.tls_accept.ListenerTlsSide: handshakes, rotation
        self.tls_watch: Any = None  # network.tls_watch.CertificateWatcher (rotation), with TLS
        if config.tls is not None:
            from proxy.network.tls_accept import ListenerTlsSide  # (pyOpenSSL only where a listener has TLS)

            self.tls_side = ListenerTlsSide(config, stats, self.name)
            self.tls = self.tls_side.tls
            self.tls_watch = self.tls_side.watch
        self.protocol = config.protocol
        if self.mux is None and self.tls is None:
            # A plain HTTP/1.1 listener: the accept loop starts the HTTP/1 server's connection
            # directly, one coroutine frame (360 bytes per idle connection) fewer than handle.
            self.handle = self.http1.connection  # type: ignore[method-assign]

    @property
    def connections(self) -> set[Http1Connection]:
        """The live client connections being served (not the tunnels)."""
        return self.http1.connections

    # ------------------------------------------------------------------ connection

    def drain(self, deadline: float | None = None) -> None:
        """Graceful stop: idle keep-alive connections close now; busy ones finish the request
        in flight and answer it with `Connection: close` (Envoy's drain, for HTTP/1.1).
        `deadline`: when what is still open is cut (a WebSocket over TLS sends its Close
        before it: http/tls_tunnel.py)."""
        self.drain_deadline = deadline
        self.drain_started.set()
        self.draining = True
        self.router.draining = True
        self.http1.drain()
        if self.mux is not None:
            self.mux.drain()

    async def run_watchdog(self) -> None:
        """Cancel each connection whose deadline has passed. Runs for the worker's life (in the
        root nursery: it must not hold up a drain). Timeouts fire within WATCHDOG_TICK late."""
        await run_watchdogs([self])

    def check_deadlines(self, now: float) -> None:
        """One look of the watchdog."""
        http1 = self.http1
        mux = self.mux
        http1.check_deadlines(now)
        if mux is not None:
            mux.check_deadlines(now)
            if self.migration is not migration_mod.NO_MIGRATION:
                http2_migration.check(mux, now)
        if self.migration.active and not self.draining:
            http1.wake_for_handover()

    async def handle(self, sock: socket.socket, peer: Any) -> None:
        self.stats.downstream_cx_total += 1
        if self.tls is not None:
            await self._handle_tls(sock, peer)
        elif self.detect:
            if await self._speaks_h2(sock):
                await self.mux.connection(sock, peer)  # type: ignore[union-attr]
            else:
                await self.http1.connection(sock, peer, accepted=False)
        else:
            await self.mux.connection(sock, peer)  # type: ignore[union-attr]

    async def serve(self, sock: socket.socket, peer: Any, first: bytes) -> None:
        """A connection of this manager's filter chain (network/chain_dispatch: inspected and
        counted already); `first`: the bytes read, served first (the TLS session's, or the
        HTTP codec's)."""
        if self.tls is not None:
            await self._handle_tls(sock, peer, first)  # (its TlsIO counts `first` as received)
            return
        self.stats.downstream_rx_bytes_total += len(first)  # (read by the inspector, not the codec's SockIO)
        if self.detect:
            h2, first = await self._read_h2_preface(sock, first)
            if h2:
                await self.mux.connection(sock, peer, leftover=first)  # type: ignore[union-attr]
            else:
                await self.http1.connection(sock, peer, leftover=first, accepted=False)
        elif self.mux is not None:
            await self.mux.connection(sock, peer, leftover=first)
        else:
            await self.http1.connection(sock, peer, leftover=first, accepted=False)

    async def _read_h2_preface(self, sock: socket.socket, first: bytes) -> tuple[bool, bytes]:
        """`_speaks_h2` for bytes read already: whether they start the HTTP/2 preface, and all
        the bytes read (more are read, and consumed, while they are a part of one)."""
        with trio.move_on_after(self.header_timeout):
            while H2_PREFACE.startswith(first[: len(H2_PREFACE)]) and len(first) < len(H2_PREFACE):
                await trio.lowlevel.wait_readable(sock)
                try:
                    more = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    break
                if not more:
                    break
                first += more
        return first.startswith(H2_PREFACE), first

    async def _handle_tls(self, sock: socket.socket, peer: Any, first: bytes = b"") -> None:
        try:
            done = await self.tls_side.handshake(sock, first)
        except Exception as error:  # a bug of ours: it ends this connection, not the listener
            self.stats.downstream_cx_error += 1
            log.error("connection.failed", listener=self.name, error=repr(error), exc_info=error)
            done = None
        if done is None:
            self._close_unserved(sock)
            return
        io, early = done
        alpn = io.tls.alpn
        if self.mux is not None and (alpn == "h2" or (alpn is None and self.protocol == codecs.HTTP2)):
            await self.mux.connection(sock, peer, io=io, leftover=early)
        else:
            await self.http1.connection(sock, peer, leftover=early, accepted=False, tls_io=io)

    def _close_unserved(self, sock: socket.socket) -> None:
        """A connection that ends before its codec connection began."""
        self.stats.downstream_cx_destroy += 1
        trio.lowlevel.notify_closing(sock)
        sock.close()

    async def _speaks_h2(self, sock: socket.socket) -> bool:
        """Peek at the first bytes (nothing is consumed): the HTTP/2 preface, or not. A client
        that sends nothing, or stops midway through a preface, is left to HTTP/1's timeouts."""
        with trio.move_on_after(self.header_timeout):
            while True:
                await trio.lowlevel.wait_readable(sock)
                try:
                    first = sock.recv(len(H2_PREFACE), socket.MSG_PEEK)
                except BlockingIOError:
                    continue
                except OSError:
                    return False
                if not first or not H2_PREFACE.startswith(first):
                    return False
                if len(first) == len(H2_PREFACE):
                    return True
                await trio.sleep(0.005)  # part of a preface: wait for the rest
        return False

    # ------------------------------------------------------------------ hot upgrade

    def start_migration(self, migration: migration_mod.Migration) -> None:
        """Hand every live connection over to the next generation, each at its safe point:
        idle keep-alive connections now, busy ones once their response is out (the watchdog
        wakes them), tunnels as their relay stops. Connections accepted from now on go
        straight over."""
        self.migration = migration
        self.http1.mark_for_handover()
        self.http1.wake_parked()  # at their safe point already: their new tasks hand them over
        if self.mux is not None:
            # HTTP/2 connections move at their idle point; other multiplexed codecs drain
            # (GOAWAY): their streams finish here, their clients reconnect.
            http2_migration.start(self.mux)
        for relay, host in list(self.tunnels.items()):
            relay.stop(self.tunnel_handover(host))
        if not self.draining:
            self.http1.wake_for_handover()

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
        await self.http1.connection(sock, peer, served, leftover, accepted=False)

    def adopt_http2(self, sock: socket.socket, state: dict[str, Any]) -> Any:
        """The new generation's side of an "http2" handover: the codec is rebuilt from its
        state now (a state this release cannot read raises: refused); returns the function
        that serves it, or None if this listener serves no HTTP/2 any more."""
        return http2_migration.adopter(self, sock, state)

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
        relay = relay_mod.Relay(
            down, up, splice=relay_mod.HAVE_SPLICE, idle_timeout=self.idle_timeout, on_close=self.tunnel_closed, stats=self.stats, **carried
        )
        self.tunnels[relay] = host
        if self.migration.active:
            relay.stop(self.tunnel_handover(host))
        await relay.run(self.nursery)

    def _adopt_failed(self, exc: Exception, *socks: socket.socket) -> None:
        self.stats.downstream_cx_error += 1
        log.error("connection.adopt_failed", listener=self.name, error=repr(exc), exc_info=exc)
        for sock in socks:
            trio.lowlevel.notify_closing(sock)
            sock.close()

    def tunnel_handover(self, host: str | None) -> relay_mod.Handover:
        migration = self.migration
        name = self.name

        async def hand_over(relay: relay_mod.Relay) -> bool:
            if self.draining:
                return False
            state = {"host": host, **relay.migration_state()}
            return await migration.hand_over("tunnel", name, [relay.down, relay.up], state)

        return hand_over

    def tunnel_closed(self, relay: relay_mod.Relay) -> None:
        self.tunnels.pop(relay, None)
        relay_mod.count_downstream_close(self.stats, relay)


async def run_watchdogs(managers: list[HttpConnectionManager]) -> None:
    """The watchdog of several managers (a listener's filter chains), in one task."""
    while True:
        await trio.sleep(WATCHDOG_TICK)
        now = trio.current_time()
        for manager in managers:
            manager.check_deadlines(now)
