"""Relay unit tests over socketpairs, for both the splice and the copy pump."""

from __future__ import annotations

import socket

import pytest
import trio

from proxy.network import pipes
from proxy.network.parking import PARKING
from proxy.network.relay import CLOSED, IDLE_TIMEOUT, MIGRATED, PARK_AFTER, RESET, SWEEP_EVERY, Relay


@pytest.fixture(params=[True, False], ids=["splice", "copy"])
def use_splice(request):
    return request.param


def _pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return trio.SocketStream(trio.socket.from_stdlib_socket(a)), b


def _setup(use_splice, idle=None):
    client, down = _pair()
    upstream, up = _pair()
    closed = []
    relay = Relay(down, up, splice=use_splice, idle_timeout=idle, on_close=closed.append)
    return client, upstream, relay, closed


async def _send_through(nursery, client, upstream, payload: bytes) -> None:
    """Send `payload` and EOF from the client; the upstream must receive exactly that."""

    async def send():
        await client.send_all(payload)
        await client.send_eof()

    nursery.start_soon(send)
    got = bytearray()
    async for data in upstream:
        got += data
    assert got == payload


async def _end_both_ways(client, upstream, relay, closed) -> None:
    """Each side's EOF reaches the other; then the relay has closed, cleanly."""
    await client.send_eof()
    assert await upstream.receive_some() == b""
    await upstream.send_eof()
    assert await client.receive_some() == b""
    await trio.testing.wait_all_tasks_blocked()
    assert closed == [relay] and relay.outcome == CLOSED


async def test_bytes_flow_both_ways_and_half_close(nursery, use_splice):
    client, upstream, relay, closed = _setup(use_splice)
    nursery.start_soon(relay.run, nursery)
    await client.send_all(b"request")
    assert await upstream.receive_some() == b"request"
    await client.send_eof()
    assert await upstream.receive_some() == b""  # the client's EOF reached the upstream
    await upstream.send_all(b"response after eof")  # the other direction still flows
    assert await client.receive_some() == b"response after eof"
    assert not closed
    await upstream.send_eof()
    assert await client.receive_some() == b""
    await trio.testing.wait_all_tasks_blocked()
    assert closed == [relay]
    assert relay.outcome == CLOSED
    assert (relay.rx_bytes, relay.tx_bytes) == (7, 18)
    assert relay.down.fileno() == -1 and relay.up.fileno() == -1


async def test_large_transfer_intact(nursery, use_splice):
    client, upstream, relay, closed = _setup(use_splice)
    nursery.start_soon(relay.run, nursery)
    await _send_through(nursery, client, upstream, bytes(range(256)) * 40_000)  # ~10 MB


async def test_reset_on_one_side_aborts_both(nursery, use_splice):
    client, upstream, relay, closed = _setup(use_splice)
    nursery.start_soon(relay.run, nursery)
    await client.send_all(b"x")
    assert await upstream.receive_some() == b"x"
    await upstream.aclose()  # upstream gone: the relay's write to it fails
    await client.send_all(b"more")
    with trio.fail_after(2):
        while not closed:
            await client.send_all(b"more")
            await trio.sleep(0.01)
    assert relay.outcome == RESET
    with pytest.raises((trio.BrokenResourceError, trio.ClosedResourceError)):
        for _ in range(10):
            data = await client.receive_some()
            if data == b"":
                raise trio.BrokenResourceError  # EOF is an acceptable end too
            await client.send_all(b"more")


async def test_idle_timeout_closes_both(nursery, autojump_clock, use_splice):
    client, upstream, relay, closed = _setup(use_splice, idle=30.0)
    nursery.start_soon(relay.run, nursery)
    start = trio.current_time()
    for _ in range(5):  # activity in either direction keeps it open
        await trio.sleep(20)
        await upstream.send_all(b"ping")
        assert await client.receive_some() == b"ping"
    assert not closed
    await trio.sleep(31)
    await trio.testing.wait_all_tasks_blocked()
    assert closed and relay.outcome == IDLE_TIMEOUT
    assert 130 <= trio.current_time() - start < 135


# ---------------------------------------------------------------- the splice pipe pool


@pytest.fixture
def pool(monkeypatch):
    """A fresh pipe pool for the test (the worker's one is module-level)."""
    fresh = pipes.PipePool(limit=8, keep=4)
    monkeypatch.setattr(pipes, "POOL", fresh)
    yield fresh
    fresh.configure(limit=0, keep=0)  # close what it kept


async def test_an_idle_splice_relay_holds_no_pipe(nursery, pool):
    client, upstream, relay, closed = _setup(True)
    nursery.start_soon(relay.run, nursery)
    await client.send_all(b"ping")
    assert await upstream.receive_some() == b"ping"
    await upstream.send_all(b"pong")
    assert await client.receive_some() == b"pong"
    await trio.testing.wait_all_tasks_blocked()
    # Both directions wait for their source with the pipes given back, kept for the next burst.
    assert pool.in_use == 0 and pool.kept >= 1 and pool.open <= 2
    await client.send_all(b"again")
    assert await upstream.receive_some() == b"again"
    await _end_both_ways(client, upstream, relay, closed)
    assert relay.pipe_fallbacks == 0
    assert pool.in_use == 0


async def test_without_a_pipe_a_burst_is_copied_and_arrives_intact(nursery, pool):
    pool.configure(limit=0, keep=0)
    client, upstream, relay, closed = _setup(True)
    nursery.start_soon(relay.run, nursery)
    await _send_through(nursery, client, upstream, bytes(range(256)) * 20_000)  # ~5 MB
    assert relay.pipe_fallbacks > 0 and pool.unavailable >= relay.pipe_fallbacks and pool.open == 0


async def test_relays_share_a_small_pool_without_leaking_a_pipe(nursery, pool):
    pool.configure(limit=2, keep=1)
    relays = [_setup(True) for _ in range(6)]
    for _, _, relay, _ in relays:
        nursery.start_soon(relay.run, nursery)
    payload = bytes(range(256)) * 4_000  # ~1 MB each, all at once

    async def one(client, upstream):
        async with trio.open_nursery() as inner:
            await _send_through(inner, client, upstream, payload)
        await upstream.send_eof()

    async with trio.open_nursery() as clients:
        for client, upstream, _, _ in relays:
            clients.start_soon(one, client, upstream)
    await trio.testing.wait_all_tasks_blocked()
    assert all(closed == [relay] for _, _, relay, closed in relays)
    assert pool.open <= 2 and pool.in_use == 0 and pool.kept <= 1


async def test_a_reset_discards_the_pipe_it_held(nursery, pool):
    client, upstream, relay, closed = _setup(True)
    nursery.start_soon(relay.run, nursery)
    await client.send_all(b"x")
    assert await upstream.receive_some() == b"x"
    await upstream.aclose()
    with trio.fail_after(2):
        while not closed:
            try:
                await client.send_all(b"more" * 1000)
            except trio.BrokenResourceError:
                pass
            await trio.sleep(0.01)
    assert relay.outcome == RESET
    assert pool.in_use == 0


def test_pool_bounds():
    pool = pipes.PipePool(limit=3, keep=1)
    taken = [pool.take() for _ in range(4)]
    assert taken[3] is None and pool.unavailable == 1 and pool.open == 3
    assert all(p.capacity >= 65536 for p in taken[:3])
    for p in taken[:3]:
        pool.give(p)
    assert pool.open == 1 and pool.kept == 1  # past `keep`, given pipes are closed
    again = pool.take()
    assert again is taken[0]  # the one kept: the first given back
    pool.give(again)
    pool.configure(limit=3, keep=0)
    assert pool.open == 0


# ---------------------------------------------------------------- parking idle relays


def _task_count() -> int:
    todo, count = [trio.lowlevel.current_root_task()], 0
    while todo:
        task = todo.pop()
        count += 1
        todo.extend(child for nursery in task.child_nurseries for child in nursery.child_tasks)
    return count


@pytest.mark.parametrize("use_splice", [True, False], ids=["splice", "copy"])
async def test_an_idle_relay_parks_without_tasks_and_wakes_on_input(nursery, use_splice):
    client, upstream, relay, closed = _setup(use_splice)
    nursery.start_soon(relay.run, nursery)
    await client.send_all(b"ping")
    assert await upstream.receive_some() == b"ping"
    tasks_busy = _task_count()
    await trio.sleep(PARK_AFTER + SWEEP_EVERY + 0.2)
    assert relay._parked and PARKING.count() == 1
    # Both pumps ended; the worker-wide sweeper and parking tasks took their place.
    assert _task_count() == tasks_busy - 2 + 1
    await upstream.send_all(b"pong")  # input on either side wakes it
    assert await client.receive_some() == b"pong"
    assert not relay._parked and PARKING.count() == 0
    await client.send_all(b"again")
    assert await upstream.receive_some() == b"again"
    await _end_both_ways(client, upstream, relay, closed)
    assert (relay.rx_bytes, relay.tx_bytes) == (9, 4)


async def test_a_parked_relay_still_times_out(nursery, autojump_clock):
    client, upstream, relay, closed = _setup(True, idle=30.0)
    nursery.start_soon(relay.run, nursery)
    await client.send_all(b"x")
    assert await upstream.receive_some() == b"x"
    start = trio.current_time()
    await trio.sleep(5)
    assert relay._parked
    while not closed:
        await trio.sleep(0.1)
    assert closed == [relay] and relay.outcome == IDLE_TIMEOUT
    assert relay.down.fileno() == -1 and PARKING.count() == 0
    assert await client.receive_some() == b""  # a plain close
    assert 30 <= trio.current_time() - start < 33


async def test_a_parked_relay_is_handed_over_or_resumes(nursery):
    client, upstream, relay, closed = _setup(True)
    nursery.start_soon(relay.run, nursery)
    await client.send_all(b"x")
    assert await upstream.receive_some() == b"x"
    await trio.sleep(PARK_AFTER + SWEEP_EVERY + 0.2)
    assert relay._parked
    offered = []

    async def refuse(r):
        offered.append(r.migration_state())
        return False

    assert relay.stop(refuse)
    await trio.testing.wait_all_tasks_blocked()
    assert offered and not relay._parked and PARKING.count() == 0
    await client.send_all(b"after")  # refused: it relays on, here
    assert await upstream.receive_some() == b"after"
    await trio.sleep(PARK_AFTER + SWEEP_EVERY + 0.2)
    assert relay._parked

    async def accept(r):
        return True

    assert relay.stop(accept)
    await trio.testing.wait_all_tasks_blocked()
    assert relay.outcome == MIGRATED and closed == [relay] and PARKING.count() == 0


async def test_a_handover_that_overtakes_a_park_resumes_cleanly(nursery):
    client, upstream, relay, closed = _setup(True)
    nursery.start_soon(relay.run, nursery)
    await client.send_all(b"x")
    assert await upstream.receive_some() == b"x"
    await trio.testing.wait_all_tasks_blocked()
    now = trio.current_time()
    relay.sweep(now)  # takes note of the move
    relay.sweep(now + 10)  # then long idle: parking begins, the pumps are cancelled
    assert relay._parking
    refused = []

    async def refuse(r):
        refused.append(r)
        return False

    assert relay.stop(refuse)  # a migration, before the pumps have stopped: it goes first
    await trio.testing.wait_all_tasks_blocked()
    assert refused == [relay] and not relay._parked and not relay._parking
    await client.send_all(b"y")  # refused: relaying on, here
    assert await upstream.receive_some() == b"y"
    await _end_both_ways(client, upstream, relay, closed)
