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

from proxy.upgrade.protocol import (
    HEADER,
    INLINE_MAX,
    MAX_BODY,
    MAX_FDS,
    MAX_OUT_OF_BAND,
    Msg,
    ProtocolError,
    decode,
    decode_body,
    encode_body,
    frame,
)

_BUF = 4 << 20
_RECV_SIZE = MAX_BODY + HEADER.size + 1  # one byte over: a bigger message shows as MSG_TRUNC
_CMSG_SPACE = socket.CMSG_SPACE(MAX_FDS * 4)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    if size > MAX_OUT_OF_BAND:
        raise ProtocolError(f"out-of-band body of {size} bytes, over {MAX_OUT_OF_BAND}")
    chunks = []
    offset = 0
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


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
        if len(fds) > MAX_FDS - 1:
            raise ProtocolError(f"{len(fds)} fds in one message, over {MAX_FDS - 1}")
        payload = encode_body({**(body or {}), "fds": len(fds)})
        memfd = None
        if len(payload) > INLINE_MAX:
            # A big body (a TCP relay's in-flight bytes, a large stats blob) rides in a memfd.
            if len(payload) > MAX_OUT_OF_BAND:
                raise ProtocolError(f"{mtype.name} body is {len(payload)} bytes, over {MAX_OUT_OF_BAND}")
            memfd = os.memfd_create("proxy-frame", os.MFD_CLOEXEC)
            _write_all(memfd, payload)
            fds = [*fds, memfd]
            payload = encode_body({"fds": len(fds), "body_in_fd": True})
        data = frame(mtype, payload, self.proto)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        try:
            async with self._send_lock:
                try:
                    await self.sock.sendmsg([data], anc)
                except (BrokenPipeError, ConnectionResetError, ConnectionRefusedError) as exc:
                    raise PeerGone(str(exc)) from exc
        finally:
            if memfd is not None:
                os.close(memfd)

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
            if body.get("body_in_fd"):
                body_fd = fds.pop()
                try:
                    body = decode_body(_read_all(body_fd), mtype.name)
                finally:
                    os.close(body_fd)
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
