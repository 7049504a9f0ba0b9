"""The TLS inspector: read a connection's first bytes until they are a whole ClientHello, or
plainly not TLS (network/client_hello.py parses).

The bytes are consumed, not peeked: a peek would see the same incomplete bytes on every wake of
trio's level-triggered wait and spin. Whoever serves the connection next gets them back
(`Inspection.data`): the TLS session that terminates it, the HTTP/1 server as its first bytes,
or a passthrough relay as the first bytes to send upstream.
"""

from __future__ import annotations

import socket

import trio

from proxy.network import client_hello as hello_mod
from proxy.network.client_hello import BadClientHello, ClientHello, NotTls

TLS = "tls"
PLAINTEXT = "plaintext"
BAD = "bad"  # a handshake record that is not a ClientHello we can read
TIMEOUT = "timeout"
CLOSED = "closed"


class Inspection:
    __slots__ = ("outcome", "hello", "data", "error")

    def __init__(self, outcome: str, hello: ClientHello | None, data: bytes, error: str = "") -> None:
        self.outcome = outcome  # TLS, PLAINTEXT, BAD, TIMEOUT or CLOSED
        self.hello = hello  # with outcome TLS
        self.data = data  # every byte read, to be served next
        self.error = error  # with outcome BAD: where the ClientHello broke


async def inspect(sock: socket.socket, timeout: float) -> Inspection:
    """Read until the first bytes are a ClientHello (outcome TLS), are not TLS (PLAINTEXT:
    known from the first byte), or `timeout` passes. Never raises for the peer's doing."""
    data = b""
    with trio.move_on_after(timeout):
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                chunk = sock.recv(hello_mod.MAX_CLIENT_HELLO + 5 - len(data))
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                return Inspection(CLOSED, None, data, exc.strerror or "")
            if not chunk:
                return Inspection(CLOSED, None, data)
            data += chunk
            try:
                hello = hello_mod.parse(data)
            except NotTls:
                return Inspection(PLAINTEXT, None, data)
            except BadClientHello as exc:
                return Inspection(BAD, None, data, str(exc))
            if hello is not None:
                return Inspection(TLS, hello, data)
            if len(data) > hello_mod.MAX_CLIENT_HELLO + 5:
                return Inspection(BAD, None, data, "ClientHello too long")
    return Inspection(TIMEOUT, None, data)
