"""Hot upgrade of live HTTP/1.1 connections: an HttpConnectionManager hands keep-alive
connections (between requests) and upgrade tunnels over to a second manager (the "new
worker", with its own nursery, clusters and pools), which serves them on; real loopback sockets,
a raw-socket client, the h11 test upstream.
"""

from __future__ import annotations

import json
from typing import Any

import h11
import pytest
import trio

from proxy.config.loader import load_text
from proxy.http.connection_manager import HttpConnectionManager
from proxy.http.filter import build_chain
from proxy.network.listener import accept_loop, bind
from proxy.router.route_table import CompiledRouteTable
from proxy.stats import ListenerStats
from proxy.upgrade.migration import b64d
from proxy.upstream.cluster import Cluster
from proxy.upstream.pool import PoolManager
from tests.integration.http_upstream import HttpUpstream, http_config
from tests.network.test_migration import Handoff, open_nursery, start_upstream, wait_for


class Client:
    """One keep-alive client connection: raw request bytes out, h11 parses each response."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def get(self, target: str) -> tuple[h11.Response, bytes]:
        await self.stream.send_all(f"GET {target} HTTP/1.1\r\nHost: example.com\r\n\r\n".encode())
        return await self.response()

    async def response(self, timeout: float = 10) -> tuple[h11.Response, bytes]:
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
        if self.buffer:
            conn.receive_data(self.buffer)
        head = None
        body = bytearray()
        with trio.fail_after(timeout):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await self.stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    head = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    self.buffer = conn.trailing_data[0]
                    assert head is not None
                    return head, bytes(body)
                elif isinstance(event, h11.ConnectionClosed):
                    raise EOFError("connection closed before a response")


def header(response: h11.Response, name: bytes) -> bytes | None:
    return next((v for k, v in response.headers if k == name), None)


class Workers:
    def __init__(self, old: HttpConnectionManager, new: HttpConnectionManager, address: tuple[str, int], new_nursery: trio.Nursery) -> None:
        self.old = old
        self.new = new
        self.address = address
        self.new_nursery = new_nursery

    def handoff(self, accept: bool = True, broken: bool = False) -> Handoff:
        return Handoff(self.new_nursery, {"http1": self.new.adopt, "tunnel": self.new.adopt_tunnel}, accept, broken)

    async def client(self) -> Client:
        return Client(await trio.open_tcp_stream(*self.address))


def manager(config: Any, nursery: trio.Nursery) -> HttpConnectionManager:
    lc = config.listeners[0]
    clusters = {c.name: Cluster(c) for c in config.clusters}
    routes = CompiledRouteTable(config.routes[lc.route])
    return HttpConnectionManager(lc, routes, clusters, PoolManager(), build_chain(lc.filters), [], ListenerStats(), nursery)


@pytest.fixture
async def make_workers(nursery):
    made: list[Workers] = []

    async def make(upstream: str, watchdog: bool = True, **http: Any) -> Workers:
        config = load_text(json.dumps(http_config([upstream], http=http)), fmt="json")
        old_nursery = await nursery.start(open_nursery)
        new_nursery = await nursery.start(open_nursery)
        old, new = manager(config, old_nursery), manager(config, new_nursery)
        if watchdog:
            nursery.start_soon(old.run_watchdog)
        nursery.start_soon(new.run_watchdog)
        lc = config.listeners[0]
        sock = bind(lc.address, 128)
        nursery.start_soon(accept_loop, lc.name, sock, old.handle, old_nursery, old.stats)
        made.append(Workers(old, new, sock.getsockname(), new_nursery))
        return made[-1]

    yield make
    for workers in made:
        workers.old.pools.close_all()
        workers.new.pools.close_all()


@pytest.fixture
async def upstream(nursery):
    up = HttpUpstream("a")
    await up.start(nursery)
    return up


# ---------------------------------------------------------------- keep-alive connections


async def test_connection_the_new_worker_refuses_closes_after_its_next_response(make_workers, upstream):
    """The migration goes on without this connection (e.g. its listener left the config): the
    old worker serves its next request with `Connection: close`, so it can exit soon."""
    workers = await make_workers(upstream.address)
    client = await workers.client()
    response, _ = await client.get("/echo?before")
    assert response.status_code == 200
    await wait_for(lambda: len(workers.old.connections) == 1)
    handoff = workers.handoff(accept=False)
    workers.old.start_migration(handoff)
    await wait_for(lambda: len(handoff.offered) == 1)
    response, body = await client.get("/echo?after")
    assert response.status_code == 200 and json.loads(body)["target"] == "/echo?after"
    assert header(response, b"connection") == b"close"
    await wait_for(lambda: workers.old.stats.downstream_cx_destroy == 1)
    assert workers.old.stats.downstream_cx_active == 0 and len(handoff.offered) == 1


@pytest.mark.parametrize("accept", [True, False], ids=["adopted", "new-worker-died"])
async def test_idle_keep_alive_connection_moves_between_requests(make_workers, upstream, accept):
    workers = await make_workers(upstream.address)
    client = await workers.client()
    for i in range(3):
        response, body = await client.get(f"/echo?before={i}")
        assert response.status_code == 200 and json.loads(body)["target"] == f"/echo?before={i}"
    await wait_for(lambda: len(workers.old.connections) == 1)

    handoff = workers.handoff(accept, broken=True)
    workers.old.start_migration(handoff)
    await wait_for(lambda: len(handoff.offered) == 1)
    assert handoff.offered[0] == ("http1", "http", {"served": 3, "leftover": ""})

    for i in range(3):  # the same TCP connection, before and after
        response, body = await client.get(f"/echo?after={i}")
        assert response.status_code == 200 and json.loads(body)["target"] == f"/echo?after={i}"
        assert header(response, b"connection") is None
    old, new = workers.old.stats, workers.new.stats
    if accept:
        assert (old.downstream_rq_total, new.downstream_rq_total) == (3, 3)
        assert not workers.old.connections and len(workers.new.connections) == 1
        assert (old.downstream_cx_active, old.downstream_cx_migrated_out, old.downstream_cx_destroy) == (0, 1, 0)
        assert (new.downstream_cx_active, new.downstream_cx_migrated_in, new.downstream_cx_total) == (1, 1, 0)
    else:
        assert (old.downstream_rq_total, new.downstream_rq_total) == (6, 0)
        assert len(workers.old.connections) == 1
        assert (old.downstream_cx_active, old.downstream_cx_migrated_out, new.downstream_cx_migrated_in) == (1, 0, 0)
    assert len(handoff.offered) == 1  # a refused connection is not offered again

    await client.stream.aclose()
    serving = workers.new if accept else workers.old
    await wait_for(lambda: serving.stats.downstream_cx_destroy == 1)
    assert serving.stats.downstream_cx_active == 0


async def test_in_flight_request_finishes_in_the_old_worker_then_the_connection_moves(make_workers, upstream):
    workers = await make_workers(upstream.address)
    client = await workers.client()
    await client.stream.send_all(b"GET /slow/300 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    await wait_for(lambda: workers.old.stats.downstream_rq_active == 1)
    handoff = workers.handoff()
    workers.old.start_migration(handoff)
    response, body = await client.response()
    assert (response.status_code, body) == (200, b"slow")
    assert header(response, b"connection") is None  # no close: the connection lives on
    # The watchdog wakes it at its next tick, at the safe point.
    await wait_for(lambda: workers.old.stats.downstream_cx_migrated_out == 1)
    assert handoff.offered[0][2] == {"served": 1, "leftover": ""}
    response, _ = await client.get("/echo")
    assert response.status_code == 200
    assert (workers.old.stats.downstream_rq_total, workers.new.stats.downstream_rq_total) == (1, 1)
    assert workers.old.stats.downstream_rq_5xx == 0


async def test_request_arriving_at_the_safe_point_goes_along_unparsed(make_workers, upstream):
    # No watchdog: the busy connection is handed over when its next request arrives.
    workers = await make_workers(upstream.address, watchdog=False)
    client = await workers.client()
    await client.stream.send_all(b"GET /slow/200 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    await wait_for(lambda: workers.old.stats.downstream_rq_active == 1)
    handoff = workers.handoff()
    workers.old.start_migration(handoff)
    assert (await client.response())[0].status_code == 200
    response, body = await client.get("/echo?next")
    assert response.status_code == 200 and json.loads(body)["target"] == "/echo?next"
    state = handoff.offered[0][2]
    assert state["served"] == 1
    assert b64d(state["leftover"]) == b"GET /echo?next HTTP/1.1\r\nHost: example.com\r\n\r\n"
    assert (workers.old.stats.downstream_rq_total, workers.new.stats.downstream_rq_total) == (1, 1)


async def test_pipelined_partial_request_is_served_before_the_move(make_workers, upstream):
    workers = await make_workers(upstream.address)
    client = await workers.client()
    # One write: a whole request and the start of the next. After the first is served, the
    # parser holds part of the second: not a safe point, however long the client waits.
    await client.stream.send_all(b"GET /slow/200 HTTP/1.1\r\nHost: example.com\r\n\r\nGET /echo?second HTTP/1.1\r\nHo")
    await wait_for(lambda: workers.old.stats.downstream_rq_active == 1)
    handoff = workers.handoff()
    workers.old.start_migration(handoff)
    assert (await client.response())[0].status_code == 200
    await trio.sleep(0.3)  # three watchdog ticks
    assert handoff.offered == [] and len(workers.old.connections) == 1
    await client.stream.send_all(b"st: example.com\r\n\r\n")
    response, body = await client.response()
    assert response.status_code == 200 and json.loads(body)["target"] == "/echo?second"
    await wait_for(lambda: workers.old.stats.downstream_cx_migrated_out == 1)
    assert handoff.offered[0][2] == {"served": 2, "leftover": ""}
    response, body = await client.get("/echo?third")
    assert json.loads(body)["target"] == "/echo?third"
    assert (workers.old.stats.downstream_rq_total, workers.new.stats.downstream_rq_total) == (2, 1)


async def test_served_requests_count_against_max_requests_in_the_new_worker(make_workers, upstream):
    workers = await make_workers(upstream.address, max_requests_per_connection=3)
    client = await workers.client()
    for _ in range(2):
        response, _ = await client.get("/echo")
        assert header(response, b"connection") is None
    handoff = workers.handoff()
    workers.old.start_migration(handoff)
    await wait_for(lambda: workers.old.stats.downstream_cx_migrated_out == 1)
    response, _ = await client.get("/echo")  # the third on this connection, the first in the new worker
    assert header(response, b"connection") == b"close"
    with trio.fail_after(5):
        assert await client.stream.receive_some() == b""
    assert workers.new.stats.downstream_rq_total == 1


async def test_connection_accepted_during_a_migration_goes_straight_over(make_workers, upstream):
    workers = await make_workers(upstream.address)
    handoff = workers.handoff()
    workers.old.start_migration(handoff)
    client = await workers.client()
    response, _ = await client.get("/echo")
    assert response.status_code == 200
    assert handoff.offered[0][2] == {"served": 0, "leftover": ""}
    assert (workers.old.stats.downstream_rq_total, workers.new.stats.downstream_rq_total) == (0, 1)
    assert workers.old.stats.downstream_cx_total == 1 and workers.new.stats.downstream_cx_total == 0


async def test_drain_without_migration_still_closes_idle_connections(make_workers, upstream):
    workers = await make_workers(upstream.address)
    client = await workers.client()
    await client.get("/echo")
    await wait_for(lambda: len(workers.old.connections) == 1)
    workers.old.drain()
    with trio.fail_after(5):
        assert await client.stream.receive_some() == b""
    await wait_for(lambda: workers.old.stats.downstream_cx_destroy == 1)
    assert workers.old.stats.downstream_cx_migrated_out == 0


# ---------------------------------------------------------------- upgrade tunnels


async def upgrade_echo(stream: trio.SocketStream) -> None:
    """An upstream that accepts any upgrade with 101, then echoes bytes until EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some()
    head, _, rest = data.partition(b"\r\n\r\n")
    assert b"upgrade: websocket" in head.lower()
    await stream.send_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n" + rest)
    async for data in stream:
        await stream.send_all(data)
    await stream.send_eof()


async def read_exactly(stream: trio.SocketStream, size: int) -> bytes:
    data = bytearray()
    with trio.fail_after(10):
        while len(data) < size:
            piece = await stream.receive_some()
            assert piece, "EOF"
            data += piece
    return bytes(data)


@pytest.mark.parametrize("accept", [True, False], ids=["adopted", "refused"])
async def test_upgrade_tunnel_migrates_and_keeps_echoing(nursery, make_workers, accept):
    address = await start_upstream(nursery, upgrade_echo)
    workers = await make_workers(address)
    stream = await trio.open_tcp_stream(*workers.address)
    await stream.send_all(b"GET /ws HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    head = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some()
    assert head.startswith(b"HTTP/1.1 101 ")
    await stream.send_all(b"one")
    assert await read_exactly(stream, 3) == b"one"
    assert len(workers.old.tunnels) == 1

    handoff = workers.handoff(accept)
    workers.old.start_migration(handoff)
    await wait_for(lambda: len(handoff.offered) == 1)
    kind, listener, state = handoff.offered[0]
    assert (kind, listener) == ("tunnel", "http")
    assert state == {"host": address, "to_up": "", "to_down": "", "down_eof": False, "up_eof": False}

    message = bytes(range(256)) * 4096  # 1 MiB, echoed
    async with trio.open_nursery() as n:
        n.start_soon(stream.send_all, message)
        assert await read_exactly(stream, len(message)) == message
    old, new = workers.old.stats, workers.new.stats
    if accept:
        assert not workers.old.tunnels and len(workers.new.tunnels) == 1
        assert (old.downstream_cx_active, old.downstream_cx_migrated_out, old.downstream_cx_destroy) == (0, 1, 0)
        assert (new.downstream_cx_active, new.downstream_cx_migrated_in) == (1, 1)
    else:
        assert len(workers.old.tunnels) == 1 and old.downstream_cx_migrated_out == 0
    await stream.send_eof()
    with trio.fail_after(5):
        assert await stream.receive_some() == b""
    serving = workers.new if accept else workers.old
    await wait_for(lambda: serving.stats.downstream_cx_destroy == 1)
    assert serving.stats.downstream_cx_active == 0 and not serving.tunnels


async def test_busy_clients_lose_no_request_across_the_move(make_workers, upstream):
    # Clients fire requests back to back while the migration starts: whatever each connection
    # is doing at that moment (waiting, reading a request, being served), nothing may fail.
    workers = await make_workers(upstream.address)
    clients = [await workers.client() for _ in range(20)]
    answered = [0] * len(clients)
    stop = trio.Event()

    async def run(index: int, client: Client) -> None:
        while not stop.is_set():
            target = f"/echo?c={index}&n={answered[index]}"
            response, body = await client.get(target)
            assert response.status_code == 200 and json.loads(body)["target"] == target
            answered[index] += 1

    handoff = workers.handoff()
    async with trio.open_nursery() as n:
        for index, client in enumerate(clients):
            n.start_soon(run, index, client)
        await trio.sleep(0.3)
        workers.old.start_migration(handoff)
        await wait_for(lambda: workers.old.stats.downstream_cx_migrated_out == len(clients))
        before = sum(answered)
        await wait_for(lambda: sum(answered) > before + 100)
        stop.set()
    assert not workers.old.connections and len(workers.new.connections) == len(clients)
    old, new = workers.old.stats, workers.new.stats
    assert old.downstream_rq_total + new.downstream_rq_total == sum(answered)
    assert old.downstream_rq_2xx + new.downstream_rq_2xx == sum(answered)
    assert old.downstream_cx_destroy == 0 and new.downstream_cx_destroy == 0
