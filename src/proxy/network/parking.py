"""Parking: idle connections wait without a task, in one epoll set per worker.

A trio task waiting on a socket costs its coroutine frames, its cancel scope and trio's wait
bookkeeping: ~3 kB for each of a TCP pair's two pump tasks, ~4 kB for an HTTP/1.1 keep-alive
connection's task, most of their footprint when they idle (as most sidecar connections do,
most of the time). So a connection idle for a while (0.25 s: relay.py's sweeper decides for
TCP pairs, the HTTP watchdog for HTTP/1) ends its tasks, keeping its state in plain objects,
and parks its sockets here: registered for input in this worker's own epoll set, whose single
fd one task waits on. When input (or EOF, or an error) comes on a parked socket, the
connection is unparked and its `wake` callback starts its tasks again, where they stopped.

A parked connection holds no pipe, no task and no trio registration: only its sockets, its
state object and an entry here per socket. Parking costs an epoll_ctl per socket, waking
another and a task start per task: nothing beside a quarter second of quiet.
"""

from __future__ import annotations

import select
from collections.abc import Callable
from typing import Any

import trio

_IN = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLERR | select.EPOLLHUP


class _Entry:
    __slots__ = ("key", "fds", "wake", "stats")

    def __init__(self, key: Any, fds: tuple[int, ...], wake: Callable[[], None], stats: Any) -> None:
        self.key = key
        self.fds = fds
        self.wake = wake
        self.stats = stats


class Parking:
    """The worker's parked connections. It keeps each listener's `downstream_cx_parked` gauge
    (the `stats` given to `park`), so callers only park and unpark."""

    __slots__ = ("_epoll", "_by_fd", "_by_key", "_scope")

    def __init__(self) -> None:
        self._epoll: select.epoll | None = None
        self._by_fd: dict[int, _Entry] = {}
        self._by_key: dict[Any, _Entry] = {}
        self._scope: trio.CancelScope | None = None  # the parking task's, while it runs

    def count(self) -> int:
        """Connections parked now."""
        return len(self._by_key)

    def open(self) -> None:
        """Make the epoll set now (worker start), not when the first connection parks: the
        process may be out of fds by then."""
        if self._epoll is None:
            self._epoll = select.epoll()

    def park(self, key: Any, fds: tuple[int, ...], wake: Callable[[], None], nursery: trio.Nursery, stats: Any = None) -> bool:
        """Watch `fds` for input; on the first, unpark `key` and call `wake()` (in the
        parking task: it must only start tasks, not block). False if it cannot be parked
        (no fd for the epoll set, or the kernel's watch limit): the caller carries on."""
        try:
            self.open()
        except OSError:
            return False
        entry = _Entry(key, fds, wake, stats)
        epoll = self._epoll
        assert epoll is not None
        try:
            for fd in fds:
                epoll.register(fd, _IN)
                self._by_fd[fd] = entry
        except OSError:
            self._forget(entry)
            return False
        self._by_key[key] = entry
        if stats is not None:
            stats.downstream_cx_parked += 1
        if self._scope is None:
            self._scope = trio.CancelScope()
            nursery.start_soon(self._run, self._scope, name="parking")
        return True

    def unpark(self, key: Any) -> bool:
        """Stop watching `key`'s sockets (it is closing, or handed over). False if not parked."""
        entry = self._by_key.get(key)
        if entry is None:
            return False
        self._forget(entry)
        if not self._by_key and self._scope is not None:
            self._scope.cancel()  # nothing left to watch: the task ends (a nursery may be waiting)
        return True

    def _forget(self, entry: _Entry) -> None:
        epoll = self._epoll
        assert epoll is not None
        for fd in entry.fds:
            if self._by_fd.pop(fd, None) is not None:
                try:
                    epoll.unregister(fd)
                except OSError:
                    pass  # already closed
        if self._by_key.pop(entry.key, None) is not None and entry.stats is not None:
            entry.stats.downstream_cx_parked -= 1

    async def _run(self, scope: trio.CancelScope) -> None:
        epoll = self._epoll
        assert epoll is not None
        try:
            with scope:
                while self._by_key:
                    await trio.lowlevel.wait_readable(epoll.fileno())
                    for fd, _ in epoll.poll(0, 256):
                        entry = self._by_fd.get(fd)
                        if entry is not None:
                            self._wake(entry)
        finally:
            self._scope = None
            # Cancelled with connections still parked (a drain's deadline, a fast stop): wake
            # them all, so that they end as their tasks would have, in the same nursery.
            for entry in list(self._by_key.values()):
                self._wake(entry)

    def _wake(self, entry: _Entry) -> None:
        self._forget(entry)
        entry.wake()


PARKING = Parking()  # one per worker process
