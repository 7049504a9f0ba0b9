"""Micro-benchmark of one proxied request's pure-Python cost (not a test): µs per request.

    .venv/bin/python tests/http/bench_connection_manager.py [N] [--profile]

The real HttpConnectionManager, with the bench scenario's config (one listener, one prefix
route to one cluster), serves N keep-alive requests from wrk's head to nginx's answer over fake
sockets that never block: no syscalls and no trio waits, so what is left is the Python work of
the connection manager, codec, router, pool and stats. `scripts/bench` measures the whole;
comparing the two says how much of a change reaches the wire (docs/performance.md).
"""

from __future__ import annotations

import socket
import sys
import time
from typing import Any

import trio

from proxy.config.loader import load_text
from proxy.http.connection_manager import HttpConnectionManager
from proxy.http.filter import build_chain
from proxy.network import edge_epoll, sockio
from proxy.router.route_table import CompiledRouteTable
from proxy.stats import ListenerStats
from proxy.upstream.cluster import Cluster
from proxy.http.http1_upstream import Http1Upstream
from proxy.upstream.pool import PoolManager

CONFIG = """
listeners:
  - {name: bench, address: "127.0.0.1:18093", protocol: http1, route: main}
clusters:
  - {name: backend, hosts: [{address: "127.0.0.1:18090"}]}
routes:
  main:
    virtual_hosts:
      - {name: all, domains: ["*"], routes: [{match: {prefix: /}, cluster: backend}]}
"""
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:18093\r\n\r\n"  # wrk's
RESPONSE = (  # nginx's `return 200 "ok\n"`
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 08:26:33 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n"
)


class FakeSocket:
    """recv() answers `data` `count` times, then EOF; send() takes everything."""

    family = socket.AF_INET

    def __init__(self, count: int, data: bytes) -> None:
        self.count = count
        self.data = data

    def recv(self, size: int, flags: int = 0) -> bytes:
        if flags:  # the pool's MSG_PEEK liveness check of an idle connection: nothing to read
            raise BlockingIOError
        if self.count <= 0:
            return b""
        self.count -= 1
        return self.data

    def send(self, data: Any) -> int:
        return len(data)

    def setsockopt(self, *args: Any) -> None:
        pass

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 18093)

    def fileno(self) -> int:
        return -1


async def _ready(sock: Any) -> None:
    pass


async def run(n: int, profile: bool) -> float:
    edge_epoll.trio_wait_readable = _ready  # a reply is always "there" (trio's run, not the edge one)
    config = load_text(CONFIG, fmt="yaml")
    lc = config.listeners[0]
    clusters = {c.name: Cluster(c) for c in config.clusters}
    async with trio.open_nursery() as nursery:
        hcm = HttpConnectionManager(
            lc, CompiledRouteTable(config.routes[lc.route]), clusters, PoolManager(), build_chain(lc.filters), [], ListenerStats(), nursery
        )
        cluster = clusters["backend"]
        pool = hcm.router.pools.pool(cluster.hosts[0], cluster)
        pool.open += 1
        pool.release(Http1Upstream(sockio.SockIO(FakeSocket(n, RESPONSE)), cluster.hosts[0], pool), True)  # type: ignore[arg-type]
        down = FakeSocket(n, REQUEST)
        if profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.enable()
        start = time.perf_counter()
        await hcm.http1.connection(down, ("127.0.0.1", 40000), 0, b"")  # type: ignore[arg-type]
        elapsed = time.perf_counter() - start
        if profile:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        assert hcm.stats.downstream_rq_2xx == n, hcm.stats.downstream_rq_2xx
        nursery.cancel_scope.cancel()
    return elapsed / n * 1e6


if __name__ == "__main__":
    count = next((int(a) for a in sys.argv[1:] if a.isdigit()), 30000)
    runs = [trio.run(run, count, "--profile" in sys.argv) for _ in range(1 if "--profile" in sys.argv else 5)]
    print(f"{min(runs):.1f} µs per request (best of {len(runs)}; all: {', '.join(f'{r:.1f}' for r in runs)})")
