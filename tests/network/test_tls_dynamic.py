"""The on-demand certificate cache (network/tls_dynamic.py), in process: one fetch per name
under concurrency, LRU eviction, expiry, a name that got nothing, and what a minted certificate
holds."""

from __future__ import annotations

import datetime
from typing import Any

import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from proxy.network import tls_dynamic
from proxy.stats import ListenerStats


class SlowProvider(tls_dynamic.CertificateProvider):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.asked: list[str] = []

    async def certificate(self, server_name: str) -> tuple[bytes, bytes] | None:
        self.asked.append(server_name)
        await trio.sleep(0.05)
        if server_name.startswith("none."):
            return None
        return b"chain-for-" + server_name.encode(), b"key"


def cache(provider: Any, **kw: Any) -> tuple[tls_dynamic.OnDemandCertificates, ListenerStats]:
    stats = ListenerStats()
    built = lambda chain, key, source: ("context", chain)  # noqa: E731 - stands in for an SSL.Context
    return tls_dynamic.OnDemandCertificates(build_context=built, stats=stats, listener="t", provider=provider, **kw), stats


def test_concurrent_resolves_of_one_name_ask_once() -> None:
    provider = SlowProvider({})
    on_demand, stats = cache(provider)
    got: list[Any] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(lambda: _append(got, on_demand.resolve("a.example")))

    trio.run(main)
    assert provider.asked == ["a.example"]
    assert got == [("context", b"chain-for-a.example")] * 10
    assert stats.ssl_provider_fetched == 1


async def _append(into: list[Any], awaitable: Any) -> None:
    into.append(await awaitable)


def test_the_cache_is_bounded_least_recently_used_first() -> None:
    provider = SlowProvider({})
    on_demand, stats = cache(provider, cache_size=2)

    async def main() -> None:
        await on_demand.resolve("a")
        await on_demand.resolve("b")
        await on_demand.resolve("a")  # a is now the most recent
        await on_demand.resolve("c")  # evicts b
        assert on_demand.cached("a") is not None and on_demand.cached("b") is None
        await on_demand.resolve("b")

    trio.run(main)
    assert provider.asked == ["a", "b", "c", "b"]
    assert stats.ssl_dynamic_cache_evicted == 2 and stats.ssl_dynamic_cache_hit == 1


def test_entries_expire_and_a_name_that_got_nothing_is_not_asked_again_at_once(monkeypatch) -> None:
    provider = SlowProvider({})
    on_demand, _ = cache(provider, cache_lifetime=10.0)
    now = [1000.0]
    monkeypatch.setattr(tls_dynamic.time, "monotonic", lambda: now[0])

    async def main() -> None:
        assert await on_demand.resolve("none.example") is None
        assert await on_demand.resolve("none.example") is None
        assert await on_demand.resolve("x.example") is not None
        now[0] += 11.0  # past the cache lifetime, within NEGATIVE_TTL
        assert on_demand.cached("x.example") is None
        await on_demand.resolve("x.example")
        await on_demand.resolve("none.example")
        now[0] += tls_dynamic.NEGATIVE_TTL
        await on_demand.resolve("none.example")

    trio.run(main)
    assert provider.asked == ["none.example", "x.example", "x.example", "none.example"]


def test_a_minted_certificate_names_only_its_name_and_chains_to_the_issuer() -> None:
    ca = trustme.CA()
    issuer = tls_dynamic.Issuer(ca.cert_pem.bytes(), ca.private_key_pem.bytes())
    chain, key_pem = tls_dynamic.mint(issuer, "m.example.org", "ecdsa-p256", 3600.0)
    leaf, parent = x509.load_pem_x509_certificates(chain)
    assert parent.subject == issuer.cert.subject and leaf.issuer == issuer.cert.subject
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["m.example.org"]
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    lifetime = leaf.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
    assert datetime.timedelta(minutes=58) < lifetime <= datetime.timedelta(hours=1)
    leaf.verify_directly_issued_by(issuer.cert)
    key = serialization.load_pem_private_key(key_pem, None)
    assert key.public_key().public_numbers() == leaf.public_key().public_numbers()  # type: ignore[union-attr]
