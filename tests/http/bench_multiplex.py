"""Micro-benchmark of one proxied HTTP/2 request's Python cost (not a test): µs per request.

    .venv/bin/python tests/http/bench_multiplex.py [N] [--profile]

The shape of `scripts/bench --scenario http2` (h2load -m10: batches of ten GETs on one h2c
connection, to an HTTP/1.1 nginx), in one process over fake sockets: the real MuxServer,
HTTP/2 codec, router, pool and HTTP/1 upstreams, with every socket wait replaced by one trio
checkpoint (a park and a wakeup, as a real wait costs) and no syscalls. What is left is the
Python and trio work per request: the codec, the stream workers, the router, the upstream
codec. `scripts/bench` measures the whole; this isolates what a change does to our part of it,
repeatably on a busy machine (best of 5 runs, in CPU time).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import trio

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])  # run as a script from the checkout

from proxy.config.loader import load_text  # noqa: E402
from proxy.http.connection_manager import HttpConnectionManager  # noqa: E402
from proxy.http.filter import build_chain  # noqa: E402
from proxy.http.http1_upstream import Http1Upstream  # noqa: E402
from proxy.network import edge_epoll, sockio  # noqa: E402
from proxy.router.route_table import CompiledRouteTable  # noqa: E402
from proxy.stats import ListenerStats  # noqa: E402
from proxy.upstream.cluster import Cluster  # noqa: E402
from proxy.upstream.pool import PoolManager  # noqa: E402
from tests.codec.h2frames import PREFACE, Frames  # noqa: E402
from tests.http.bench_connection_manager import RESPONSE, FakeSocket  # noqa: E402

CONFIG = """
listeners:
  - {name: bench, address: "127.0.0.1:18093", protocol: http2, route: main}
clusters:
  - {name: backend, hosts: [{address: "127.0.0.1:18090"}]}
routes:
  main:
    virtual_hosts:
      - {name: all, domains: ["*"], routes: [{match: {prefix: /}, cluster: backend}]}
"""
BATCH = 10  # h2load -m10
UPSTREAMS = 64  # idle HTTP/1 connections in the pool: more than the streams ever open
REQUEST = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"127.0.0.1:18093"), (b"user-agent", b"h2load nghttp2/1.52.0")]


class FakeH2Client(FakeSocket):
    """The downstream socket: the preface, then a batch of BATCH requests per read once the
    batch before was answered, each read after one that would block (so the connection task
    waits as it would for the network); EOF once every request was answered."""

    def __init__(self, n: int, stats: ListenerStats) -> None:
        frames = Frames()
        self.reads = [frames.preface()]
        sid = 1
        for _ in range(n // BATCH):
            self.reads.append(b"".join(frames.headers(sid + 2 * i, REQUEST, end_stream=True) for i in range(BATCH)))
            sid += 2 * BATCH
        self.reads.reverse()
        self.n = n // BATCH * BATCH
        self.stats = stats
        self.block = False
        self.sent = 0

    def recv(self, size: int) -> bytes:
        if self.stats.downstream_rq_2xx < self.sent:  # h2load -m10: ten more once these are answered
            raise BlockingIOError
        if not self.reads:
            return b""
        if self.block:
            self.block = False
            raise BlockingIOError
        self.block = True
        data = self.reads.pop()
        if not data.startswith(PREFACE):
            self.sent += BATCH
        return data


async def _wait(sock: Any) -> None:
    await trio.lowlevel.checkpoint()


async def run(n: int, profile: bool, seen: set[Any] | None = None) -> float:
    """CPU µs per request; `seen` collects the MuxConnection(s) that served them."""
    real_wait = edge_epoll.trio_wait_readable
    edge_epoll.trio_wait_readable = _wait
    try:
        return await _run(n, profile, seen)
    finally:
        edge_epoll.trio_wait_readable = real_wait  # (the tests import this module: leave it as found)


async def _watch(mux: Any, seen: set[Any]) -> None:
    while True:
        seen.update(mux.connections)
        await trio.sleep(0)


async def _run(n: int, profile: bool, seen: set[Any] | None) -> float:
    sockio.coalesce_sends()  # as a worker does (server.py)
    config = load_text(CONFIG, fmt="yaml")
    lc = config.listeners[0]
    clusters = {c.name: Cluster(c) for c in config.clusters}
    async with trio.open_nursery() as nursery:
        stats = ListenerStats()
        hcm = HttpConnectionManager(
            lc, CompiledRouteTable(config.routes[lc.route]), clusters, PoolManager(), build_chain(lc.filters), [], stats, nursery
        )
        cluster = clusters["backend"]
        pool = hcm.router.pools.pool(cluster.hosts[0], cluster)
        for _ in range(UPSTREAMS):
            pool.open += 1
            pool.release(Http1Upstream(sockio.SockIO(FakeSocket(n, RESPONSE)), cluster.hosts[0], pool), True)  # type: ignore[arg-type]
        down = FakeH2Client(n, stats)
        if seen is not None:
            nursery.start_soon(_watch, hcm.mux, seen)
        if profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.enable()
        start = time.process_time()
        await hcm.mux.connection(down, ("127.0.0.1", 40000))  # type: ignore[arg-type]
        elapsed = time.process_time() - start
        if profile:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(35)
        assert stats.downstream_rq_2xx == down.n, (stats.downstream_rq_2xx, down.n)
        nursery.cancel_scope.cancel()
    return elapsed / down.n * 1e6


if __name__ == "__main__":
    count = next((int(a) for a in sys.argv[1:] if a.isdigit()), 20000)
    runs = [trio.run(run, count, "--profile" in sys.argv) for _ in range(1 if "--profile" in sys.argv else 5)]
    print(f"{min(runs):.1f} µs per request (best of {len(runs)}; all: {', '.join(f'{r:.1f}' for r in runs)})")
