"""Edge-triggered epoll under trio: wakeups, cancellation, closes, fd reuse, mixing with
trio's own waits. Each test is its own trio.run with the manager installed, on real sockets."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio
import trio.testing
from trio._core import _run as trio_run

from proxy.network import edge_epoll
from proxy.network.edge_epoll import wait_readable, wait_writable

pytestmark = pytest.mark.skipif(not edge_epoll.supported(), reason="trio version not supported")


@pytest.fixture
def run_edge() -> Iterator[Callable[..., Any]]:
    before = trio_run.TheIOManager
    assert edge_epoll.install()

    def run(fn: Callable[..., Any], *args: Any) -> Any:
        async def main() -> Any:
            assert type(trio.lowlevel.current_root_task()._runner.io_manager) is edge_epoll.EdgeEpollIOManager
            return await fn(*args)

        return trio.run(main)

    yield run
    trio_run.TheIOManager = before


def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def close(*socks: socket.socket) -> None:
    """As SockIO closes: tell trio (and the edge manager) first."""
    for sock in socks:
        trio.lowlevel.notify_closing(sock)
        sock.close()


def io_manager() -> Any:
    return trio.lowlevel.current_root_task()._runner.io_manager


def test_a_wait_wakes_when_bytes_come_and_registers_the_socket_once(run_edge: Callable[..., Any]) -> None:
    async def go() -> None:
        a, b = pair()
        got: list[bytes] = []

        async def reader() -> None:
            for _ in range(3):
                while True:
                    try:
                        got.append(a.recv(100))
                        break
                    except BlockingIOError:
                        await wait_readable(a)

        async with trio.open_nursery() as n:
            n.start_soon(reader)
            for word in (b"one", b"two", b"three"):
                await trio.testing.wait_all_tasks_blocked()
                b.send(word)
        assert got == [b"one", b"two", b"three"]
        assert a.fileno() in io_manager().edge  # still registered: no epoll_ctl per wait
        assert a.fileno() not in io_manager()._registered
        close(a, b)

    run_edge(go)


def test_an_event_while_nobody_waits_makes_the_next_wait_return_at_once(run_edge: Callable[..., Any]) -> None:
    async def go() -> None:
        a, b = pair()
        with pytest.raises(BlockingIOError):
            a.recv(10)
        with trio.move_on_after(0.05):  # registers a and parks; nothing comes
            await wait_readable(a)
        b.send(b"x")
        await trio.sleep(0.01)  # the event arrives while nobody waits
        with trio.fail_after(1):
            await wait_readable(a)  # would sleep forever if the edge were lost
        assert a.recv(10) == b"x"
        close(a, b)

    run_edge(go)


def test_a_cancelled_wait_leaves_the_socket_usable(run_edge: Callable[..., Any]) -> None:
    async def go() -> None:
        a, b = pair()
        for _ in range(3):
            with trio.move_on_after(0.01) as scope:
                await wait_readable(a)
            assert scope.cancelled_caught
        assert io_manager().edge[a.fileno()].read_task is None

        async def later() -> None:
            await trio.sleep(0.02)
            b.send(b"y")

        async with trio.open_nursery() as n:
            n.start_soon(later)
            with trio.fail_after(1):
                await wait_readable(a)
        assert a.recv(10) == b"y"
        close(a, b)

    run_edge(go)


def test_notify_closing_wakes_both_waiters_with_closed_resource_error(run_edge: Callable[..., Any]) -> None:
    async def go() -> None:
        a, b = pair()
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        try:
            while True:
                a.send(b"z" * 65536)
        except BlockingIOError:
            pass
        errors: list[type[BaseException]] = []

        async def wait(fn: Callable[..., Any]) -> None:
            try:
                await fn(a)
            except trio.ClosedResourceError as exc:
                errors.append(type(exc))

        async with trio.open_nursery() as n:
            n.start_soon(wait, wait_readable)
            n.start_soon(wait, wait_writable)
            await trio.testing.wait_all_tasks_blocked()
            trio.lowlevel.notify_closing(a)
        assert errors == [trio.ClosedResourceError, trio.ClosedResourceError]
        assert a.fileno() not in io_manager().edge
        a.close()
        b.close()

    run_edge(go)


def test_a_blocked_writer_wakes_when_the_peer_drains(run_edge: Callable[..., Any]) -> None:
    async def go() -> None:
        a, b = pair()
        sent = 0
        total = 4 * 1024 * 1024
        received = 0

        async def writer() -> None:
            nonlocal sent
            chunk = b"w" * 65536
            while sent < total:
                try:
                    sent += a.send(chunk[: total - sent])
                except BlockingIOError:
                    await wait_writable(a)

        async def reader() -> None:
            nonlocal received
            while received < total:
                try:
                    received += len(b.recv(65536))
                except BlockingIOError:
                    await wait_readable(b)

        with trio.fail_after(10):
            async with trio.open_nursery() as n:
                n.start_soon(writer)
                n.start_soon(reader)
        assert received == total
        close(a, b)

    run_edge(go)


def test_a_socket_closed_without_notice_does_not_strand_the_next_one_on_its_fd(run_edge: Callable[..., Any]) -> None:
    async def go() -> None:
        a, b = pair()
        with trio.move_on_after(0.01):
            await wait_readable(a)
        fd = a.fileno()
        a.close()  # no notify_closing: the kernel drops the registration, our entry goes stale
        b.close()
        c, d = pair()
        c2 = c if c.fileno() == fd else d
        other = d if c2 is c else c
        assert c2.fileno() == fd  # the number came back

        async def later() -> None:
            await trio.sleep(0.02)
            other.send(b"q")

        async with trio.open_nursery() as n:
            n.start_soon(later)
            with trio.fail_after(1):
                await wait_readable(c2)
        assert c2.recv(10) == b"q"
        close(c, d)

    run_edge(go)


def test_trios_own_wait_on_an_edge_socket_is_served_edge_triggered(run_edge: Callable[..., Any]) -> None:
    async def go() -> None:
        a, b = pair()
        with trio.move_on_after(0.01):
            await wait_readable(a)  # a is ours now

        async def later() -> None:
            await trio.sleep(0.02)
            b.send(b"t")

        async with trio.open_nursery() as n:
            n.start_soon(later)
            with trio.fail_after(1):
                await trio.lowlevel.wait_readable(a)  # not flipped back to EPOLLONESHOT
        assert a.fileno() in io_manager().edge
        assert a.fileno() not in io_manager()._registered
        assert a.recv(10) == b"t"
        b.send(b"u")
        with trio.fail_after(1):
            await wait_readable(a)
        assert a.recv(10) == b"u"
        close(a, b)

    run_edge(go)


def test_a_socket_trio_used_first_is_taken_over(run_edge: Callable[..., Any]) -> None:
    async def go() -> None:
        a, b = pair()
        b.send(b"1")
        await trio.lowlevel.wait_readable(a)  # trio's path: EPOLLONESHOT, idle afterwards
        assert a.recv(10) == b"1"
        b.send(b"2")
        with trio.fail_after(1):
            await wait_readable(a)  # epoll_ctl ADD fails with EEXIST: MOD to edge-triggered
        assert a.recv(10) == b"2"
        assert a.fileno() in io_manager().edge
        close(a, b)

    run_edge(go)


def test_hangup_wakes_a_reader(run_edge: Callable[..., Any]) -> None:
    async def go() -> None:
        a, b = pair()

        async def later() -> None:
            await trio.sleep(0.02)
            b.close()

        async with trio.open_nursery() as n:
            n.start_soon(later)
            with trio.fail_after(1):
                await wait_readable(a)
        assert a.recv(10) == b""
        close(a)

    run_edge(go)


def test_two_readers_on_one_socket_is_an_error(run_edge: Callable[..., Any]) -> None:
    async def go() -> None:
        a, b = pair()
        async with trio.open_nursery() as n:
            n.start_soon(wait_readable, a)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await wait_readable(a)
            n.cancel_scope.cancel()
        close(a, b)

    run_edge(go)


def test_without_install_the_waits_are_trios_own() -> None:
    async def go() -> None:
        assert type(io_manager()) is not edge_epoll.EdgeEpollIOManager
        a, b = pair()
        b.send(b"x")
        await wait_readable(a)
        assert a.recv(10) == b"x"
        assert not hasattr(io_manager(), "edge")
        a.close()
        b.close()

    trio.run(go)
