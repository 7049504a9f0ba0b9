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


# The record layer: OpenSSL's calls on a session's SSL* and its two memory BIOs, made from this
# compiled module (TlsSession's methods call these too). They go to OpenSSL through
# pyOpenSSL's own cffi bindings: pyOpenSSL's wrappers raise WantReadError for "nothing yet"
# (twice per request: an empty read after the request, an empty BIO after it) and check the
# error queue on every call, which measured at about a third of an HTTPS request's cost. Here,
# compiled, a request's records cost ~3 us in all (in-memory, opening and sealing), and HTTPS
# keep-alive measured 21.0k against 20.3k req/CPU-s with them interpreted (tls bench, median
# of 6 rounds). network/tls.py binds them when it is imported, so this module, imported by
# every HTTP listener, does not import pyOpenSSL (~10 MB of RSS).
READ_SIZE = 65536
_SSL_read: Any = None
_SSL_write: Any = None
_SSL_get_error: Any = None
_BIO_read: Any = None
_BIO_write: Any = None
_from_buffer: Any = None
_BUFFER: Any = None  # one char[READ_SIZE] per process (the worker is one thread), and its view
_VIEW: Any = None
_WANT_READ = 2
_ZERO_RETURN = 6


def bind_record_layer(lib: Any, ffi: Any) -> None:
    """Take OpenSSL's record-layer calls from pyOpenSSL's bindings (network/tls.py, once)."""
    global _SSL_read, _SSL_write, _SSL_get_error, _BIO_read, _BIO_write, _from_buffer, _BUFFER, _VIEW, _WANT_READ, _ZERO_RETURN
    _SSL_read = lib.SSL_read
    _SSL_write = lib.SSL_write
    _SSL_get_error = lib.SSL_get_error
    _BIO_read = lib.BIO_read
    _BIO_write = lib.BIO_write
    _from_buffer = ffi.from_buffer
    _BUFFER = ffi.new("char[]", READ_SIZE)
    _VIEW = ffi.buffer(_BUFFER)
    _WANT_READ = int(lib.SSL_ERROR_WANT_READ)
    _ZERO_RETURN = int(lib.SSL_ERROR_ZERO_RETURN)


def records_in(session: Any, data: bytes) -> None:
    """Bytes from the peer into the session (a memory BIO takes any amount)."""
    if data:
        _BIO_write(session._into, data, len(data))


def plaintext_out(session: Any) -> bytes:
    """All the plaintext the received records hold (b"" if none yet, or at close_notify: then
    the session's `eof` is set). Raises TlsError."""
    ssl = session._ssl
    first = b""
    rest: list[bytes] | None = None
    while True:
        n: int = _SSL_read(ssl, _BUFFER, READ_SIZE)
        if n > 0:
            chunk: bytes = _VIEW[:n]
            if not first:
                first = chunk
            elif rest is None:
                rest = [first, chunk]
            else:
                rest.append(chunk)
            continue
        error: int = _SSL_get_error(ssl, n)
        if error == _WANT_READ:
            break
        if error == _ZERO_RETURN:
            session.eof = True
            break
        session._fail()  # (raises TlsError, OpenSSL's error queue emptied)
    if rest is not None:
        return b"".join(rest)
    return first


def plaintext_in(session: Any, data: bytes | bytearray | memoryview) -> None:
    """Encrypt `data`, all of it (a memory BIO takes any amount). Raises TlsError."""
    ssl = session._ssl
    buf = _from_buffer(data)
    total = len(data) if not isinstance(data, memoryview) else data.nbytes
    done = 0
    while done < total:  # (pyOpenSSL sets SSL_MODE_ENABLE_PARTIAL_WRITE: a call may seal one record)
        n: int = _SSL_write(ssl, buf + done, total - done)
        if n <= 0:
            session._fail()
        done += n


def records_out(session: Any) -> bytes:
    """The records to send now (b"" if none)."""
    source = session._from
    n: int = _BIO_read(source, _BUFFER, READ_SIZE)
    if n <= 0:
        return b""
    first: bytes = _VIEW[:n]
    if n < READ_SIZE:
        return first
    out = [first]
    while n == READ_SIZE:
        n = _BIO_read(source, _BUFFER, READ_SIZE)
        if n > 0:
            out.append(_VIEW[:n])
    return b"".join(out)


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
        records_in(tls, data)
        try:
            plain = plaintext_out(tls)
        except TlsError as exc:
            raise ConnectionLost(str(exc)) from None
        extra = records_out(tls)  # (TLS 1.3 key updates and the like need an answer)
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
        tls = self.tls
        try:
            plaintext_in(tls, data)
        except TlsError as exc:
            raise ConnectionLost(str(exc)) from None
        return records_out(tls)

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
                    # After the client's Finished only the session tickets are lost (a client
                    # that hangs up at once, as `openssl s_time` does): the handshake is done,
                    # and the connection's first read reports the loss.
                    if not done:
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
