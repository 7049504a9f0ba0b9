"""The TLS inspector: read a connection's first bytes until they are a whole ClientHello, or
plainly not TLS (network/client_hello.py parses).

The bytes are consumed, not peeked: a peek would see the same incomplete bytes on every wake of
trio's level-triggered wait and spin. Whoever serves the connection next gets them back
(`Inspection.data`): the TLS session that terminates it, the HTTP/1 server as its first bytes,
or a passthrough relay as the first bytes to send upstream.
"""

from __future__ import annotations

import socket
from typing import Any

import trio

from proxy.network import client_hello as hello_mod
from proxy.network.client_hello import BadClientHello, ClientHello, NotTls
from proxy.network.tls_io import HANDSHAKE_TIMEOUT, TlsHandshakeFailed

# What a ClientHello may take on the wire: the message, and its record headers (a 64 KiB hello
# needs 4 records at least; one fragmented much finer than that is refused as too long).
READ_LIMIT = hello_mod.MAX_CLIENT_HELLO + 4 + 64 * 5

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
                chunk = sock.recv(READ_LIMIT - len(data))
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
            if len(data) >= READ_LIMIT:  # (and never a recv of 0 bytes, which would read as a close)
                return Inspection(BAD, None, data, "ClientHello too long")
    return Inspection(TIMEOUT, None, data)


async def prepare_handshake(sock: socket.socket, server: Any, first: bytes = b"") -> tuple[bytes, float]:
    """Before the handshake of a listener with certificates on demand (network/tls_dynamic.py):
    the ClientHello's name, read now or parsed from `first` (what a filter chain's inspection
    read already), and its certificate fetched or minted (`server.prepare`, a ServerTls).
    Returns the handshake's first bytes and what is left of its timeout (a mint's wait is ours,
    not the client's). Raises TlsHandshakeFailed for a client that sent no ClientHello."""
    timeout = server.handshake_timeout
    if first:
        try:
            hello = hello_mod.parse(first)
        except (NotTls, BadClientHello):
            hello = None  # (not TLS, or bad: OpenSSL's alert says so)
        data = first
    else:
        started = trio.current_time()
        inspection = await inspect(sock, timeout)
        if inspection.outcome == TIMEOUT:
            raise TlsHandshakeFailed(HANDSHAKE_TIMEOUT)
        if inspection.outcome == CLOSED:
            raise TlsHandshakeFailed("closed during the handshake")
        timeout = max(0.0, timeout - (trio.current_time() - started))
        hello, data = inspection.hello, inspection.data
    if hello is not None:
        await server.prepare(hello.server_name)
    return data, timeout
