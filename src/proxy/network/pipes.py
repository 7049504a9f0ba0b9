"""A bounded per-worker pool of splice pipes, lent to a relay direction only while bytes move.

A splice relay moves socket → pipe → socket. Holding a pipe per direction for a connection's
whole life costs 4 fds per TCP pair on top of its 2 sockets: under a 20,000-fd limit only
3,333 pairs fit, almost all of them idle. So, as HAProxy does (`maxpipes`), a direction takes a
pipe when its source turns readable and gives it back as soon as the pipe is empty again and
the source would block: an idle pair holds 2 fds, and a busy worker needs about as many pipes
as it has directions moving bytes at that instant.

Pipes given back empty are kept (up to `keep`) for the next burst, since creating one is two
syscalls plus an F_SETPIPE_SZ. At most `limit` pipes exist at once (in use and kept); a
direction that finds none (the limit reached, or pipe2 out of fds) copies that burst through
userspace instead, so running short of pipes costs CPU, never a connection. `unavailable`
counts those bursts. One pool per worker process (`POOL`); a worker is single-threaded.
"""

from __future__ import annotations

import fcntl
import os

PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

DEFAULT_LIMIT = 1024
DEFAULT_KEEP = 64


class Pipe:
    """One pipe: its two fds and the byte capacity the kernel granted."""

    __slots__ = ("read_fd", "write_fd", "capacity")

    def __init__(self, read_fd: int, write_fd: int, capacity: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.capacity = capacity

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


class PipePool:
    __slots__ = ("limit", "keep", "size", "open", "unavailable", "_free")

    def __init__(self, limit: int = DEFAULT_LIMIT, keep: int = DEFAULT_KEEP, size: int = PIPE_SIZE) -> None:
        self.limit = limit
        self.keep = keep
        self.size = size
        self.open = 0  # pipes that exist: lent out plus kept in `_free`
        self.unavailable = 0  # takes that found no pipe (the caller copied that burst)
        self._free: list[Pipe] = []

    @property
    def in_use(self) -> int:
        return self.open - len(self._free)

    @property
    def kept(self) -> int:
        return len(self._free)

    def take(self) -> Pipe | None:
        """An empty pipe, or None when the limit is reached or the process is out of fds."""
        if self._free:
            return self._free.pop()
        if self.open >= self.limit:
            self.unavailable += 1
            return None
        try:
            read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:  # EMFILE/ENFILE: no fd for a pipe now; the burst is copied instead
            self.unavailable += 1
            return None
        try:
            capacity = fcntl.fcntl(write_fd, _F_SETPIPE_SZ, self.size)
        except OSError:
            capacity = 65536  # unprivileged and over the per-user pipe quota: the default size
        self.open += 1
        return Pipe(read_fd, write_fd, capacity)

    def give(self, pipe: Pipe) -> None:
        """Return an *empty* pipe: kept for the next take, or closed past `keep`."""
        if len(self._free) < self.keep:
            self._free.append(pipe)
        else:
            self.discard(pipe)

    def discard(self, pipe: Pipe) -> None:
        """Close a pipe that may hold bytes (the connection was reset) or is not wanted."""
        self.open -= 1
        pipe.close()

    def configure(self, limit: int, keep: int | None = None) -> None:
        """Set the bounds (worker start, reload); pipes kept past the new `keep` are closed."""
        self.limit = limit
        if keep is not None:
            self.keep = keep
        while len(self._free) > min(self.keep, self.limit):
            self.discard(self._free.pop())


POOL = PipePool()
