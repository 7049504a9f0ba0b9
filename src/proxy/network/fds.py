"""Running out of file descriptors (or socket memory): wait a moment, count, log once per interval.

A worker under its RLIMIT_NOFILE gets EMFILE from accept() or from socket() for an upstream.
Neither may cost a traceback per connection, nor take a listener down. What happens instead:
- every accept loop of the worker pauses for ACCEPT_PAUSE, so new clients wait in the kernel's
  backlog for fds to come back rather than be accepted only to be closed;
- a connection that needs an upstream socket waits for an fd (`new_socket`, polling every
  RETRY_EVERY) within its connect timeout; when none comes, OutOfDescriptors: nothing was
  dialled, and the caller closes the client (TCP) or answers 503 (HTTP), and counts it;
- the log gets one `worker.out_of_fds` line per LOG_INTERVAL with the number of refusals since
  the previous one (one run with 5,000 refused connections logged 5,000 tracebacks before).
One state per worker process (`EXHAUSTION`); a worker is single-threaded.
"""

from __future__ import annotations

import errno
import socket

import trio

from proxy.log import Throttle, get_logger

log = get_logger("worker")

OUT_OF_RESOURCES_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_PAUSE = 0.1
RETRY_EVERY = 0.02
LOG_INTERVAL = 10.0


class OutOfDescriptors(Exception):
    """No socket could be made for an upstream (EMFILE and kin) within the connect timeout:
    nothing was dialled. Not the host's failure: neither counted on it nor retried elsewhere."""


class Exhaustion:
    __slots__ = ("resume_at", "throttle")

    def __init__(self) -> None:
        self.resume_at = 0.0
        self.throttle = Throttle(LOG_INTERVAL)

    def hit(self, where: str, error: str) -> None:
        """An fd was refused (`where`: accept or upstream): pause accepting, log if due."""
        now = trio.current_time()
        self.resume_at = now + ACCEPT_PAUSE
        count, since = self.throttle.due(now)
        if count:
            log.warning("worker.out_of_fds", at=where, error=error, refusals=count, **since)

    async def wait(self) -> None:
        """Sleep out a pause that is on (no checkpoint otherwise)."""
        if self.resume_at and trio.current_time() < self.resume_at:
            await trio.sleep_until(self.resume_at)


EXHAUSTION = Exhaustion()


async def new_socket(family: int) -> socket.socket:
    """A non-blocking stream socket, waiting for an fd while the process has none. The caller
    bounds the wait (its connect timeout) and turns the cancel into OutOfDescriptors."""
    while True:
        try:
            return socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        except OSError as exc:
            if exc.errno not in OUT_OF_RESOURCES_ERRNOS:
                raise
            EXHAUSTION.hit("upstream", exc.strerror or str(exc))
        await trio.sleep(RETRY_EVERY)


def drop_unread(sock: socket.socket) -> None:
    """Read and drop what a client we cannot serve has sent, so that closing it sends a FIN,
    not a RST (close() with unread bytes resets the connection)."""
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass
