"""Certificates on demand through a real `proxy run`: minted by an issuing CA for names no
configured certificate serves (once per name, however many handshakes ask at once), fetched
from a provider class, the allowed names, and the config checks. Clients: curl and
`openssl s_client`, verifying against the test CA."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from proxy.config import ConfigError, load_text
from tests.integration.harness import admin_get, running_proxy
from tests.integration.http_upstream import HttpUpstream, http_config
from tests.integration.test_http_proxy import curl, upstream  # noqa: F401 - upstream is a fixture
from tests.integration.test_tls import Certs, certs, https  # noqa: F401 - certs is a fixture


@pytest.fixture
def issuer(tmp_path: Path, certs: Certs) -> dict[str, str]:
    """The test CA as the issuer (trustme's CA has basicConstraints CA:TRUE)."""
    key = tmp_path / "issuer.key"
    certs.ca.private_key_pem.write_to_path(str(key))
    return {"cert": certs.ca_path, "key": str(key)}


def on_demand_config(up: HttpUpstream, certs: Certs, admin: str, on_demand: dict[str, Any], certificates: list[str] = ("b",)) -> dict[str, Any]:
    config = http_config([up.address])
    listener = config["listeners"][0]
    listener["protocol"] = "http"
    listener["tls"] = {"certificates": [certs.entry(name) for name in certificates], "on_demand": on_demand}
    config["admin"] = {"socket": admin}
    return config


async def served(proxy: Any, name: str | None, *args: str) -> x509.Certificate | None:
    host, port = proxy.address("http")
    sni = ["-servername", name] if name else ["-noservername"]
    result = await trio.run_process(
        ["openssl", "s_client", "-connect", f"{host}:{port}", *sni, *args], stdin=b"", capture_stdout=True, capture_stderr=True, check=False
    )
    pem = result.stdout.decode("latin-1")
    start, end = pem.find("-----BEGIN CERTIFICATE-----"), pem.find("-----END CERTIFICATE-----")
    if start < 0:
        return None
    return x509.load_pem_x509_certificate(pem[start : end + len("-----END CERTIFICATE-----")].encode())


def dns_names(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


async def listener_stats(admin: str) -> dict[str, int]:
    prefix = "listener.http."
    return {k.removeprefix(prefix): v for k, v in json.loads(await admin_get(admin, "/stats")).items() if k.startswith(prefix)}


async def test_a_name_without_a_certificate_gets_one_minted_once(tmp_path, upstream, certs, issuer):
    admin = str(tmp_path / "admin.sock")
    async with running_proxy(on_demand_config(upstream, certs, admin, {"issuer": issuer}), tmp_path) as proxy:
        ok = await curl("--cacert", certs.ca_path, *https(proxy, "new.example.net"))  # curl verifies chain and name
        assert ok.returncode == 0, ok.stderr
        cert = await served(proxy, "new.example.net")
        assert cert is not None and dns_names(cert) == ["new.example.net"]
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)  # ECDSA P-256 by default
        assert cert.issuer == x509.load_pem_x509_certificate(Path(certs.ca_path).read_bytes()).subject
        configured = await served(proxy, "b.example.com")  # a configured name keeps its own
        assert configured is not None and configured.subject.rfc4514_string() == certs.subjects["b"]
        stats = await listener_stats(admin)
        assert stats["ssl_dynamic_minted"] == 1, stats
        assert stats["ssl_dynamic_cache_hit"] == 1, stats  # the second handshake for the name
        assert "-----BEGIN" not in proxy.log()


async def test_concurrent_handshakes_for_a_new_name_share_one_mint(tmp_path, upstream, certs, issuer):
    admin = str(tmp_path / "admin.sock")
    config = on_demand_config(upstream, certs, admin, {"issuer": issuer, "key_type": "rsa-2048"})
    async with running_proxy(config, tmp_path) as proxy:
        results: list[Any] = []

        async def one() -> None:
            results.append(await curl("--cacert", certs.ca_path, *https(proxy, "burst.example.net")))

        async with trio.open_nursery() as nursery:
            for _ in range(12):
                nursery.start_soon(one)
        assert [r.returncode for r in results] == [0] * 12, [r.stderr for r in results if r.returncode]
        cert = await served(proxy, "burst.example.net")
        assert cert is not None and isinstance(cert.public_key(), rsa.RSAPublicKey)
        stats = await listener_stats(admin)
        assert stats["ssl_dynamic_minted"] == 1 and stats["ssl_handshake"] == 13, stats


async def test_only_allowed_names_are_minted_and_the_rest_get_the_default_or_a_refusal(tmp_path, upstream, certs, issuer):
    admin = str(tmp_path / "admin.sock")
    on_demand = {"issuer": issuer, "server_names": ["*.apps.example.net", "exact.example.net"]}
    async with running_proxy(on_demand_config(upstream, certs, admin, on_demand), tmp_path) as proxy:
        for name in ("one.apps.example.net", "exact.example.net"):
            cert = await served(proxy, name)
            assert cert is not None and dns_names(cert) == [name]
        for name in ("a.b.apps.example.net", "other.example.net"):
            cert = await served(proxy, name)
            assert cert is not None and cert.subject.rfc4514_string() == certs.subjects["b"], name  # the default
        assert (await listener_stats(admin))["ssl_dynamic_minted"] == 2
    config = on_demand_config(upstream, certs, admin, on_demand, certificates=[])  # on demand only
    async with running_proxy(config, tmp_path) as proxy:
        assert await served(proxy, "two.apps.example.net") is not None
        assert await served(proxy, "other.example.net") is None  # no default to fall back on
        assert await served(proxy, None) is None
        stats = await listener_stats(admin)
        assert stats["ssl_sni_refused"] == 2 and stats["ssl_handshake"] == 1, stats
        assert "Traceback" not in proxy.log()


async def test_a_provider_is_asked_first_and_its_failures_fall_back(tmp_path, upstream, certs, issuer):
    store = tmp_path / "store"
    store.mkdir()
    stored = certs.ca.issue_cert("stored.example.net")
    stored.cert_chain_pems[0].write_to_path(str(store / "stored.example.net.pem"))
    stored.private_key_pem.write_to_path(str(store / "stored.example.net.key"))
    admin = str(tmp_path / "admin.sock")
    provider = {"type": "tests.integration.cert_provider:DirectoryProvider", "config": {"directory": str(store), "delay": "0.2"}}
    async with running_proxy(on_demand_config(upstream, certs, admin, {"provider": provider, "issuer": issuer}), tmp_path) as proxy:
        got = await served(proxy, "stored.example.net")
        assert got is not None and got.serial_number == x509.load_pem_x509_certificate(stored.cert_chain_pems[0].bytes()).serial_number
        minted = await served(proxy, "unstored.example.net")  # the provider has none: minted
        assert minted is not None and dns_names(minted) == ["unstored.example.net"]
        boom = await served(proxy, "boom.example.net")  # the provider fails: minted all the same
        assert boom is not None and dns_names(boom) == ["boom.example.net"]
        for _ in range(3):
            assert await served(proxy, "stored.example.net") is not None  # cached: not asked again
        stats = await listener_stats(admin)
        assert (stats["ssl_provider_fetched"], stats["ssl_provider_error"], stats["ssl_dynamic_minted"]) == (1, 1, 2), stats
        asked = (store / "asked.log").read_text().split()
        assert sorted(asked) == ["boom.example.net", "stored.example.net", "unstored.example.net"]
        assert "tls.provider_failed" in proxy.log() and "Traceback" not in proxy.log()


def check(config: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(json.dumps(config), fmt="json")
    return str(info.value)


def test_on_demand_settings_are_checked_when_the_config_loads(tmp_path, certs, issuer):
    def base(on_demand: Any, certificates: list[str] = ["b"]) -> dict[str, Any]:
        config = http_config(["127.0.0.1:9"])
        config["listeners"][0]["tls"] = {"certificates": [certs.entry(n) for n in certificates], "on_demand": on_demand}
        return config

    leaf = certs.entry("b")
    errors = check(base({"issuer": {"cert": leaf["cert"], "key": leaf["key"]}}))
    assert "listeners[0].tls.on_demand.issuer" in errors and "not a CA certificate" in errors
    errors = check(base({}))
    assert "give a provider, an issuer, or both" in errors
    errors = check(base({"provider": {"type": "tests.integration.cert_provider:NotAProvider"}}))
    assert "listeners[0].tls.on_demand.provider.type" in errors and "CertificateProvider" in errors
    errors = check(base({"provider": {"type": "no.such.module:X"}}))
    assert "cannot import" in errors
    errors = check(base({"issuer": issuer, "lifetime": "1h", "cache_lifetime": "2h"}))
    assert "listeners[0].tls.on_demand.cache_lifetime" in errors
    errors = check(base(None, certificates=[]))
    assert "listeners[0].tls.certificates" in errors
    key_text = Path(issuer["key"]).read_text()
    errors = check(base({"issuer": {"cert": issuer["cert"], "key": leaf["key"]}}))
    assert "does not belong" in errors and key_text[40:80] not in errors
