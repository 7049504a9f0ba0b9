"""TLS termination, sans-IO: certificates chosen by SNI, and a session over memory BIOs.

pyOpenSSL runs the protocol; nothing here touches a socket or trio (network/tls_io.py does).

Certificates. A listener's `tls.certificates` each serve the names in their `server_names`,
or by default the DNS names in the certificate's subjectAltName (its CN when it has none). A
ClientHello's SNI picks the certificates of that exact name, else of the wildcard one label up
(`*.example.com` serves `a.example.com`, not `a.b.example.com` nor `example.com`), else the
first certificate of the list, or, with `unknown_server_name: refuse`, a handshake failure
(alert `unrecognized_name`). Several certificates for one name (an RSA and an ECDSA one) go in
one OpenSSL context, which keeps one per key type and serves each client the one its
signature algorithms allow.

Client certificates (mutual TLS). With `client_certificate: request` or `require` every
context asks the client for a certificate and verifies it against `client_ca`; one that fails
is refused with an alert (`unknown_ca`, `bad_certificate`, ...), and `require` refuses a client
that sends none (`certificate_required`). What the client presented is `TlsSession.peer`,
parsed once per connection on first use.

Rotation. The files are read by `load_files`; `ServerTls.build` makes contexts of what was
read and `ServerTls.install` swaps them in at once: new handshakes take the new ones, open
connections keep theirs (network/tls_watch.py decides when).

The client side, to a cluster's hosts (`ClientTls`, at the end): the server's chain is verified
and so is its name (X509_VERIFY_PARAM: the DNS name, or the IP address of a host given as one),
ALPN offers what the connection speaks, and each host's last session is offered again.
"""

from __future__ import annotations

import os
import socket
import stat
import sys
from dataclasses import dataclass, replace
from typing import Any, NoReturn
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from OpenSSL._util import exception_from_error_queue, ffi, lib

from proxy.network.tls_io import (
    CLIENT_CERTIFICATE_REFUSED,
    NO_CLIENT_CERTIFICATE,
    UNKNOWN_SERVER_NAME,
    TlsError,
    bind_record_layer,
    plaintext_in,
    plaintext_out,
    records_in,
    records_out,
)

VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
# What each HTTP protocol offers by ALPN when the config names no list.
DEFAULT_ALPN = {"http1": ["http/1.1"], "http2": ["h2"], "http": ["h2", "http/1.1"]}
READ_SIZE = 65536
# Every context of every listener gives its sessions this id context: OpenSSL refuses to
# resume a session of a context that verifies clients without one.
SESSION_ID_CONTEXT = b"proxy"


class TlsConfigError(Exception):
    """A certificate or key that cannot be used; the message names the file, never the key."""


@dataclass(frozen=True)
class LoadedCertificate:
    cert_path: str
    key_path: str
    key_kind: str  # "rsa", "ecdsa", "ed25519": OpenSSL keeps one certificate per kind per context
    names: tuple[str, ...]
    chain: tuple[crypto.X509, ...]
    key: crypto.PKey
    world_readable_key: bool


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise TlsConfigError(f"cannot read the {what} {path}: {exc.strerror}") from None


def _key_kind(key: Any) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "rsa"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ecdsa"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    raise TlsConfigError(f"unsupported key type {type(key).__name__}")


def certificate_names(cert: x509.Certificate) -> tuple[str, ...]:
    """The DNS names a certificate is for: its subjectAltName's, else its CN."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(n.lower() for n in san.get_values_for_type(x509.DNSName))
        if names:
            return names
    except x509.ExtensionNotFound:
        pass
    return tuple(str(a.value).lower() for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME))


def load_certificate(cert_path: str, key_path: str, server_names: list[str] | None = None) -> LoadedCertificate:
    """Read and check a certificate chain and its key; TlsConfigError says what is wrong
    without quoting the key."""
    pem = _read(cert_path, "certificate")
    key_pem = _read(key_path, "private key")
    try:
        mode = os.stat(key_path).st_mode
    except OSError:
        mode = 0
    loaded = certificate_from_pem(pem, key_pem, cert_path, key_path, server_names)
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        loaded = replace(loaded, world_readable_key=True)
    return loaded


def certificate_from_pem(
    pem: bytes, key_pem: bytes, cert_path: str, key_path: str, server_names: list[str] | None = None
) -> LoadedCertificate:
    """Check a PEM certificate chain and its PEM key (from files, a provider or a mint; the
    paths only name them in errors)."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise TlsConfigError(f"{cert_path} holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        # (never the exception's text: it could quote the key material)
        raise TlsConfigError(f"{key_path} holds no unencrypted PEM private key") from None
    kind = _key_kind(key)
    if _public_der(key.public_key()) != _public_der(certs[0].public_key()):
        raise TlsConfigError(f"the key {key_path} does not belong to the certificate {cert_path}")
    names = tuple(n.lower() for n in server_names) if server_names else certificate_names(certs[0])
    if not names:
        raise TlsConfigError(f"{cert_path} names no DNS name (no subjectAltName, no CN): give server_names")
    return LoadedCertificate(
        cert_path=cert_path,
        key_path=key_path,
        key_kind=kind,
        names=names,
        chain=tuple(crypto.X509.from_cryptography(c) for c in certs),
        key=crypto.PKey.from_cryptography_key(key),  # type: ignore[arg-type]
        world_readable_key=False,
    )


def load_client_ca(path: str) -> tuple[x509.Certificate, ...]:
    """The certificates of a client CA bundle (TlsConfigError names the file)."""
    pem = _read(path, "client CA bundle")
    try:
        return tuple(x509.load_pem_x509_certificates(pem))
    except ValueError:
        raise TlsConfigError(f"{path} holds no PEM certificate") from None


@dataclass(frozen=True)
class LoadedFiles:
    """Everything a listener's TLS reads from disk, read and checked."""

    certificates: tuple[LoadedCertificate, ...]
    client_ca: tuple[x509.Certificate, ...]


def load_files(config: Any) -> LoadedFiles:
    """Read a listener's certificates, keys and client CA bundle (`config` is its ListenerTls);
    the first bad file raises TlsConfigError."""
    certificates = tuple(load_certificate(c.cert, c.key, c.server_names) for c in config.certificates)
    client_ca = load_client_ca(config.client_ca) if config.client_certificate != "none" and config.client_ca else ()
    return LoadedFiles(certificates, client_ca)


def watched_paths(config: Any) -> list[str]:
    """The files `load_files` reads, each once."""
    paths: list[str] = []
    for c in config.certificates:
        paths += [c.cert, c.key]
    if config.client_certificate != "none" and config.client_ca:
        paths.append(config.client_ca)
    return list(dict.fromkeys(paths))


@dataclass(frozen=True)
class Contexts:
    """The OpenSSL contexts of one set of loaded files, by SNI; built off the event loop if
    need be, then swapped in by `ServerTls.install`."""

    certificates: tuple[LoadedCertificate, ...]
    client_ca: tuple[x509.Certificate, ...]
    exact: dict[str, SSL.Context]
    wildcard: dict[str, SSL.Context]
    default: SSL.Context


def set_groups(ctx: SSL.Context, groups: list[str]) -> None:
    """The key exchange groups a context offers, in order (OpenSSL's names: X25519, P-256,
    ...); ValueError if OpenSSL takes none of them. (pyOpenSSL has no call for the list: the
    binding's SSL_CTX_set1_curves_list is the same function as set1_groups_list.)"""
    if lib.SSL_CTX_set1_curves_list(ctx._context, ":".join(groups).encode()) != 1:
        exception_from_error_queue_quietly()
        raise ValueError(f"OpenSSL takes none of the groups {groups!r}")


def exception_from_error_queue_quietly() -> None:
    """Empty OpenSSL's error queue (a failed call leaves its reasons there for the next one)."""
    while lib.ERR_get_error():
        pass


class _RefusedName(Exception):
    """Raised in the SNI callback to refuse the name: pyOpenSSL turns it into a fatal
    unrecognized_name alert, after handing it to sys.excepthook (quieted for this one)."""


_previous_excepthook = sys.excepthook


def _excepthook(kind: Any, value: Any, tb: Any) -> None:
    if kind is not _RefusedName:
        _previous_excepthook(kind, value, tb)


sys.excepthook = _excepthook


def _public_der(public_key: Any) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _wildcard_parent(name: str) -> str | None:
    """`a.example.com` -> `example.com` (the domain a `*.example.com` certificate covers)."""
    dot = name.find(".")
    return name[dot + 1 :] if dot > 0 else None


class ServerTls:
    """A listener's TLS: its contexts, one per distinct set of certificates a name selects,
    and the SNI and ALPN choices. `session()` starts the TLS of one accepted connection."""

    def __init__(self, config: Any, protocol: str, stats: Any = None, listener: str = "") -> None:
        self.refuse_unknown = config.unknown_server_name == "refuse" or not config.certificates
        self.alpn = [p.encode() for p in (config.alpn if config.alpn is not None else DEFAULT_ALPN.get(protocol, []))]
        self.handshake_timeout = float(config.handshake_timeout)
        self._settings = config
        self.verify = {
            "none": SSL.VERIFY_NONE,
            "request": SSL.VERIFY_PEER,
            "require": SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
        }[config.client_certificate]
        # Certificates fetched or minted for names none of those serve (network/tls_dynamic.py).
        self.on_demand: Any = None
        self.client_ca: tuple[x509.Certificate, ...] = ()
        self.install(self.build(load_files(config)))
        if config.on_demand is not None:
            self.on_demand = _on_demand(config.on_demand, self._context_from_pem, stats, listener)

    def build(self, files: LoadedFiles) -> Contexts:
        """The contexts for `files`: one per distinct set of certificates a name selects.
        Touches nothing in use (it may run in a thread)."""
        certificates = files.certificates
        by_name: dict[str, list[int]] = {}
        for i, cert in enumerate(certificates):
            for name in cert.names:
                by_name.setdefault(name, []).append(i)
        contexts: dict[tuple[int, ...], SSL.Context] = {}
        exact: dict[str, SSL.Context] = {}
        wildcard: dict[str, SSL.Context] = {}
        for name, indexes in by_name.items():
            key = tuple(indexes)
            ctx = contexts.get(key)
            if ctx is None:
                ctx = contexts[key] = self._context([certificates[i] for i in indexes], files.client_ca)
            if name.startswith("*."):
                wildcard[name[2:]] = ctx
            else:
                exact[name] = ctx
        # Where every handshake starts, with the SNI callback that moves it to its name's
        # context: the first certificate's (also served to a name no certificate serves), or,
        # with no certificates (all on demand), one without a certificate.
        if certificates:
            default = contexts.get((0,)) or self._context([certificates[0]], files.client_ca)
        else:
            default = self._context([], files.client_ca)
        default.set_tlsext_servername_callback(self._on_server_name)
        return Contexts(certificates, files.client_ca, exact, wildcard, default)

    def install(self, contexts: Contexts) -> None:
        """Serve new handshakes with `contexts` (open sessions keep the context they have)."""
        self.certificates = list(contexts.certificates)
        if self.on_demand is not None and contexts.client_ca != self.client_ca:
            self.on_demand.cache.clear()  # (their contexts verify clients by the old CAs)
        self.client_ca = contexts.client_ca  # (what certificates on demand verify clients by)
        self.exact = contexts.exact
        self.wildcard = contexts.wildcard
        self.default = contexts.default

    def _context_from_pem(self, chain: bytes, key: bytes, source: str) -> SSL.Context:
        return self._context([certificate_from_pem(chain, key, source, source)], self.client_ca)

    def _context(self, certs: list[LoadedCertificate], client_ca: tuple[x509.Certificate, ...]) -> SSL.Context:
        s = self._settings
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(VERSIONS[s.min_version])
        ctx.set_max_proto_version(VERSIONS[s.max_version])
        # No renegotiation (a CPU sink for attackers), no compression (CRIME); the server
        # picks the cipher; a session ticket per handshake is OpenSSL's default.
        ctx.set_options(SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
        if s.ciphers:
            ctx.set_cipher_list(s.ciphers.encode())
        if s.ciphersuites:
            ctx.set_tls13_ciphersuites(s.ciphersuites.encode())
        if s.groups:
            set_groups(ctx, s.groups)
        seen: set[str] = set()
        for cert in certs:
            if cert.key_kind in seen:
                continue  # one per key kind: OpenSSL would replace the first with the second
            seen.add(cert.key_kind)
            ctx.use_certificate(cert.chain[0])
            ctx.use_privatekey(cert.key)
            for extra in cert.chain[1:]:
                ctx.add_extra_chain_cert(extra)
            ctx.check_privatekey()
        if self.alpn:
            ctx.set_alpn_select_callback(self._select_alpn)
        ctx.set_session_id(SESSION_ID_CONTEXT)
        if self.verify != SSL.VERIFY_NONE:
            store = ctx.get_cert_store()
            assert store is not None
            for ca in client_ca:
                store.add_cert(crypto.X509.from_cryptography(ca))
                ctx.add_client_ca(ca)  # named in the CertificateRequest: clients pick by it
            if s.verify_depth is not None:
                ctx.set_verify_depth(s.verify_depth)
            ctx.set_verify(self.verify)
        return ctx

    def configured(self, name: str) -> SSL.Context | None:
        """The context of the configured certificates that serve `name` (lower case, no
        trailing dot): exact, then the wildcard one label up; None if none does."""
        ctx = self.exact.get(name)
        if ctx is not None:
            return ctx
        parent = _wildcard_parent(name)
        if parent is not None:
            return self.wildcard.get(parent)
        return None

    def context_for(self, server_name: str | None) -> SSL.Context | None:
        """The context for a ClientHello's SNI (None: refuse the handshake)."""
        if server_name:
            name = server_name.lower().rstrip(".")
            ctx = self.configured(name)
            if ctx is not None:
                return ctx
            if self.on_demand is not None:
                ctx = self.on_demand.cached(name)
                if ctx is not None:
                    return ctx
        return None if self.refuse_unknown else self.default

    async def prepare(self, server_name: str | None) -> None:
        """Before the handshake: fetch or mint the certificate for a name that no configured
        one serves, so the SNI callback finds it (network/tls_dynamic.py)."""
        on_demand = self.on_demand
        if on_demand is not None and server_name and self.configured(server_name) is None:
            await on_demand.resolve(server_name)

    def _on_server_name(self, conn: SSL.Connection) -> None:
        raw = conn.get_servername()
        ctx = self.context_for(raw.decode("ascii", "replace") if raw else None)
        if ctx is None:
            # pyOpenSSL turns an exception here into a fatal alert; the session reports why.
            conn.get_app_data().refused_name = True
            raise _RefusedName()
        if ctx is not self.default:
            conn.set_context(ctx)

    def _select_alpn(self, conn: SSL.Connection, offered: list[bytes]) -> bytes | Any:
        for proto in self.alpn:
            if proto in offered:
                return proto
        return SSL.NO_OVERLAPPING_PROTOCOLS  # carry on without ALPN, as nginx does

    def session(self) -> TlsSession:
        return TlsSession(self.default)


def _on_demand(config: Any, build_context: Any, stats: Any, listener: str) -> Any:
    """The listener's OnDemandCertificates from its `tls.on_demand` settings."""
    from proxy import plugins
    from proxy.network import tls_dynamic

    provider = None
    if config.provider is not None:
        target = plugins.split_target(config.provider.type)
        if target is None:
            raise TlsConfigError(f"certificate provider {config.provider.type!r}: give package.module:Class")
        try:
            cls = plugins.load_class(*target, tls_dynamic.CertificateProvider, f"certificate provider {config.provider.type!r}", "a CertificateProvider subclass")
        except plugins.PluginError as exc:
            raise TlsConfigError(str(exc)) from None
        provider = cls(dict(config.provider.config))
    issuer = None
    if config.issuer is not None:
        issuer = load_issuer(config.issuer.cert, config.issuer.key)
    return tls_dynamic.OnDemandCertificates(
        build_context=build_context,
        stats=stats,
        listener=listener,
        provider=provider,
        issuer=issuer,
        key_type=config.key_type,
        lifetime=float(config.lifetime),
        cache_size=config.cache_size,
        cache_lifetime=float(config.cache_lifetime),
        server_names=config.server_names,
    )


def load_issuer(cert_path: str, key_path: str) -> Any:
    """The issuing CA for minted certificates: a CA certificate and its own key."""
    from proxy.network import tls_dynamic

    pem = _read(cert_path, "issuer certificate")
    key_pem = _read(key_path, "issuer key")
    certificate_from_pem(pem, key_pem, cert_path, key_path, ["issuer"])  # (parses; the key is its own)
    issuer = tls_dynamic.Issuer(pem, key_pem)
    try:
        constraints = issuer.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = constraints.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise TlsConfigError(f"{cert_path} is not a CA certificate (basicConstraints CA:TRUE): it cannot issue")
    if not isinstance(issuer.key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise TlsConfigError(f"the issuer key {key_path} is neither RSA nor ECDSA")
    return issuer


# The per-record calls (network/tls_io.py, compiled) go to OpenSSL through pyOpenSSL's own cffi
# bindings; the handshake stays on pyOpenSSL's API.
bind_record_layer(lib, ffi)


class TlsSession:
    """One connection's TLS over memory BIOs: bytes from the peer go in with `receive`,
    what to send comes out of `outgoing`. Never blocks, never raises OpenSSL's Want* errors."""

    __slots__ = ("conn", "eof", "refused_name", "_ssl", "_into", "_from", "_peer")

    def __init__(self, ctx: SSL.Context) -> None:
        self.conn = SSL.Connection(ctx, None)
        self.conn.set_accept_state()
        self.conn.set_app_data(self)
        self.eof = False  # the peer sent close_notify
        self.refused_name = False
        self._ssl = self.conn._ssl  # the SSL* and its two memory BIOs (pyOpenSSL's own)
        self._into = self.conn._into_ssl
        self._from = self.conn._from_ssl
        self._peer: PeerCertificate | None | bool = False  # False: not looked at yet

    # The record layer is compiled (network/tls_io.py); these are its calls for the rest.
    def receive(self, data: bytes) -> None:
        records_in(self, data)

    def handshake(self) -> bool:
        """Step the handshake on what has been received; True once it is done."""
        try:
            self.conn.do_handshake()
        except SSL.WantReadError:
            return False
        except SSL.Error as exc:
            raise TlsError(_reason(exc, self)) from None
        return True

    def read(self) -> bytes:
        """All the plaintext the received records hold (b"" if none yet, or at close_notify:
        see `eof`)."""
        return plaintext_out(self)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt `data` (all of it: a memory BIO takes any amount)."""
        plaintext_in(self, data)

    def outgoing(self) -> bytes:
        """The records to send now (b"" if none)."""
        return records_out(self)

    def _fail(self) -> NoReturn:
        """Raise TlsError for OpenSSL's error (taking it off OpenSSL's error queue)."""
        try:
            exception_from_error_queue(SSL.Error)  # (always raises, the queue emptied)
        except SSL.Error as exc:
            raise TlsError(_reason(exc, self)) from None

    def close_notify(self) -> None:
        """Queue a close_notify alert (sent with `outgoing`)."""
        try:
            self.conn.shutdown()
        except SSL.Error:
            pass

    @property
    def peer(self) -> PeerCertificate | None:
        """The certificate the client presented (verified: one that is not never gets this
        far), or None; parsed on first use, once per connection."""
        peer = self._peer
        if peer is False:
            cert = self.conn.get_peer_certificate(as_cryptography=True)
            peer = self._peer = None if cert is None else PeerCertificate(cert, self.conn)
        return peer  # type: ignore[return-value]

    @property
    def presented_certificate(self) -> bool:
        """Whether the client sent a certificate (without parsing it)."""
        cert = lib.SSL_get_peer_certificate(self._ssl)
        if cert == ffi.NULL:
            return False
        lib.X509_free(cert)
        return True

    @property
    def server_name(self) -> str | None:
        raw = self.conn.get_servername()
        return raw.decode("ascii", "replace") if raw else None

    @property
    def alpn(self) -> str | None:
        proto = self.conn.get_alpn_proto_negotiated()
        return proto.decode("ascii", "replace") if proto else None

    @property
    def version(self) -> str:
        return self.conn.get_protocol_version_name()

    @property
    def cipher(self) -> str | None:
        return self.conn.get_cipher_name()


def _reason(exc: SSL.Error, session: TlsSession) -> str:
    """A short, key-free reason for a failed handshake or session (for stats and logs)."""
    if session.refused_name:
        return UNKNOWN_SERVER_NAME
    args = exc.args[0] if exc.args else None
    if isinstance(args, list) and args:
        last = args[-1]
        if isinstance(last, tuple) and len(last) >= 3:
            reason = str(last[2])
            if reason == "peer did not return a certificate":
                return NO_CLIENT_CERTIFICATE
            if reason == "certificate verify failed":
                code = lib.SSL_get_verify_result(session._ssl)
                why = ffi.string(lib.X509_verify_cert_error_string(code)).decode("ascii", "replace")
                return f"{CLIENT_CERTIFICATE_REFUSED}: {why}"
            return reason
    return type(exc).__name__


def _xfcc_value(value: str) -> str:
    """An XFCC value, quoted where `,;="` would end it early."""
    return _quoted(value) if any(c in value for c in ',;="\\') else value


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class PeerCertificate:
    """A client's certificate as variables and x-forwarded-client-cert show it (Envoy's
    forms: the subject as RFC 4514, hex SHA-256 fingerprint and serial, SANs by type).
    The PEM forms and the XFCC element are made when first asked for."""

    __slots__ = ("cert", "subject", "issuer", "uri_sans", "dns_sans", "fingerprint_256", "serial", "_conn", "_pem", "_chain", "_by")

    def __init__(self, cert: x509.Certificate, conn: SSL.Connection) -> None:
        self.cert = cert
        self._conn = conn
        self.subject = cert.subject.rfc4514_string()
        self.issuer = cert.issuer.rfc4514_string()
        self.uri_sans, self.dns_sans = _sans(cert)
        self.fingerprint_256 = cert.fingerprint(hashes.SHA256()).hex()
        serial = f"{cert.serial_number:x}"
        self.serial = serial if len(serial) % 2 == 0 else "0" + serial
        self._pem: str | None = None
        self._chain: str | None = None
        self._by: tuple[str, ...] | None = None

    @property
    def pem(self) -> str:
        """The certificate, PEM, URL-encoded (Envoy's %DOWNSTREAM_PEER_CERT%)."""
        if self._pem is None:
            self._pem = quote(self.cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), safe="")
        return self._pem

    @property
    def chain(self) -> str:
        """The certificate and the chain the client sent, PEM, URL-encoded."""
        if self._chain is None:
            sent = self._conn.get_peer_cert_chain(as_cryptography=True) or []
            # (a server's OpenSSL leaves the client's own certificate out of the chain)
            certs = [self.cert] + [c for c in sent if c != self.cert]
            self._chain = quote("".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certs), safe="")
        return self._chain

    @property
    def local_uri_sans(self) -> tuple[str, ...]:
        """The URI SANs of the certificate this proxy served to the client (XFCC's By)."""
        if self._by is None:
            mine = self._conn.get_certificate(as_cryptography=True)
            self._by = () if mine is None else _sans(mine)[0]
        return self._by

    def xfcc_element(self, details: Any) -> str:
        """This connection's XFCC element: By (our URI SANs), Hash, then what `details` (a
        ClientCertDetails) asks for, in Envoy's order: Subject, URI, Cert, Chain, DNS."""
        parts = [f"By={_xfcc_value(by)}" for by in self.local_uri_sans]
        parts.append(f"Hash={self.fingerprint_256}")
        if details.subject:
            parts.append(f"Subject={_quoted(self.subject)}")
        if details.uri:
            parts += [f"URI={_xfcc_value(u)}" for u in self.uri_sans] or ["URI="]
        if details.cert:
            parts.append(f'Cert="{self.pem}"')
        if details.chain:
            parts.append(f'Chain="{self.chain}"')
        if details.dns:
            parts += [f"DNS={_xfcc_value(d)}" for d in self.dns_sans]
        return ";".join(parts)


def _sans(cert: x509.Certificate) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A certificate's URI and DNS subjectAltNames."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return (), ()
    return tuple(san.get_values_for_type(x509.UniformResourceIdentifier)), tuple(san.get_values_for_type(x509.DNSName))


# ------------------------------------------------------------------ the client side (clusters)


@dataclass(frozen=True)
class KeyPair:
    """A client certificate (its chain) and its key, checked to belong together."""

    cert_path: str
    chain: tuple[x509.Certificate, ...]
    key: Any  # a cryptography private key


def load_key_pair(cert_path: str, key_path: str) -> KeyPair:
    """Read a client certificate chain and its key; TlsConfigError never quotes the key. (A
    client certificate needs no DNS name, unlike load_certificate's.)"""
    pem = _read(cert_path, "certificate")
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise TlsConfigError(f"{cert_path} holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(_read(key_path, "private key"), password=None)
    except (ValueError, TypeError):
        raise TlsConfigError(f"{key_path} holds no unencrypted PEM private key") from None
    _key_kind(key)
    if _public_der(key.public_key()) != _public_der(certs[0].public_key()):
        raise TlsConfigError(f"the key {key_path} does not belong to the certificate {cert_path}")
    return KeyPair(cert_path=cert_path, chain=tuple(certs), key=key)


def check_ca_bundle(path: str) -> None:
    """A CA bundle that is readable and holds at least one PEM certificate."""
    try:
        x509.load_pem_x509_certificates(_read(path, "CA bundle"))
    except ValueError:
        raise TlsConfigError(f"{path} holds no PEM certificate") from None


# What an HTTP connection to a cluster offers when its tls names no alpn (and accepts back).
CLIENT_ALPN = {"http1": ("http/1.1",), "http2": ("h2",), "auto": ("h2", "http/1.1")}

# Failures are counted by kind: ssl_fail_verify_san (the chain is good, the name is not the
# certificate's), ssl_fail_verify_error (the chain: expired, unknown CA, self-signed...), and
# all of them, with any other (an alert, no shared version or cipher), ssl_connection_error.
_NAME_MISMATCH = (lib.X509_V_ERR_HOSTNAME_MISMATCH, lib.X509_V_ERR_IP_ADDRESS_MISMATCH)


def verify_off_warning(cluster: str) -> None:
    from proxy.log import get_logger

    get_logger("upstream").warning("cluster.tls_verify_off", cluster=cluster, note="the hosts' certificates are not verified")


class ClientTls:
    """A cluster's TLS to its hosts: one client context (trust, client certificate, versions,
    ciphers), the name each host is verified as, and the last session of each host, offered
    again on its next connection. `session(host, alpn)` starts one connection's handshake;
    `established` checks and counts it, `failed` counts a failure and says why."""

    def __init__(self, config: Any, cluster: str, stats: Any) -> None:
        self.cluster = cluster
        self.stats = stats
        self.verify = config.verify
        self.server_name = config.server_name
        self.alpn = tuple(config.alpn) if config.alpn is not None else None
        self.reuse = config.session_reuse
        self.last: dict[tuple[str, str | None], TlsSession] = {}  # per host: its last connection's
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(VERSIONS[config.min_version])
        ctx.set_max_proto_version(VERSIONS[config.max_version])
        ctx.set_options(SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_COMPRESSION)
        if config.ciphers:
            ctx.set_cipher_list(config.ciphers.encode())
        if config.ciphersuites:
            ctx.set_tls13_ciphersuites(config.ciphersuites.encode())
        if config.verify:
            if config.ca:
                check_ca_bundle(config.ca)
                ctx.load_verify_locations(config.ca)
            else:
                ctx.set_default_verify_paths()
            ctx.set_verify(SSL.VERIFY_PEER)
        else:
            ctx.set_verify(SSL.VERIFY_NONE)
            verify_off_warning(cluster)
        if config.cert and config.key:
            pair = load_key_pair(config.cert, config.key)
            ctx.use_certificate(pair.chain[0])
            ctx.use_privatekey(pair.key)
            for extra in pair.chain[1:]:
                ctx.add_extra_chain_cert(extra)
            ctx.check_privatekey()
        self.context = ctx

    def name_for(self, host: Any) -> str | None:
        """SNI and the verified name: the configured one, else a DNS host's own."""
        if self.server_name:
            return self.server_name
        address = host.address
        if address.is_unix or address.family != socket.AF_UNSPEC:
            return None
        return address.host.rstrip(".")

    def offered(self, protocol: str | None) -> tuple[str, ...]:
        if self.alpn is not None:
            return self.alpn
        return CLIENT_ALPN.get(protocol or "", ())

    def session(self, host: Any, protocol: str | None) -> ClientSession:
        """A client session for a new connection to `host`; `protocol` (http1, http2, None for
        bytes) picks the default ALPN offer."""
        name = self.name_for(host)
        session = ClientSession(self.context, (str(host.address), name), protocol)
        conn = session.conn
        if name:
            conn.set_tlsext_host_name(name.encode("idna"))
        offer = self.offered(protocol)
        if offer:
            conn.set_alpn_protos([p.encode() for p in offer])
        if self.verify:
            param = lib.SSL_get0_param(session._ssl)
            if name:
                lib.X509_VERIFY_PARAM_set_hostflags(param, lib.X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS)
                encoded = name.encode("idna")
                if not lib.X509_VERIFY_PARAM_set1_host(param, encoded, len(encoded)):
                    raise TlsError(f"cannot verify the name {name!r}")
            elif not host.address.is_unix:
                try:
                    packed = socket.inet_pton(host.address.family, host.address.host.partition("%")[0])
                except OSError:
                    raise TlsError(f"cannot verify the address {host.address.host!r}: set server_name") from None
                lib.X509_VERIFY_PARAM_set1_ip(param, packed, len(packed))
        if self.reuse:
            previous = self.last.get(session.key)
            if previous is not None:
                saved = previous.conn.get_session()
                if saved is not None:
                    conn.set_session(saved)
        return session

    def established(self, session: ClientSession) -> str | None:
        """The handshake is done: refuse a protocol the connection does not speak (the
        reason), else count it and keep the session for the host's next connection."""
        expected = CLIENT_ALPN.get(session.protocol or "")
        chosen = session.alpn
        if expected is not None and chosen is not None and chosen not in expected:
            self.stats.ssl_connection_error += 1
            return f"the server chose ALPN {chosen!r}; this connection speaks {' or '.join(expected)}"
        stats = self.stats
        stats.ssl_handshake += 1
        if lib.SSL_session_reused(session._ssl):
            stats.ssl_session_reused += 1
        if self.reuse:
            self.last[session.key] = session
        return None

    def failed(self, session: ClientSession, reason: str) -> str:
        """The failure, counted by kind: a certificate that did not verify says why
        (OpenSSL's verify result: "certificate has expired", "hostname mismatch")."""
        stats = self.stats
        stats.ssl_connection_error += 1
        self.last.pop(session.key, None)  # (a failed host's session is not offered again)
        code = lib.SSL_get_verify_result(session._ssl) if self.verify else 0
        if code != 0:
            detail = ffi.string(lib.X509_verify_cert_error_string(code)).decode("ascii", "replace")
            if code in _NAME_MISMATCH:
                stats.ssl_fail_verify_san += 1
                return f"TLS: certificate verify failed: {detail} (expected {session.key[1] or session.key[0]})"
            stats.ssl_fail_verify_error += 1
            return f"TLS: certificate verify failed: {detail}"
        return f"TLS: {reason}"


class ClientSession(TlsSession):
    """The client side of a TlsSession: connect state; `key` (address, name) finds the
    host's last session; `protocol` is what the connection will speak."""

    __slots__ = ("key", "protocol")

    def __init__(self, ctx: SSL.Context, key: tuple[str, str | None], protocol: str | None) -> None:
        super().__init__(ctx)
        self.conn.set_connect_state()
        self.key = key
        self.protocol = protocol

    @property
    def reused(self) -> bool:
        return bool(lib.SSL_session_reused(self._ssl))
