"""Hot upgrade of live L4 connections: a TcpProxy hands its relays over at a safe point and a
second TcpProxy (the "new worker", with its own connection nursery and cluster) adopts them.

The handover is played by `Handoff`: the fds are dup()ed, as SCM_RIGHTS would, and given to the
adopter in the new worker's nursery; or the handover is refused. Real loopback sockets.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from proxy.config.loader import load_text
from proxy.network.listener import accept_loop, bind
from proxy.network.tcp_proxy import TcpProxy
from proxy.stats import ListenerStats
from proxy.upgrade.migration import b64d
from proxy.upstream.cluster import Cluster

MiB = 1 << 20


class Handoff:
    """A test `Migration`. Accepting: each connection's fds are dup()ed and adopted by
    `adopters[kind]` in `nursery` (the new worker); the old worker then drops its copies.
    Refusing: hand_over answers False and the old worker must keep serving."""

    def __init__(
        self, nursery: trio.Nursery | None, adopters: dict[str, Callable[..., Awaitable[None]]], accept: bool = True, broken: bool = False
    ) -> None:
        self.active = True
        self.broken = broken  # refusing because the new worker died: the migration ends
        self.nursery = nursery
        self.adopters = adopters
        self.accept = accept
        self.offered: list[tuple[str, str, dict[str, Any]]] = []

    async def hand_over(self, kind: str, listener: str, socks: list[socket.socket], state: dict[str, Any]) -> bool:
        state = json.loads(json.dumps(state))  # it travels as JSON
        self.offered.append((kind, listener, state))
        await trio.lowlevel.checkpoint()  # the round trip to the new worker
        if not self.accept:
            if self.broken:
                self.active = False
            return False
        assert self.nursery is not None
        copies = [socket.socket(fileno=os.dup(s.fileno())) for s in socks]
        self.nursery.start_soon(self.adopters[kind], *copies, state)
        return True


async def open_nursery(task_status: trio.TaskStatus[trio.Nursery] = trio.TASK_STATUS_IGNORED) -> None:
    """A nursery that lives until the test's nursery is cancelled: one worker's connections."""
    async with trio.open_nursery() as nursery:
        task_status.started(nursery)
        await trio.sleep_forever()


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


def small_buffers(stream: trio.SocketStream) -> None:
    """Fixed (not autotuned) buffers on a test end, so a paused reader backs data up into the
    proxy quickly: its pipe or its copy buffer holds bytes when the handover comes."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 128 * 1024)
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 128 * 1024)


class End:
    """One end of a relayed connection: writes `out` then EOF, reads everything into a digest.
    With `pause_at`, reading stops after that many bytes until `resume` is set."""

    def __init__(self, out: bytes, pause_at: int | None = None) -> None:
        self.out = out
        self.pause_at = pause_at
        self.paused = trio.Event()
        self.resume = trio.Event()
        self.digest = hashlib.sha256()
        self.received = 0
        self.done = trio.Event()
        self.stream: trio.SocketStream | None = None

    async def run(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        small_buffers(stream)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write, stream)
            await self._read(stream)

    async def _write(self, stream: trio.SocketStream) -> None:
        view = memoryview(self.out)
        for i in range(0, len(view), 65536):
            await stream.send_all(view[i : i + 65536])
        await stream.send_eof()

    async def _read(self, stream: trio.SocketStream) -> None:
        while True:
            if self.pause_at is not None and self.received >= self.pause_at and not self.resume.is_set():
                self.paused.set()
                await self.resume.wait()
            data = await stream.receive_some(65536)
            if not data:
                break
            self.digest.update(data)
            self.received += len(data)
        self.done.set()


def tcp_proxy_config(upstream: str, relay: str) -> Any:
    raw = {
        "listeners": [{"name": "tcp", "address": "127.0.0.1:0", "protocol": "tcp", "cluster": "up", "relay": relay}],
        "clusters": [{"name": "up", "connect_timeout": "1s", "hosts": [{"address": upstream}]}],
    }
    return load_text(json.dumps(raw), fmt="json")


class Workers:
    """An old and a new TcpProxy for the same listener config, each with its own connection
    nursery and cluster; the old one accepts on a real listening socket."""

    def __init__(self, old: TcpProxy, new: TcpProxy, address: tuple[str, int], new_nursery: trio.Nursery) -> None:
        self.old = old
        self.new = new
        self.address = address
        self.new_nursery = new_nursery

    def handoff(self, accept: bool = True) -> Handoff:
        return Handoff(self.new_nursery, {"tcp": self.new.adopt}, accept)


async def start_workers(nursery: trio.Nursery, upstream: str, relay: str) -> Workers:
    config = tcp_proxy_config(upstream, relay)
    lc = config.listeners[0]
    old_nursery = await nursery.start(open_nursery)
    new_nursery = await nursery.start(open_nursery)
    old = TcpProxy(lc, Cluster(config.clusters[0]), ListenerStats(), old_nursery)
    new = TcpProxy(lc, Cluster(config.clusters[0]), ListenerStats(), new_nursery)
    sock = bind(lc.address, 128)
    nursery.start_soon(accept_loop, lc.name, sock, old.handle, old_nursery, old.stats)
    return Workers(old, new, sock.getsockname(), new_nursery)


async def start_upstream(nursery: trio.Nursery, handler: Callable[[trio.SocketStream], Awaitable[None]]) -> str:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"


@pytest.fixture(params=["splice", "copy"])
def relay(request):
    return request.param


def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("accept", [True, False], ids=["adopted", "refused"])
async def test_streams_both_ways_survive_a_handover_midway_byte_exact(nursery, relay, accept):
    to_up = payload(1, 16 * MiB)
    to_down = payload(2, 16 * MiB)
    upstream = End(to_down, pause_at=MiB)  # reads to_up, writes to_down
    client = End(to_up, pause_at=MiB)
    address = await start_upstream(nursery, upstream.run)
    workers = await start_workers(nursery, address, relay)
    nursery.start_soon(client.run, await trio.open_tcp_stream(*workers.address))

    # Both readers stop midway; both writers go on until every buffer on the way is full, so
    # the relay holds bytes it read and could not write yet, in each direction.
    with trio.fail_after(10):
        await upstream.paused.wait()
        await client.paused.wait()
    await trio.sleep(0.3)
    handoff = workers.handoff(accept)
    workers.old.start_migration(handoff)
    await wait_for(lambda: len(handoff.offered) == 1)
    kind, listener, state = handoff.offered[0]
    assert (kind, listener) == ("tcp", "tcp")
    assert state["host"] == address
    assert len(b64d(state["to_up"])) > 0 and len(b64d(state["to_down"])) > 0  # the pipe / unsent buffer went along
    assert state["down_eof"] is False and state["up_eof"] is False
    if accept:
        await wait_for(lambda: workers.old.stats.downstream_cx_migrated_out == 1)
        assert workers.old.stats.downstream_cx_active == 0
        assert workers.old.cluster.stats.upstream_cx_active == 0
        assert workers.old.cluster.hosts[0].stats.cx_active == 0
        assert not workers.old.relays
        await wait_for(lambda: workers.new.stats.downstream_cx_active == 1)
        assert workers.new.cluster.stats.upstream_cx_active == 1
        assert workers.new.cluster.hosts[0].stats.cx_active == 1

    upstream.resume.set()
    client.resume.set()
    with trio.fail_after(30):
        await upstream.done.wait()
        await client.done.wait()
    assert upstream.received == len(to_up) and upstream.digest.digest() == hashlib.sha256(to_up).digest()
    assert client.received == len(to_down) and client.digest.digest() == hashlib.sha256(to_down).digest()

    serving, other = (workers.new, workers.old) if accept else (workers.old, workers.new)
    await wait_for(lambda: serving.stats.downstream_cx_destroy == 1)
    assert serving.stats.downstream_cx_active == 0
    assert serving.cluster.stats.upstream_cx_active == 0
    assert serving.cluster.hosts[0].stats.cx_active == 0
    assert other.stats.downstream_cx_destroy == 0
    old, new = workers.old.stats, workers.new.stats
    assert (old.downstream_cx_total, new.downstream_cx_total) == (1, 0)
    assert (old.downstream_cx_migrated_out, new.downstream_cx_migrated_in) == ((1, 1) if accept else (0, 0))
    # Every byte is counted once, by whichever worker read it.
    assert old.downstream_rx_bytes_total + new.downstream_rx_bytes_total == len(to_up)
    assert old.downstream_tx_bytes_total + new.downstream_tx_bytes_total == len(to_down)


async def test_half_closed_connection_migrates_and_stays_half_closed(nursery, relay):
    upstream_stream: list[trio.SocketStream] = []
    got_eof = trio.Event()
    received = bytearray()

    async def upstream_handler(stream: trio.SocketStream) -> None:
        upstream_stream.append(stream)
        async for data in stream:
            received.extend(data)
        got_eof.set()
        await trio.sleep_forever()

    address = await start_upstream(nursery, upstream_handler)
    workers = await start_workers(nursery, address, relay)
    client = await trio.open_tcp_stream(*workers.address)
    await client.send_all(b"request")
    await client.send_eof()
    with trio.fail_after(5):
        await got_eof.wait()
    assert received == b"request"
    up = upstream_stream[0]
    await up.send_all(b"before ")
    with trio.fail_after(5):
        assert await client.receive_some() == b"before "

    handoff = workers.handoff()
    workers.old.start_migration(handoff)
    await wait_for(lambda: workers.old.stats.downstream_cx_migrated_out == 1)
    state = handoff.offered[0][2]
    assert state["down_eof"] is True and state["up_eof"] is False
    await wait_for(lambda: workers.new.stats.downstream_cx_active == 1)

    # The open direction flows through the new worker; the closed one stays closed.
    await up.send_all(b"after")
    with trio.fail_after(5):
        assert await client.receive_some() == b"after"
        assert await up.receive_some() == b""
    await up.send_eof()
    with trio.fail_after(5):
        assert await client.receive_some() == b""
    await wait_for(lambda: workers.new.stats.downstream_cx_destroy == 1)
    assert workers.new.cluster.stats.upstream_cx_active == 0


async def test_upstream_half_close_migrates_and_client_direction_flows_on(nursery, relay):
    upstream_stream: list[trio.SocketStream] = []
    received = bytearray()
    got_eof = trio.Event()

    async def upstream_handler(stream: trio.SocketStream) -> None:
        upstream_stream.append(stream)
        await stream.send_all(b"banner")
        await stream.send_eof()
        async for data in stream:
            received.extend(data)
        got_eof.set()

    address = await start_upstream(nursery, upstream_handler)
    workers = await start_workers(nursery, address, relay)
    client = await trio.open_tcp_stream(*workers.address)
    with trio.fail_after(5):
        assert await client.receive_some() == b"banner"
        assert await client.receive_some() == b""
    handoff = workers.handoff()
    workers.old.start_migration(handoff)
    await wait_for(lambda: workers.old.stats.downstream_cx_migrated_out == 1)
    state = handoff.offered[0][2]
    assert state["down_eof"] is False and state["up_eof"] is True
    await client.send_all(b"after the move")
    await client.send_eof()
    with trio.fail_after(5):
        await got_eof.wait()
    assert received == b"after the move"
    await wait_for(lambda: workers.new.stats.downstream_cx_destroy == 1)


async def test_connection_made_during_a_migration_is_handed_over_before_relaying(nursery, relay):
    async def echo(stream: trio.SocketStream) -> None:
        async for data in stream:
            await stream.send_all(data)
        await stream.send_eof()

    address = await start_upstream(nursery, echo)
    workers = await start_workers(nursery, address, relay)
    handoff = workers.handoff()
    workers.old.start_migration(handoff)
    client = await trio.open_tcp_stream(*workers.address)
    await wait_for(lambda: workers.old.stats.downstream_cx_migrated_out == 1)
    assert handoff.offered[0][2] == {"host": address, "to_up": "", "to_down": "", "down_eof": False, "up_eof": False}
    await client.send_all(b"ping")
    with trio.fail_after(5):
        assert await client.receive_some() == b"ping"
    await client.send_eof()
    with trio.fail_after(5):
        assert await client.receive_some() == b""
    await wait_for(lambda: workers.new.stats.downstream_cx_destroy == 1)
    assert workers.old.stats.downstream_cx_destroy == 0
    assert workers.new.stats.downstream_rx_bytes_total == 4


async def test_relay_that_already_ended_is_not_handed_over(nursery, relay):
    async def close_at_once(stream: trio.SocketStream) -> None:
        await stream.aclose()

    address = await start_upstream(nursery, close_at_once)
    workers = await start_workers(nursery, address, relay)
    client = await trio.open_tcp_stream(*workers.address)
    await client.send_eof()
    with trio.fail_after(5):
        assert await client.receive_some() == b""
    await wait_for(lambda: workers.old.stats.downstream_cx_destroy == 1)
    handoff = workers.handoff()
    workers.old.start_migration(handoff)
    await trio.sleep(0.05)
    assert handoff.offered == []
