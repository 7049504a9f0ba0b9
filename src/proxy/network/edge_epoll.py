"""Edge-triggered epoll for trio's run loop: one epoll_ctl per socket, not one per wait.

trio registers every wait with EPOLLONESHOT, so each `wait_readable` costs an epoll_ctl, a
waiters object made and dropped, and two passes through `_update_registrations`. A proxied
HTTP/1 request waits twice (for the client's next request, for the upstream's answer), so that
is twice per request. Here a socket is registered once, edge-triggered for input and output,
and stays registered until `notify_closing`; a wait only parks the task, and an event only
reschedules it. Go's netpoller works the same way.

Edge-triggered readiness is reported once per change, so an event that comes while nobody
waits is kept as a flag, and the next wait on that socket returns at once (the caller then
tries its I/O, and waits again if it would still block). That makes a wait mean "until
something happened since the last wait", which is right for callers that wait only after
their I/O said EAGAIN, or after they started an exchange whose answer cannot have come yet:
SockIO and the HTTP/1 server do just that, and they are the only callers of `wait_readable`
and `wait_writable` here. A caller that waits while readiness is still pending from an event it
already consumed (an accept loop that stops after a batch, say) would sleep until the next
change, so every other wait keeps trio's level-triggered path. A trio wait on a socket that is
registered here is served here too, so the socket's registration never changes mode.

A socket closed without `notify_closing` leaves the kernel's registration gone with it; the
entry here holds the socket only weakly and is checked against the socket on the next wait on
its fd, so a new socket that reuses the number is registered afresh.

Installed for a whole run with `install()` before `trio.run` (the worker's entry point); with
any other trio run, or a trio whose epoll manager is not the one this was written against,
`wait_readable` and `wait_writable` below are trio's own.
"""

from __future__ import annotations

import select
import socket
import weakref
from typing import Any

import trio

_EDGE_FLAGS = select.EPOLLIN | select.EPOLLOUT | select.EPOLLET
_IN = select.EPOLLIN
_OUT = select.EPOLLOUT

try:  # trio's internals, as of the versions in SUPPORTED; install() refuses any other
    from trio._core import _run as _trio_run
    from trio._core._io_epoll import EpollIOManager
    from trio._core._run import GLOBAL_RUN_CONTEXT
    from trio._core._traps import Abort, wait_task_rescheduled

    _AVAILABLE = True
except ImportError:  # pragma: no cover - not Linux, or trio moved them
    _AVAILABLE = False

SUPPORTED = ("0.30.", "0.31.", "0.32.", "0.33.", "0.34.", "0.35.")


class _Edge:
    """A socket registered edge-triggered: who waits on it, and what came while nobody did."""

    __slots__ = ("ref", "read_task", "write_task", "readable", "writable")

    def __init__(self, sock: socket.socket) -> None:
        self.ref = weakref.ref(sock)
        self.read_task: Any = None
        self.write_task: Any = None
        # The first event after registration says what the socket is ready for already.
        self.readable = False
        self.writable = False

    def abort_read(self, _raise_cancel: Any) -> Any:
        self.read_task = None
        return Abort.SUCCEEDED

    def abort_write(self, _raise_cancel: Any) -> Any:
        self.write_task = None
        return Abort.SUCCEEDED


if _AVAILABLE:

    class EdgeEpollIOManager(EpollIOManager):  # type: ignore[misc]
        __slots__ = ("_edge",)

        def __init__(self) -> None:
            super().__init__()
            self._edge: dict[int, _Edge] = {}

        def get_events(self, timeout: float) -> Any:
            # trio sizes the buffer by its registrations; edge sockets are registered too.
            n = len(self._registered) + len(self._edge)
            return self._epoll.poll(timeout, 64 if n < 64 else 1024 if n > 1024 else n)

        def process_events(self, events: Any) -> None:
            edge = self._edge
            reschedule = _trio_run.reschedule
            for fd, flags in events:
                st = edge.get(fd)
                if st is None:
                    super().process_events(((fd, flags),))
                    continue
                # As trio does: an error or hangup wakes both sides.
                if flags & ~_IN:
                    task = st.write_task
                    if task is not None:
                        st.write_task = None
                        reschedule(task)
                    else:
                        st.writable = True
                if flags & ~_OUT:
                    task = st.read_task
                    if task is not None:
                        st.read_task = None
                        reschedule(task)
                    else:
                        st.readable = True

        def _edge_for(self, sock: socket.socket, fd: int) -> _Edge | None:
            """The socket's entry, registering it on first use; None while trio's own path has
            a waiter on this fd (then this wait goes that way too)."""
            st = self._edge.get(fd)
            if st is not None and st.ref() is sock:
                return st
            if fd in self._registered:
                return None
            st = _Edge(sock)
            try:
                self._epoll.register(fd, _EDGE_FLAGS)
            except FileExistsError:  # registered by trio's path before (EPOLLONESHOT, now idle)
                self._epoll.modify(fd, _EDGE_FLAGS)
            self._edge[fd] = st
            return st

        async def edge_wait_readable(self, sock: socket.socket) -> None:
            fd = sock.fileno()
            st = self._edge_for(sock, fd)
            if st is None:
                await EpollIOManager._epoll_wait(self, fd, "read_task")
                return
            if st.readable:  # something came since the last wait: let the caller look
                st.readable = False
                return
            if st.read_task is not None:
                raise trio.BusyResourceError("another task is already reading this socket")
            st.read_task = GLOBAL_RUN_CONTEXT.task
            await wait_task_rescheduled(st.abort_read)

        async def edge_wait_writable(self, sock: socket.socket) -> None:
            fd = sock.fileno()
            st = self._edge_for(sock, fd)
            if st is None:
                await EpollIOManager._epoll_wait(self, fd, "write_task")
                return
            if st.writable:
                st.writable = False
                return
            if st.write_task is not None:
                raise trio.BusyResourceError("another task is already writing this socket")
            st.write_task = GLOBAL_RUN_CONTEXT.task
            await wait_task_rescheduled(st.abort_write)

        async def _epoll_wait(self, fd: Any, attr_name: str) -> None:
            # trio's wait_readable/wait_writable: level-triggered, unless the fd is ours.
            sock = fd
            if not isinstance(fd, int):
                fd = fd.fileno()
            st = self._edge.get(fd)
            if st is not None:
                mine = st.ref()
                if mine is not None and mine.fileno() == fd:
                    if attr_name == "read_task":
                        await self.edge_wait_readable(mine)
                    else:
                        await self.edge_wait_writable(mine)
                    return
                del self._edge[fd]  # closed without notify_closing; the kernel dropped it
            await EpollIOManager._epoll_wait(self, sock, attr_name)

        def notify_closing(self, fd: Any) -> None:
            if not isinstance(fd, int):
                fd = fd.fileno()
            st = self._edge.pop(fd, None)
            if st is None:
                EpollIOManager.notify_closing(self, fd)
                return
            closed = trio.ClosedResourceError("another task closed this fd")
            for task in (st.read_task, st.write_task):
                if task is not None:
                    _trio_run.reschedule(task, _outcome_error(closed))
            st.read_task = st.write_task = None
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass

    def _outcome_error(exc: BaseException) -> Any:
        import outcome

        return outcome.Error(exc)


def supported() -> bool:
    return _AVAILABLE and trio.__version__.startswith(SUPPORTED)


def install() -> bool:
    """Make the next trio.run in this process use edge-triggered epoll. False (and nothing
    changed) on a trio this was not written against."""
    if not supported():
        return False
    _trio_run.TheIOManager = EdgeEpollIOManager
    return True


async def wait_readable(sock: socket.socket) -> None:
    io = GLOBAL_RUN_CONTEXT.runner.io_manager
    if type(io) is EdgeEpollIOManager:
        await io.edge_wait_readable(sock)
    else:
        await trio.lowlevel.wait_readable(sock)


async def wait_writable(sock: socket.socket) -> None:
    io = GLOBAL_RUN_CONTEXT.runner.io_manager
    if type(io) is EdgeEpollIOManager:
        await io.edge_wait_writable(sock)
    else:
        await trio.lowlevel.wait_writable(sock)
