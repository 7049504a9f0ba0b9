"""A TLS ClientHello, read without terminating: its SNI and ALPN (sans-IO).

The TLS inspector (network/tls_inspector.py) feeds it the first bytes of a connection. It is
what lets one port serve TLS and plaintext (the first byte of a TLS connection is a handshake
record, 0x16; no HTTP method starts with it), lets a `tcp` listener route TLS by server name
without holding any TLS state (passthrough), lets filter chains match on the name and the
protocols a client offers, and lets a listener fetch or mint a certificate for a name before
OpenSSL sees the handshake.

RFC 8446 §4.1.2 and RFC 5246 §7.4.1.2 give the layout: records (type, version, length), the
handshake message (type 1, a 24-bit length) possibly split over several records, then version,
random, session id, cipher suites, compression methods and the extensions. SNI is RFC 6066 §3,
ALPN RFC 7301 §3.1. Only what the proxy routes on is decoded; the rest is skipped by length.
"""

from __future__ import annotations

RECORD_HANDSHAKE = 0x16
HANDSHAKE_CLIENT_HELLO = 1
EXT_SERVER_NAME = 0
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43
# A ClientHello is a few hundred bytes (about 1.8 kB with a post-quantum key share); past this
# the peer is not a TLS client worth waiting for.
MAX_CLIENT_HELLO = 64 * 1024


class NotTls(Exception):
    """The first bytes are not a TLS handshake record (plaintext, or garbage)."""


class BadClientHello(Exception):
    """A TLS handshake record whose ClientHello does not parse; the message says where."""


class ClientHello:
    """What the proxy routes on, from one ClientHello."""

    __slots__ = ("server_name", "alpn", "versions", "size")

    def __init__(self, server_name: str | None, alpn: tuple[str, ...], versions: tuple[int, ...], size: int) -> None:
        self.server_name = server_name  # lower case, no trailing dot; None without SNI
        self.alpn = alpn  # the protocols offered, in the client's order
        self.versions = versions  # supported_versions (0x0304 is TLS 1.3); empty if absent
        self.size = size  # bytes of records the ClientHello took

    def __repr__(self) -> str:
        return f"ClientHello(server_name={self.server_name!r}, alpn={self.alpn!r})"


def looks_like_tls(first: int) -> bool:
    """Whether a connection whose first byte is `first` speaks TLS (a handshake record)."""
    return first == RECORD_HANDSHAKE


def parse(data: bytes | bytearray) -> ClientHello | None:
    """The ClientHello at the start of `data`; None if more bytes are needed. Raises NotTls if
    `data` does not start with a TLS handshake record, BadClientHello if it does but is not a
    well-formed ClientHello."""
    if not data:
        return None
    if data[0] != RECORD_HANDSHAKE:
        raise NotTls()
    if len(data) >= 2 and data[1] != 3:
        raise NotTls()  # record versions are 3.x (SSL 3.0 to TLS 1.3 all write 3.1-3.3)
    message = bytearray()
    offset = 0
    needed = -1  # the handshake message's length, once its header is in
    while needed < 0 or len(message) < needed + 4:
        if len(data) < offset + 5:
            return None
        if data[offset] != RECORD_HANDSHAKE:
            raise BadClientHello("a non-handshake record inside the ClientHello")
        length = (data[offset + 3] << 8) | data[offset + 4]
        if length == 0 or length > 16384 + 2048:
            raise BadClientHello(f"record length {length}")
        if len(data) < offset + 5 + length:
            return None
        message += data[offset + 5 : offset + 5 + length]
        offset += 5 + length
        if needed < 0 and len(message) >= 4:
            if message[0] != HANDSHAKE_CLIENT_HELLO:
                raise BadClientHello(f"handshake type {message[0]}, not a ClientHello")
            needed = (message[1] << 16) | (message[2] << 8) | message[3]
            if needed > MAX_CLIENT_HELLO:
                raise BadClientHello(f"ClientHello of {needed} bytes")
    return _client_hello(memoryview(message)[4 : 4 + needed], offset)


def _client_hello(body: memoryview, size: int) -> ClientHello:
    reader = _Reader(body)
    reader.skip(2 + 32)  # legacy_version, random
    reader.skip(reader.u8())  # legacy_session_id
    suites = reader.u16()
    if suites == 0 or suites % 2:
        raise BadClientHello("cipher_suites")
    reader.skip(suites)
    reader.skip(reader.u8())  # legacy_compression_methods
    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] = ()
    if reader.remaining():  # (a TLS 1.2 ClientHello may have no extensions at all)
        extensions = _Reader(reader.take(reader.u16()))
        seen: set[int] = set()
        while extensions.remaining():
            kind = extensions.u16()
            data = _Reader(extensions.take(extensions.u16()))
            if kind in seen:
                raise BadClientHello(f"extension {kind} twice")  # RFC 8446 §4.2
            seen.add(kind)
            if kind == EXT_SERVER_NAME:
                server_name = _server_name(data)
            elif kind == EXT_ALPN:
                alpn = _alpn(data)
            elif kind == EXT_SUPPORTED_VERSIONS:
                listed = _Reader(data.take(data.u8()))
                versions = tuple(listed.u16() for _ in range(listed.remaining() // 2))
    return ClientHello(server_name, alpn, versions, size)


def _server_name(data: _Reader) -> str | None:
    names = _Reader(data.take(data.u16()))
    while names.remaining():
        kind = names.u8()
        raw = bytes(names.take(names.u16()))
        if kind == 0:  # host_name
            try:
                name = raw.decode("ascii")
            except UnicodeDecodeError:
                raise BadClientHello("a server name that is not ASCII") from None
            name = name.lower().rstrip(".")
            if not name or len(name) > 253:
                raise BadClientHello("server name length")
            return name
    return None


def _alpn(data: _Reader) -> tuple[str, ...]:
    listed = _Reader(data.take(data.u16()))
    protocols: list[str] = []
    while listed.remaining():
        raw = bytes(listed.take(listed.u8()))
        if not raw:
            raise BadClientHello("an empty ALPN protocol")
        protocols.append(raw.decode("latin-1"))
    return tuple(protocols)


class _Reader:
    """Reads big-endian fields off a view; running past its end is a BadClientHello."""

    __slots__ = ("view", "at")

    def __init__(self, view: memoryview) -> None:
        self.view = view
        self.at = 0

    def remaining(self) -> int:
        return len(self.view) - self.at

    def take(self, n: int) -> memoryview:
        if self.at + n > len(self.view):
            raise BadClientHello("truncated")
        part = self.view[self.at : self.at + n]
        self.at += n
        return part

    def skip(self, n: int) -> None:
        self.take(n)

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        part = self.take(2)
        return (part[0] << 8) | part[1]
