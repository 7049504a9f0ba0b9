"""One control frame plus its file descriptors over an AF_UNIX SOCK_SEQPACKET socket (trio edge).

SEQPACKET keeps message boundaries and delivers fds with their message; end of file means the
peer process is gone, so no heartbeat is needed. Received fds are close-on-exec from the start
(MSG_CMSG_CLOEXEC; `socket.recv_fds` ignores flags, so it is not used), and a truncated message
or control message is a protocol error: fds may have been lost (upgrade.md §7.3).
"""

from __future__ import annotations

import array
import os
import socket
from typing import Any

import trio

from proxy.upgrade.protocol import MAX_BODY, MAX_FDS, HEADER, Msg, ProtocolError, decode, encode

_BUF = 4 << 20
_RECV_SIZE = MAX_BODY + HEADER.size + 1  # one byte over: a bigger message shows as MSG_TRUNC
_CMSG_SPACE = socket.CMSG_SPACE(MAX_FDS * 4)


class PeerGone(Exception):
    """The other end closed (its process exited or crashed)."""


def socketpair() -> tuple[socket.socket, socket.socket]:
    """A close-on-exec SEQPACKET pair with buffers big enough for any frame."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (a, b):
        tune(s)
    return a, b


def tune(sock: socket.socket) -> None:
    for opt, force in ((socket.SO_SNDBUF, 32), (socket.SO_RCVBUF, 33)):  # SO_*BUFFORCE as root
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, _BUF)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, opt, _BUF)


class Channel:
    """A trio wrapper over one SEQPACKET socket; sends are serialised by a lock so concurrent
    tasks never interleave a frame and its fds."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.raw = sock
        self.sock = trio.socket.from_stdlib_socket(sock)
        self._send_lock = trio.Lock()
        self.proto = 1

    @classmethod
    def from_fd(cls, fd: int) -> Channel:
        sock = socket.socket(fileno=fd)
        os.set_inheritable(fd, False)
        tune(sock)
        return cls(sock)

    async def send(self, mtype: Msg, body: dict[str, Any] | None = None, fds: list[int] | tuple[int, ...] = ()) -> None:
        if len(fds) > MAX_FDS:
            raise ProtocolError(f"{len(fds)} fds in one message, over {MAX_FDS}")
        frame = encode(mtype, {**(body or {}), "fds": len(fds)}, self.proto)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        async with self._send_lock:
            try:
                await self.sock.sendmsg([frame], anc)
            except (BrokenPipeError, ConnectionResetError, ConnectionRefusedError) as exc:
                raise PeerGone(str(exc)) from exc

    async def recv(self) -> tuple[Msg, dict[str, Any], list[int]]:
        """The next frame and the fds that came with it (the caller owns them)."""
        try:
            data, anc, flags, _ = await self.sock.recvmsg(_RECV_SIZE, _CMSG_SPACE, socket.MSG_CMSG_CLOEXEC)
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise PeerGone(str(exc)) from exc
        fds: list[int] = []
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                arr = array.array("i")
                arr.frombytes(payload[: len(payload) - len(payload) % arr.itemsize])
                fds.extend(arr)
        if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
            for fd in fds:
                os.close(fd)
            raise ProtocolError("truncated control message: descriptors may have been lost")
        if not data:
            for fd in fds:
                os.close(fd)
            raise PeerGone("end of file")
        try:
            mtype, body = decode(data)
            if body.get("fds", 0) != len(fds):
                raise ProtocolError(f"{mtype.name} announces {body.get('fds', 0)} fds, {len(fds)} arrived")
        except ProtocolError:
            for fd in fds:
                os.close(fd)
            raise
        return mtype, body, fds

    def close(self) -> None:
        if self.raw.fileno() != -1:
            try:
                trio.lowlevel.notify_closing(self.raw)
            except RuntimeError:
                pass
            self.raw.close()
