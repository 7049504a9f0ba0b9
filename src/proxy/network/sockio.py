"""Minimal async I/O on a non-blocking stdlib socket, for the L7 hot paths.

trio's SocketStream adds conflict detection and a checkpoint per call; an HTTP request costs
several receives and sends, so these helpers try the syscall first and park on trio only when
it would block (python-trio.md: trio's per-I/O overhead is the limit once parsing is in C).
Errors are translated once here: a peer that resets or vanishes raises `ConnectionLost`.
"""

from __future__ import annotations

import socket

import trio

_wait_readable = trio.lowlevel.wait_readable
_wait_writable = trio.lowlevel.wait_writable

RECV_SIZE = 65536


class ConnectionLost(Exception):
    """The peer reset the connection or it broke (ECONNRESET, EPIPE, ...)."""


class SockIO:
    __slots__ = ("sock", "bytes_received", "bytes_sent")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.bytes_received = 0
        self.bytes_sent = 0

    async def recv(self, size: int = RECV_SIZE) -> bytes:
        """Bytes from the peer; b"" at EOF."""
        sock = self.sock
        while True:
            try:
                data = sock.recv(size)
            except BlockingIOError:
                await _wait_readable(sock)
                continue
            except OSError as exc:
                raise ConnectionLost(str(exc)) from exc
            self.bytes_received += len(data)
            return data

    async def recv_reply(self, size: int = RECV_SIZE) -> bytes:
        """Like recv, for an answer to something just sent: it cannot be here yet, so wait
        first and save the recv that would fail with EAGAIN (a syscall and an exception)."""
        sock = self.sock
        await _wait_readable(sock)
        while True:  # recv, inlined: twice per proxied request
            try:
                data = sock.recv(size)
            except BlockingIOError:
                await _wait_readable(sock)
                continue
            except OSError as exc:
                raise ConnectionLost(str(exc)) from exc
            self.bytes_received += len(data)
            return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        sock = self.sock
        total = len(data)
        if not total:
            return
        # Small writes go out whole: try that before slicing a memoryview.
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise ConnectionLost(str(exc)) from exc
        if sent < total:
            view = memoryview(data)[sent:]
            while view:
                try:
                    view = view[sock.send(view) :]
                except BlockingIOError:
                    await _wait_writable(sock)
                except OSError as exc:
                    raise ConnectionLost(str(exc)) from exc
        self.bytes_sent += total

    def try_send(self, data: bytes) -> int:
        """Send what fits now without waiting; returns the count sent."""
        try:
            n = self.sock.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise ConnectionLost(str(exc)) from exc
        self.bytes_sent += n
        return n

    def peer_closed(self) -> bool:
        """True if an idle connection has been closed (or reset) by the peer, or has sent
        unexpected bytes: either way it must not be reused."""
        try:
            return self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) is not None
        except BlockingIOError:
            return False
        except OSError:
            return True

    def shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        if self.sock.fileno() != -1:
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()

    def abort(self) -> None:
        """Close with RST."""
        if self.sock.fileno() != -1:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass
            self.close()
