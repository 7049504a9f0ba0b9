"""A listener's TLS, server side, up to a finished handshake: shared by the HTTP connection
manager and the TCP proxy, whatever they then do with the plaintext.

`ListenerTlsSide` holds the listener's (or filter chain's) ServerTls and its certificate
watcher (rotation, network/tls_watch.py), and runs one connection's handshake: the ClientHello
read first where certificates come on demand (or taken from the bytes a filter chain's
inspection read), then `accept_tls`. A failed handshake is counted by why (Envoy's ssl.*
names), and after a fatal alert the client's further bytes are read for a moment, so that the
close is a FIN and the alert reaches it (see `linger`). Imported only where TLS is configured.
"""

from __future__ import annotations

import socket
from typing import Any

import trio

from proxy.log import get_logger
from proxy.network import tls_inspector
from proxy.network.tls_io import (
    CLIENT_CERTIFICATE_REFUSED,
    HANDSHAKE_TIMEOUT,
    NO_CLIENT_CERTIFICATE,
    UNKNOWN_SERVER_NAME,
    TlsHandshakeFailed,
    TlsIO,
    accept_tls,
)

log = get_logger("tls")

# A refused handshake: how long, and how much, the client's further bytes are read and
# dropped after the alert (see linger).
LINGER_TIME = 1.0
LINGER_BYTES = 256 * 1024


async def linger(sock: socket.socket) -> None:
    """After a fatal alert: end our side (FIN after the alert) and read what the client still
    sends until it closes, briefly. Closing with its bytes unread would send a RST, and a RST
    makes the client's kernel drop the alert unread. A TLS 1.3 client sends its certificate
    with its request right behind (curl), so this is the common case for a refused one."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        return
    left = LINGER_BYTES
    with trio.move_on_after(LINGER_TIME):
        while left > 0:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError:
                return
            if not data:
                return
            left -= len(data)


def count_failure(stats: Any, reason: str) -> None:
    if reason == HANDSHAKE_TIMEOUT:
        stats.ssl_handshake_timeout += 1
    elif reason == UNKNOWN_SERVER_NAME:
        stats.ssl_sni_refused += 1
    elif reason == NO_CLIENT_CERTIFICATE:
        stats.ssl_fail_verify_no_cert += 1
    elif reason.startswith(CLIENT_CERTIFICATE_REFUSED):
        stats.ssl_fail_verify_error += 1
    else:
        stats.ssl_connection_error += 1


class ListenerTlsSide:
    def __init__(self, config: Any, stats: Any, name: str) -> None:
        """`config`: the listener (its `tls`, `protocol`); `name`: the listener's."""
        from proxy.network import tls_watch
        from proxy.network.tls import ServerTls, watched_paths

        seen = tls_watch.signature(watched_paths(config.tls))  # before the files are read
        self.tls = ServerTls(config.tls, config.protocol, stats, name)
        self.watch = tls_watch.CertificateWatcher(name, self.tls, config.tls, stats, seen)
        self.verify_clients = config.tls.client_certificate != "none"
        self.stats = stats
        self.name = name
        for cert in self.tls.certificates:
            if cert.world_readable_key:  # (the path only: never the key)
                log.warning("tls.key_readable_by_others", listener=name, key=cert.key_path)

    async def handshake(self, sock: socket.socket, first: bytes = b"") -> tuple[TlsIO, bytes] | None:
        """The connection's TlsIO and the plaintext that came with the handshake; None if it
        failed (counted; the socket is left to the caller to close). `first`: bytes read off
        the socket already (a filter chain's inspection)."""
        tls = self.tls
        stats = self.stats
        timeout = tls.handshake_timeout
        try:
            if tls.on_demand is not None:
                # The name before the handshake: a certificate for it may have to be fetched or
                # minted first, which the SNI callback (inside OpenSSL) cannot wait for.
                initial, timeout = await tls_inspector.prepare_handshake(sock, tls, first)
            else:
                initial = first
            io, early = await accept_tls(sock, tls, initial, timeout)
        except TlsHandshakeFailed as failed:
            count_failure(stats, failed.reason)
            log.debug("tls.handshake_failed", listener=self.name, reason=failed.reason)
            if failed.reason != HANDSHAKE_TIMEOUT:
                await linger(sock)
            return None
        stats.ssl_handshake += 1
        if self.verify_clients and not io.tls.presented_certificate:
            stats.ssl_no_certificate += 1
        return io, early
