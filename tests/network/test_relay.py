"""Relay unit tests over socketpairs, for both the splice and the copy pump."""

from __future__ import annotations

import socket

import pytest
import trio

from proxy.network.relay import CLOSED, IDLE_TIMEOUT, RESET, Relay


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
    payload = bytes(range(256)) * 40_000  # ~10 MB

    async def send():
        await client.send_all(payload)
        await client.send_eof()

    nursery.start_soon(send)
    got = bytearray()
    async for data in upstream:
        got += data
    assert got == payload


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
