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

import outcome
import trio
from mypy_extensions import mypyc_attr
from trio._core import _run as _trio_run
from trio._core._io_epoll import EpollIOManager
from trio._core._run import GLOBAL_RUN_CONTEXT
from trio._core._traps import Abort, WaitTaskRescheduled, _async_yield

_EDGE_FLAGS = select.EPOLLIN | select.EPOLLOUT | select.EPOLLET
_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_SUCCEEDED = Abort.SUCCEEDED
_Value = outcome.Value

# trio's own waits, for a run without this manager. Module globals, not import bindings, so
# the in-process benchmarks (tests/http/bench_*.py, fake sockets) can stand in for them.
trio_wait_readable = trio.lowlevel.wait_readable
trio_wait_writable = trio.lowlevel.wait_writable

SUPPORTED = ("0.30.", "0.31.", "0.32.", "0.33.", "0.34.", "0.35.")


class Edge:
    """A socket registered edge-triggered: who waits on it, and what came while nobody did.
    Its two trap messages are made once, not per wait (the run loop only reads them)."""

    __slots__ = ("ref", "read_task", "write_task", "readable", "writable", "read_trap", "write_trap")

    def __init__(self, sock: socket.socket) -> None:
        self.ref: Any = weakref.ref(sock)
        self.read_task: Any = None
        self.write_task: Any = None
        self.readable = False
        self.writable = False
        # A cycle (trap -> bound method -> self), broken by notify_closing.
        self.read_trap: Any = WaitTaskRescheduled(self.abort_read)
        self.write_trap: Any = WaitTaskRescheduled(self.abort_write)

    def abort_read(self, _raise_cancel: Any) -> Any:
        self.read_task = None
        return _SUCCEEDED

    def abort_write(self, _raise_cancel: Any) -> Any:
        self.write_task = None
        return _SUCCEEDED


@mypyc_attr(native_class=False)
class EdgeEpollIOManager(EpollIOManager):
    """trio's epoll manager, with edge-triggered registrations for the sockets that
    `wait_readable` and `wait_writable` below wait on."""

    def __init__(self) -> None:
        super().__init__()
        self.edge: dict[int, Edge] = {}

    def get_events(self, timeout: float) -> Any:
        # trio sizes the buffer by its registrations; edge sockets are registered too.
        n = len(self._registered) + len(self.edge)
        return self._epoll.poll(timeout, 64 if n < 64 else 1024 if n > 1024 else n)

    def process_events(self, events: Any) -> None:
        edge = self.edge
        reschedule = _trio_run.reschedule
        for fd, flags in events:
            st = edge.get(fd)
            if st is None:
                super().process_events([(fd, flags)])
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

    def adopt(self, sock: socket.socket, fd: int) -> Edge | None:
        """Register the socket edge-triggered; None while trio's own path has a waiter on
        this fd (the wait then goes that way too)."""
        if fd in self._registered:
            return None
        st = Edge(sock)
        try:
            self._epoll.register(fd, _EDGE_FLAGS)
        except FileExistsError:  # registered by trio's path before (EPOLLONESHOT, now idle)
            self._epoll.modify(fd, _EDGE_FLAGS)
        self.edge[fd] = st
        return st

    async def _epoll_wait(self, fd: Any, attr_name: str) -> None:
        # trio's wait_readable/wait_writable: level-triggered, unless the fd is ours.
        sock = fd
        if not isinstance(fd, int):
            fd = fd.fileno()
        st = self.edge.get(fd)
        if st is not None:
            mine = st.ref()
            if mine is not None and mine.fileno() == fd:
                if attr_name == "read_task":
                    await wait_readable(mine)
                else:
                    await wait_writable(mine)
                return
            del self.edge[fd]  # closed without notify_closing; the kernel dropped it
        await EpollIOManager._epoll_wait(self, sock, attr_name)

    def notify_closing(self, fd: Any) -> None:
        if not isinstance(fd, int):
            fd = fd.fileno()
        st = self.edge.pop(fd, None)
        if st is None:
            EpollIOManager.notify_closing(self, fd)
            return
        closed = trio.ClosedResourceError("another task closed this fd")
        for task in (st.read_task, st.write_task):
            if task is not None:
                _trio_run.reschedule(task, outcome.Error(closed))
        st.read_task = st.write_task = st.read_trap = st.write_trap = None
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass


def supported() -> bool:
    return trio.__version__.startswith(SUPPORTED)


def install() -> bool:
    """Make the next trio.run in this process use edge-triggered epoll. False (and nothing
    changed) on a trio this was not written against."""
    if not supported():
        return False
    setattr(_trio_run, "TheIOManager", EdgeEpollIOManager)  # noqa: B010 - a module global trio reads at run start
    return True


def mode() -> str:
    """For the worker's start log: "edge" inside a run with this manager, else "trio"."""
    try:
        io = GLOBAL_RUN_CONTEXT.runner.io_manager
    except AttributeError:
        return "trio"
    return "edge" if type(io) is EdgeEpollIOManager else "trio"


def _edge_of(sock: socket.socket) -> Edge | None:
    """The socket's entry in this run's edge-triggered manager, made on first use; None when
    the run has trio's own manager, or trio's path has a waiter on the socket now."""
    io = GLOBAL_RUN_CONTEXT.runner.io_manager
    if type(io) is not EdgeEpollIOManager:
        return None
    fd = sock.fileno()
    st = io.edge.get(fd)
    if st is not None and st.ref() is sock:
        return st
    return io.adopt(sock, fd)


async def wait_readable(sock: socket.socket) -> None:
    """trio.lowlevel.wait_readable for a caller that waits only after its recv said EAGAIN, or
    before an answer that cannot have come yet (see the module's docstring)."""
    st = _edge_of(sock)
    if st is None:
        await trio_wait_readable(sock)
        return
    if st.readable:  # something came since the last wait: let the caller look
        st.readable = False
        return
    if st.read_task is not None:
        raise trio.BusyResourceError("another task is already reading this socket")
    st.read_task = GLOBAL_RUN_CONTEXT.task
    woke = await _async_yield(st.read_trap)
    if type(woke) is not _Value:
        woke.unwrap()  # Cancelled, or ClosedResourceError from notify_closing


async def wait_writable(sock: socket.socket) -> None:
    """trio.lowlevel.wait_writable, on the same terms as wait_readable."""
    st = _edge_of(sock)
    if st is None:
        await trio_wait_writable(sock)
        return
    if st.writable:
        st.writable = False
        return
    if st.write_task is not None:
        raise trio.BusyResourceError("another task is already writing this socket")
    st.write_task = GLOBAL_RUN_CONTEXT.task
    woke = await _async_yield(st.write_trap)
    if type(woke) is not _Value:
        woke.unwrap()
