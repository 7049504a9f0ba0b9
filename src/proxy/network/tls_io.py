"""SockIO over TLS: the same calls, with records in between (network/tls.py does the TLS).

Plaintext is encrypted as it is given, so what SockIO queues, coalesces per scheduler pass and
sends is ciphertext: a response's records go out with the pass's other sends, as plaintext
does, with no task per record. Reads take what the socket has (up to 64 KiB, several records)
and return all the plaintext it completes; a read that completes no record reads on.
`bytes_received` and `bytes_sent` count bytes on the wire. One class for both directions:
`accept_tls` runs a listener's server handshake, `connect_tls` a cluster's client one.
"""

from __future__ import annotations

import socket
from typing import Any

import trio

from proxy.network.sockio import RECV_SIZE, ConnectionLost, SockIO

# (network/tls.py, and pyOpenSSL with it, are imported only where a listener has TLS: this
# module is imported by every HTTP listener's code, and pyOpenSSL costs ~10 MB of RSS.)


class TlsError(Exception):
    """The handshake or the session failed (a bad ClientHello, a refused name, an alert)."""


# TlsHandshakeFailed reasons the listener counts apart (connection_manager); any other reason
# is OpenSSL's own, short and key-free.
HANDSHAKE_TIMEOUT = "handshake timeout"
UNKNOWN_SERVER_NAME = "unknown server name"
NO_CLIENT_CERTIFICATE = "no client certificate"  # `client_certificate: require`
CLIENT_CERTIFICATE_REFUSED = "client certificate refused"  # then ": " and OpenSSL's verify error


class TlsHandshakeFailed(Exception):
    """The client's handshake failed or timed out; `reason` is short and key-free."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TlsIO(SockIO):
    __slots__ = ()  # (its `tls` is SockIO's)

    def __init__(self, sock: socket.socket, tls: Any) -> None:
        super().__init__(sock)
        self.tls = tls  # a network.tls.TlsSession

    def _open(self, data: bytes) -> bytes | None:
        """The plaintext `data` completes (None: no record complete yet); b"" at the end."""
        if not data:
            return b""  # the peer closed without close_notify: an end all the same
        tls = self.tls
        tls.receive(data)
        try:
            plain = tls.read()
        except TlsError as exc:
            raise ConnectionLost(str(exc)) from None
        extra = tls.outgoing()  # (TLS 1.3 key updates and the like need an answer)
        if extra:
            self._add_later(extra)
        if plain or tls.eof:
            return plain
        return None

    async def recv(self, size: int = RECV_SIZE) -> bytes:
        if self.tls.eof:
            return b""
        while True:
            plain = self._open(await SockIO.recv(self, size))
            if plain is not None:
                return plain

    def recv_ready(self, size: int = RECV_SIZE) -> bytes | None:
        if self.tls.eof:
            return b""
        while True:
            data = SockIO.recv_ready(self, size)
            if data is None:
                return None
            plain = self._open(data)
            if plain is not None:
                return plain

    async def recv_reply(self, size: int = RECV_SIZE) -> bytes:
        plain = self._open(await SockIO.recv_reply(self, size))
        if plain is not None:
            return plain
        return await self.recv(size)

    def _seal(self, data: bytes | bytearray | memoryview) -> bytes:
        """The records for `data`. Records are sealed in the order the plaintext is sent, so
        what pull_soon left for the end of the pass is sealed first (a record out of order is
        a bad MAC at the client)."""
        if self.pull is not None:
            self.take_pulled()
        try:
            self.tls.write(data)
        except TlsError as exc:
            raise ConnectionLost(str(exc)) from None
        return self.tls.outgoing()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if data:
            await SockIO.send_all(self, self._seal(data))

    async def send_soon(self, data: bytes) -> None:
        if data:
            await SockIO.send_soon(self, self._seal(data))

    def _queue_pulled(self, data: bytes) -> None:
        # (From take_pulled, which the coalescer calls at the end of the pass: it must not
        # raise. A session that cannot seal is broken; the next recv or send reports it.)
        try:
            sealed = self._seal(data)
        except ConnectionLost:
            return
        self._add_later(sealed)

    def peer_closed(self) -> bool:
        """As SockIO's, for an idle pooled connection, except that records without plaintext
        (a late session ticket, a key update) are taken in and are no reason to drop it."""
        try:
            return self.recv_ready() is not None  # (plaintext: unexpected; b"": closed)
        except ConnectionLost:
            return True

    def try_send(self, data: bytes) -> int:
        raise NotImplementedError("TlsIO sends whole records: use send_all or send_soon")

    def _send_alert(self) -> None:
        """Send what the session has to say (an alert) if the kernel takes it now; a last word
        before a close, so nothing waits for it."""
        alert = self.tls.outgoing()
        if alert:
            try:
                self.sock.send(alert)
            except OSError:
                pass

    def shutdown_write(self) -> None:
        """close_notify, then the TCP half-close."""
        self.tls.close_notify()
        self._send_alert()
        SockIO.shutdown_write(self)

    def close(self) -> None:
        """close_notify (a TLS client then sees a clean end, not a truncation) unless queued
        bytes would have to go first, then close."""
        if self.sock.fileno() != -1 and self.later is None and self.owner is None:
            self.tls.close_notify()
            self._send_alert()
        SockIO.close(self)


async def accept_tls(sock: socket.socket, server: Any, initial: bytes = b"", timeout: float = -1.0) -> tuple[TlsIO, bytes]:
    """The server side of a handshake on an accepted socket, within `timeout` (by default the
    listener's handshake_timeout): the connection's TlsIO, and the plaintext that came with the
    client's last handshake flight (a request sent right behind its Finished). `initial`: bytes
    already read off the socket (the TLS inspector's), the handshake's first. Raises
    TlsHandshakeFailed (the socket is left for the caller to close). `server` is the
    listener's network.tls.ServerTls."""
    session = server.session()
    io = TlsIO(sock, session)
    io.bytes_received = len(initial)  # (on the wire, read by the inspector)
    data = initial
    # (Compiled: each `except ... as` name keeps one type in a function: `lost`, `failed`.)
    with trio.move_on_after(server.handshake_timeout if timeout < 0 else timeout):
        while True:
            if not data:
                try:
                    data = await SockIO.recv(io)  # (SockIO's: the bytes are the handshake's)
                except ConnectionLost as lost:
                    raise TlsHandshakeFailed(f"connection lost: {lost}") from None
                if not data:
                    raise TlsHandshakeFailed("closed during the handshake")
            session.receive(data)
            data = b""
            try:
                done = session.handshake()
            except TlsError as failed:
                io._send_alert()  # the alert that says why, for the client
                raise TlsHandshakeFailed(str(failed)) from None
            out = session.outgoing()
            if out:
                try:
                    await SockIO.send_all(io, out)
                except ConnectionLost as lost:
                    raise TlsHandshakeFailed(f"connection lost: {lost}") from None
            if done:
                try:
                    early = session.read()
                except TlsError as failed:
                    raise TlsHandshakeFailed(str(failed)) from None
                return io, early
    raise TlsHandshakeFailed(HANDSHAKE_TIMEOUT)


async def connect_tls(sock: socket.socket, client: Any, host: Any, protocol: str | None, deadline: float) -> TlsIO:
    """The client side of a handshake on a connected socket to `host`, by `deadline` (what is
    left of the cluster's connect_timeout): the connection's TlsIO. `client` is the cluster's
    network.tls.ClientTls; `protocol` (http1, http2, None for bytes) picks the ALPN offer.
    Records that came behind the server's Finished (TLS 1.3 tickets, a server's first bytes:
    an HTTP/2 SETTINGS) stay in the session, opened by the first recv with what follows them
    (`io.tls.read()` takes them now). Raises TlsHandshakeFailed, counted by the cluster and
    with a key-free reason (the socket is left for the caller to close)."""
    # (Compiled: each `except ... as` name keeps one type in a function: `lost`, `failed`.)
    try:
        session = client.session(host, protocol)
    except TlsError as failed:
        raise TlsHandshakeFailed(f"TLS: {failed}") from None
    io = TlsIO(sock, session)
    with trio.move_on_at(deadline):
        while True:
            try:
                done = session.handshake()
            except TlsError as failed:
                io._send_alert()  # the alert that says why, for the server's logs
                raise TlsHandshakeFailed(client.failed(session, str(failed))) from None
            out = session.outgoing()
            if out:
                try:
                    await SockIO.send_all(io, out)
                except ConnectionLost as lost:
                    raise TlsHandshakeFailed(client.failed(session, f"connection lost: {lost}")) from None
            if done:
                refused = client.established(session)
                if refused is not None:
                    raise TlsHandshakeFailed(f"TLS: {refused}")
                return io
            try:
                data = await SockIO.recv(io)  # (SockIO's: the bytes are the handshake's)
            except ConnectionLost as lost:
                raise TlsHandshakeFailed(client.failed(session, f"connection lost: {lost}")) from None
            if not data:
                raise TlsHandshakeFailed(client.failed(session, "closed during the handshake"))
            session.receive(data)
    raise TlsHandshakeFailed(client.failed(session, HANDSHAKE_TIMEOUT))
