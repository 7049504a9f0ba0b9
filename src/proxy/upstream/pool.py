"""HTTP/1 upstream connection pools: one per host, keep-alive reuse with limits.

The connections are `Http1Upstream`s (proxy.http.http1_upstream), the upstream side of the
stream layer: while a request holds one, it is that request's `UpstreamRequest`.

Bookkeeping is synchronous and happens before any await (httpcore's rule), so a cancelled
request can never leave the counts wrong: `acquire` reserves a slot, then connects; `release`
returns or closes the connection and wakes one waiter. Idle connections have no task of their
own; the pool manager's sweeper (in the upstream nursery) closes those idle past idle_timeout,
and a reused connection is first checked for a close the peer sent while it sat idle.

Limits, per host, as Envoy's circuit breakers: max_connections open, max_pending_requests
waiting for one (beyond that: `PoolOverflow`, answered 503 with flag UO), and
max_requests_per_connection after which a connection is retired.
"""

from __future__ import annotations

import collections
import socket
from typing import Any

import trio

from proxy.clock import clock_reader
from proxy.http.http1_upstream import Http1Upstream
from proxy.log import get_logger
from proxy.network.connect import ConnectFailed, connect
from proxy.network.sockio import SockIO
from proxy.network.tls_io import TlsHandshakeFailed, connect_tls
from proxy.upstream.cluster import Cluster
from proxy.upstream.host import Host

log = get_logger("pool")


# A connection idle for a while may have been closed by the upstream's keep-alive timeout: peek
# first. One idle only briefly is used as is (a syscall saved per request); should it have died
# anyway, the router retries once on a new connection.
PEEK_AFTER_IDLE = 1.0


class PoolOverflow(Exception):
    pass


async def open_connection(host: Host, cluster: Cluster, protocol: str) -> SockIO:
    """A new connection to `host` for a pool that speaks `protocol` (http1, http2), counted on
    the cluster and the host: a SockIO, or a TlsIO once the handshake is done when the cluster
    has TLS (TCP connect and handshake within connect_timeout). Raises ConnectFailed (a failed
    handshake too: a connect failure for the router, its reason kept)."""
    timeout = cluster.connect_timeout
    deadline = trio.current_time() + timeout
    sock = await connect(host, timeout)
    io: SockIO
    client = cluster.tls
    if client is None:
        io = SockIO(sock)
    else:
        try:
            io = await connect_tls(sock, client, host, protocol, deadline)
        except TlsHandshakeFailed as failed:
            _close(sock)
            raise ConnectFailed(host, failed.reason) from None
        except BaseException:
            _close(sock)
            raise
    stats = cluster.stats
    stats.upstream_cx_total += 1
    stats.upstream_cx_active += 1
    host.stats.cx_total += 1
    host.stats.cx_active += 1
    return io


def _close(sock: socket.socket) -> None:
    trio.lowlevel.notify_closing(sock)
    sock.close()


async def wait_for_room(pool: Any, state: str) -> None:
    """Wait in `pool.waiters` until a release or a new connection makes room (the pool wakes
    one waiter per chance), or raise PoolOverflow (counted) when max_pending wait already.
    `state` says how full the pool is, for the error."""
    waiters = pool.waiters
    if len(waiters) >= pool.max_pending:
        pool.cluster.stats.upstream_rq_pending_overflow += 1
        raise PoolOverflow(f"{pool.host.address}: {state}, {len(waiters)} requests pending")
    event = trio.Event()
    waiters.append(event)
    try:
        await event.wait()
    finally:
        try:
            waiters.remove(event)
        except ValueError:
            pass


class HostPool:
    __slots__ = ("host", "cluster", "idle", "open", "waiters", "max_connections", "max_pending", "max_requests", "idle_timeout", "_now")

    def __init__(self, host: Host, cluster: Cluster) -> None:
        config = cluster.config
        self.host = host
        self.cluster = cluster
        self.idle: list[Http1Upstream] = []  # LIFO: the warmest connection first
        self.open = 0  # idle + in use + connecting
        self.waiters: collections.deque[trio.Event] = collections.deque()
        self.max_connections = config.max_connections
        self.max_pending = config.max_pending_requests
        self.max_requests = config.max_requests_per_connection
        self.idle_timeout = float(config.idle_timeout)
        self._now = clock_reader()

    def take_idle(self) -> Http1Upstream | None:
        """An idle connection ready for reuse, without awaiting (the common case)."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if self._now() - conn.idle_since > PEEK_AFTER_IDLE and conn.io.peer_closed():
                self._discard(conn)
                continue
            return conn
        return None

    async def acquire(self, fresh: bool = False) -> tuple[Http1Upstream, bool]:
        """A connection to this host and whether it was reused. Raises ConnectFailed,
        PoolOverflow. With `fresh`, never reuse an idle connection."""
        while True:
            if not fresh:
                conn = self.take_idle()
                if conn is not None:
                    return conn, True
            if self.open < self.max_connections:
                self.open += 1
                try:
                    io = await open_connection(self.host, self.cluster, "http1")
                except BaseException:
                    self.open -= 1
                    self._wake()
                    raise
                return Http1Upstream(io, self.host, self), False
            await wait_for_room(self, f"{self.open} connections open")
            fresh = False

    def adopt(self, io: SockIO) -> None:
        """A new connection on `io` (open_connection's, counted) joins the idle ones."""
        self.open += 1
        conn = Http1Upstream(io, self.host, self)
        conn.idle_since = self._now()
        self.idle.append(conn)
        self._wake()

    def release(self, conn: Http1Upstream, reusable: bool) -> None:
        conn.requests += 1
        # Bytes of the last request still queued (send_soon; an upstream that answered early, e.g.
        # a 413 before reading the body) would precede the next request: not reused then.
        if reusable and not conn.io.unsent and (self.max_requests is None or conn.requests < self.max_requests):
            conn.idle_since = self._now()
            self.idle.append(conn)
        else:
            self._discard(conn)
        if self.waiters:
            self.waiters.popleft().set()  # (_wake, inlined: once per request)

    def detach(self, conn: Http1Upstream) -> None:
        """The connection leaves the pool without being closed (an upgrade tunnel owns it)."""
        self.open -= 1
        self.cluster.stats.upstream_cx_active -= 1
        self.host.stats.cx_active -= 1
        self._wake()

    def _discard(self, conn: Http1Upstream) -> None:
        conn.io.close()
        self.open -= 1
        self.cluster.stats.upstream_cx_active -= 1
        self.host.stats.cx_active -= 1

    def _wake(self) -> None:
        if self.waiters:
            self.waiters.popleft().set()

    def sweep(self, now: float) -> None:
        """Close connections idle longer than idle_timeout (oldest are at the front)."""
        cutoff = now - self.idle_timeout
        expired = 0
        for conn in self.idle:
            if conn.idle_since > cutoff:
                break
            expired += 1
        if expired:
            for conn in self.idle[:expired]:
                self._discard(conn)
            del self.idle[:expired]

    def close_all(self) -> None:
        for conn in self.idle:
            self._discard(conn)
        self.idle.clear()

    def snapshot(self) -> dict[str, Any]:
        return {"open": self.open, "idle": len(self.idle), "pending": len(self.waiters)}


class PoolManager:
    """Every host pool of a worker, HTTP/1 and HTTP/2; runs the idle sweeper, and owns the
    nursery the HTTP/2 connections' reader tasks live in (the upstream nursery)."""

    SWEEP_INTERVAL = 1.0

    def __init__(self) -> None:
        self.pools: dict[Host, HostPool] = {}
        self.h2_pools: dict[Host, Any] = {}  # Host -> proxy.http.http2_upstream.H2HostPool
        self.nursery: trio.Nursery | None = None

    def pool(self, host: Host, cluster: Cluster) -> HostPool:
        pool = self.pools.get(host)
        if pool is None:
            pool = self.pools[host] = HostPool(host, cluster)
        return pool

    def h2_pool(self, host: Host, cluster: Cluster) -> Any:
        pool = self.h2_pools.get(host)
        if pool is None:
            from proxy.http.http2_upstream import H2HostPool

            pool = self.h2_pools[host] = H2HostPool(host, cluster, self)
        return pool

    async def learn(self, host: Host, cluster: Cluster) -> None:
        """`protocol: auto`: open a first connection to `host` offering h2 and http/1.1 by ALPN;
        the server's pick (none: HTTP/1.1) is the host's protocol from now on, and that pool
        takes the connection. Raises ConnectFailed."""
        io = await open_connection(host, cluster, "auto")
        tls = io.tls
        if tls is not None and tls.alpn == "h2":
            host.protocol = "http2"
            self.h2_pool(host, cluster).adopt(io)
        else:
            host.protocol = "http1"
            self.pool(host, cluster).adopt(io)

    async def run_sweeper(self) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            try:
                while True:
                    await trio.sleep(self.SWEEP_INTERVAL)
                    now = trio.current_time()
                    for pool in self.pools.values():
                        if pool.idle:
                            pool.sweep(now)
                    # (Another name than the loop's above: compiled, a local keeps the type of
                    # its first use, and these pools are H2HostPools.)
                    for h2 in self.h2_pools.values():
                        h2.sweep(now)
            finally:
                self.nursery = None

    def close_all(self) -> None:
        for pool in self.pools.values():
            pool.close_all()
        for h2 in self.h2_pools.values():
            h2.close_all()
