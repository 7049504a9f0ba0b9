"""Certificates on demand: for a server name no configured certificate serves, fetch one from a
certificate provider, or mint one signed by a configured issuing CA.

The listener reads the ClientHello before OpenSSL sees it (network/tls_inspector.py), so the
name is known while the handshake has not begun: `resolve(name)` awaits the provider or the mint
(on a worker thread: an RSA key takes ~50 ms of CPU), caches the context it builds, and the
handshake then finds it in the SNI callback (`cached`). The cache is a bounded LRU whose entries
expire; concurrent handshakes for one new name wait for a single mint or fetch. A name that got
nothing (the provider had none, it failed, or the name is not one `server_names` allows) is
remembered for NEGATIVE_TTL and gets the listener's default certificate, or its refusal.

A provider is a class named by `package.module:Class` (as filters are), subclassing
CertificateProvider: a deployment fetches certificates from its own store on demand.
"""

from __future__ import annotations

import datetime
import hashlib
import time
from collections import OrderedDict
from typing import Any, Callable

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from proxy.log import get_logger

log = get_logger("tls")

NEGATIVE_TTL = 30.0  # seconds a name that got no certificate is not asked for again
MAX_CONCURRENT_MINTS = 2  # threads minting at once (the rest queue): the worker keeps a core


class CertificateProvider:
    """Base class of a certificate provider (`tls.provider.type: package.module:Class`).

    `__init__` gets the provider's `config` mapping. `certificate` is awaited on the worker's
    event loop for each name it has not been asked about recently: return the PEM certificate
    chain and the PEM private key (unencrypted) for `server_name`, or None to let the listener
    fall back (its default certificate, or a refusal). Do slow work asynchronously, or in
    `trio.to_thread.run_sync`, never blocking: the worker serves every connection on one thread.
    An exception counts as no certificate (logged, counted in ssl_provider_error).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    async def certificate(self, server_name: str) -> tuple[bytes, bytes] | None:
        raise NotImplementedError


class Issuer:
    """The issuing CA of minted certificates: its certificate and key, loaded once."""

    def __init__(self, cert_pem: bytes, key_pem: bytes) -> None:
        self.cert = x509.load_pem_x509_certificate(cert_pem)
        self.key = serialization.load_pem_private_key(key_pem, password=None)
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM)


def mint(issuer: Issuer, server_name: str, key_type: str, lifetime: float) -> tuple[bytes, bytes]:
    """A new key and a certificate for `server_name` (its only SAN) signed by `issuer`, valid
    from an hour ago (clocks differ) for `lifetime` seconds: (certificate chain PEM, key PEM).
    CPU-heavy: run it off the event loop."""
    key: Any
    if key_type == "rsa-2048":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    # (a serial of 159 random bits, as CAs must; the digest of the name keeps it readable in logs)
    serial = int.from_bytes(hashlib.sha256(server_name.encode() + now.isoformat().encode()).digest()[:19], "big") >> 1
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_name)]))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial or 1)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(seconds=lifetime))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(server_name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(issuer.key, hashes.SHA256())  # type: ignore[arg-type]
    )
    chain = cert.public_bytes(serialization.Encoding.PEM) + issuer.cert_pem
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return chain, key_pem


class _Pending:
    """One name's mint or fetch in progress, which other handshakes for the name wait on."""

    __slots__ = ("done", "context")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.context: Any = None


class OnDemandCertificates:
    """A listener's provider and/or issuer, and the cache of what they gave."""

    def __init__(
        self,
        *,
        build_context: Callable[[bytes, bytes, str], Any],
        stats: Any,
        listener: str,
        provider: CertificateProvider | None = None,
        issuer: Issuer | None = None,
        key_type: str = "ecdsa-p256",
        lifetime: float = 86400.0,
        cache_size: int = 1000,
        cache_lifetime: float = 3600.0,
        server_names: list[str] | None = None,
    ) -> None:
        self.build_context = build_context  # (chain PEM, key PEM, where from) -> SSL.Context
        self.stats = stats  # the listener's ListenerStats (its ssl_dynamic_* counters)
        self.listener = listener
        self.provider = provider
        self.issuer = issuer
        self.key_type = key_type
        self.lifetime = lifetime
        self.cache_size = cache_size
        self.cache_lifetime = cache_lifetime
        self.allowed = [p.lower() for p in server_names] if server_names else None
        self.cache: OrderedDict[str, tuple[Any, float]] = OrderedDict()  # name -> (context or None, expires)
        self.pending: dict[str, _Pending] = {}
        self.limiter = trio.CapacityLimiter(MAX_CONCURRENT_MINTS)

    def cached(self, name: str) -> Any:
        """The context cached for `name` (None if there is none, or it expired, or the name got
        nothing). For the SNI callback: never waits."""
        entry = self.cache.get(name)
        if entry is None:
            return None
        context, expires = entry
        if expires <= time.monotonic():
            del self.cache[name]
            return None
        self.cache.move_to_end(name)
        return context

    def knows(self, name: str) -> bool:
        """Whether `name` has a live cache entry (a context, or a recent nothing)."""
        entry = self.cache.get(name)
        return entry is not None and entry[1] > time.monotonic()

    async def resolve(self, name: str) -> Any:
        """The context for `name`, from the cache, the provider or a mint (None: nothing for
        it). Concurrent calls for one name share one fetch or mint."""
        if self.knows(name):
            self.stats.ssl_dynamic_cache_hit += 1
            return self.cached(name)
        pending = self.pending.get(name)
        if pending is not None:
            await pending.done.wait()
            return pending.context
        pending = self.pending[name] = _Pending()
        try:
            context = await self._obtain(name)
            pending.context = context
            ttl = self.cache_lifetime if context is not None else NEGATIVE_TTL
            self.cache[name] = (context, time.monotonic() + ttl)
            self.cache.move_to_end(name)
            while len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
                self.stats.ssl_dynamic_cache_evicted += 1
            return context
        finally:
            del self.pending[name]
            pending.done.set()

    async def _obtain(self, name: str) -> Any:
        if self.provider is not None:
            try:
                found = await self.provider.certificate(name)
            except Exception as exc:  # a provider's bug or outage: the name falls back
                self.stats.ssl_provider_error += 1
                log.error("tls.provider_failed", listener=self.listener, server_name=name, error=repr(exc))
                found = None
            if found is not None:
                try:
                    context = self.build_context(found[0], found[1], f"the provider's certificate for {name}")
                except Exception as exc:  # (TlsConfigError, or OpenSSL refusing it: never the key)
                    self.stats.ssl_provider_error += 1
                    log.error("tls.provider_certificate_refused", listener=self.listener, server_name=name, error=str(exc))
                else:
                    self.stats.ssl_provider_fetched += 1
                    return context
        if self.issuer is None or not self._may_mint(name):
            return None
        issuer, key_type, lifetime = self.issuer, self.key_type, self.lifetime
        chain, key = await trio.to_thread.run_sync(mint, issuer, name, key_type, lifetime, limiter=self.limiter)
        self.stats.ssl_dynamic_minted += 1
        log.info("tls.certificate_minted", listener=self.listener, server_name=name, key_type=key_type)
        return self.build_context(chain, key, f"the certificate minted for {name}")

    def _may_mint(self, name: str) -> bool:
        """Whether `server_names` allows minting for `name`: exact names, and `*.example.com`
        for one label under it, as certificates' names match (anything when it is not set)."""
        allowed = self.allowed
        if allowed is None or name in allowed:
            return True
        dot = name.find(".")
        return dot > 0 and "*" + name[dot:] in allowed
