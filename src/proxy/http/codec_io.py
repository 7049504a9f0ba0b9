"""Small I/O pieces the codec connections share (HTTP/1 and multiplexed, both sides)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import trio

from proxy.network.listener import bound_address
from proxy.network.sockio import COALESCE_MAX, SockIO

# A stream that writes while this much waits to go out waits for it (a peer that reads nothing
# must not make the proxy hold its responses in memory).
MAX_BACKLOG = 256 * 1024


class CodecWriter:
    """Sends a multiplexed codec's bytes, one task at a time: a task that flushes while
    another is sending returns at once (the sender takes its frames along, in order) unless
    more than MAX_BACKLOG bytes wait, then it waits for them to leave. Sends go through
    SockIO.send_soon, so the frames of one scheduler pass leave together."""

    __slots__ = ("io", "codec", "writing", "drained", "_pull")

    def __init__(self, io: SockIO, codec: Any) -> None:
        self.io = io
        self.codec = codec
        self.writing = False
        self.drained: trio.Event | None = None
        self._pull = codec.data_to_send

    async def flush(self) -> None:
        # Usually the frames wait in the codec for the end of the pass (SockIO.pull_soon): every
        # stream that flushes in this pass then shares one data_to_send and one send.
        if not self.writing and self.codec.outbound_backlog() <= COALESCE_MAX and self.io.pull_soon(self._pull):
            return
        if self.writing:
            while self.writing and self.codec.outbound_backlog() > MAX_BACKLOG:
                if self.drained is None:
                    self.drained = trio.Event()
                await self.drained.wait()
            return
        self.writing = True
        try:
            codec = self.codec
            io = self.io
            while True:
                data = codec.data_to_send()
                if not data:
                    return
                await io.send_soon(data)
        finally:
            self.writing = False
            if self.drained is not None:
                self.drained.set()
                self.drained = None


async def send_batch(io: SockIO, out: list[bytes], message_ends: bool) -> None:
    """Send what an HTTP/1 side wrote since its last flush, in one send; the end of a message
    goes out with this scheduler pass's other sends."""
    if not out:
        return
    data = out[0] if len(out) == 1 else b"".join(out)
    out.clear()
    if message_ends:
        await io.send_soon(data)
    else:
        await io.send_all(data)


def peer_names(sock: socket.socket, peer: Any, tcp: bool, local: str | None = None) -> tuple[str, str, str]:
    """(remote "ip:port", client ip, local address) of an accepted connection. `local`: the
    listener's one address, when it has one (else getsockname tells). TCP_NODELAY is not set
    here: accepted sockets inherit it from the listening socket (Worker sets it there), one
    setsockopt per connection saved."""
    if isinstance(peer, tuple):
        remote, client_ip = f"{peer[0]}:{peer[1]}", peer[0]
    else:
        remote = client_ip = "unix"
    if local is None:
        try:
            local = bound_address(sock)
        except OSError:
            local = "-"
    return remote, client_ip, local


def local_address_of(address: Any) -> str | None:
    """A listener's connections' local address, if it is one specific host and port (config
    notation, as bound_address gives it); None for a wildcard, a name, port 0 or Unix."""
    if address.is_unix or not address.port:
        return None
    try:
        ip = ipaddress.ip_address(address.host)
    except ValueError:
        return None  # a name: what it resolved to is what getsockname says
    if ip.is_unspecified:
        return None  # a wildcard: the connection's own address differs per interface
    return f"[{ip}]:{address.port}" if ip.version == 6 else f"{ip}:{address.port}"
