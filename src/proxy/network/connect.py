"""Opening upstream connections: non-blocking connect with a timeout, TCP or Unix."""

from __future__ import annotations

import errno
import socket
from typing import Any

import trio

from proxy.network import relay as relay_mod
from proxy.network.fds import OutOfDescriptors, new_socket
from proxy.upstream.host import Host


class ConnectFailed(Exception):
    def __init__(self, host: Host, reason: str) -> None:
        super().__init__(f"{host.address}: {reason}")
        self.host = host
        self.reason = reason


async def connect(host: Host, timeout: float, splice: bool = False) -> socket.socket:
    """Open a non-blocking TCP or Unix connection to `host` within `timeout` seconds. Raises
    ConnectFailed, or OutOfDescriptors when no fd for the socket came within the timeout."""
    address = host.address
    sock: socket.socket | None = None
    family: int
    sockaddr: Any  # a path, (host, port) or (host, port, flowinfo, scope_id)
    with trio.move_on_after(timeout) as scope:
        if address.is_unix:
            family, sockaddr = socket.AF_UNIX, address.path
        elif address.family != socket.AF_UNSPEC:
            family, sockaddr = address.family, (address.host, address.port)
        else:
            try:
                infos = await trio.socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise ConnectFailed(host, f"resolve failed: {exc}") from exc
            family, _, _, _, sockaddr = infos[0]
        sock = await new_socket(family)  # waits while the process is out of fds
        try:
            code = sock.connect_ex(sockaddr)
            if code == errno.EINPROGRESS:
                await trio.lowlevel.wait_writable(sock)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            elif code == errno.EAGAIN and family == socket.AF_UNIX:
                raise ConnectFailed(host, "unix socket backlog full")
            if code:
                raise ConnectFailed(host, errno.errorcode.get(code, str(code)).lower())
            if family != socket.AF_UNIX:
                relay_mod.tune_tcp_socket(sock, splice)
            return sock
        except BaseException:
            trio.lowlevel.notify_closing(sock)
            sock.close()
            raise
    assert scope.cancelled_caught
    if sock is None:
        raise OutOfDescriptors(f"no file descriptor for a socket to {address} within {timeout:g}s")
    raise ConnectFailed(host, "timeout")
