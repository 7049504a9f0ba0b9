"""Mutual TLS on listeners and certificate rotation, through a real `proxy run`, with real
peers: `openssl s_client -cert/-key`, curl `--cert/--key`, wrk. Client certificates come from
a trustme CA (and one from a CA the proxy does not trust); the upstream echoes the headers it
got, so x-forwarded-client-cert is seen where it arrives."""

from __future__ import annotations

import datetime
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.integration.harness import running_proxy
from tests.integration.http_upstream import HttpUpstream, http_config
from tests.integration.test_http_proxy import curl, upstream, url  # noqa: F401 - upstream is a fixture
from tests.integration.test_tls import https, listener_stats, s_client, served_subject
from tests.integration.test_upgrade import ctl, reload, status

SPIFFE = "spiffe://example.org/ns/web/sa/client"


def issue_client(ca: trustme.CA, common_name: str, uris: list[str], dns: list[str]) -> tuple[bytes, bytes]:
    """A client certificate (PEM) and its key, signed by `ca`: trustme gives no URI SANs."""
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    sans += [x509.DNSName(d) for d in dns]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example, Inc."), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


class Pki:
    """The server's CA and certificate (b.example.com), the client CA the proxy trusts with a
    client certificate from it, and a client certificate from a CA it does not trust."""

    def __init__(self, dir: Path) -> None:
        self.dir = dir
        self.server_ca = trustme.CA()
        self.server_ca_path = self._write("server-ca.pem", self.server_ca.cert_pem.bytes())
        server = self.server_ca.issue_cert("b.example.com", key_type=trustme.KeyType.ECDSA)
        self.cert = self._write("server.pem", server.cert_chain_pems[0].bytes())
        self.key = self._write("server.key", server.private_key_pem.bytes())
        self.client_ca = trustme.CA()
        self.client_ca_path = self._write("client-ca.pem", self.client_ca.cert_pem.bytes())
        pem, key = issue_client(self.client_ca, "client one", [SPIFFE], ["client.example.org"])
        self.client_cert, self.client_key = self._write("client.pem", pem), self._write("client.key", key)
        self.client = x509.load_pem_x509_certificate(pem)
        pem, key = issue_client(trustme.CA(), "stranger", [], ["stranger.example.org"])
        self.other_cert, self.other_key = self._write("other.pem", pem), self._write("other.key", key)

    def _write(self, name: str, data: bytes) -> str:
        path = self.dir / name
        path.write_bytes(data)
        os.chmod(path, 0o600)
        return str(path)

    def client_args(self) -> list[str]:
        return ["--cacert", self.server_ca_path, "--cert", self.client_cert, "--key", self.client_key]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    (tmp_path / "pki").mkdir()
    return Pki(tmp_path / "pki")


def mtls_config(up: HttpUpstream, pki: Pki, admin: str, mode: str = "require", protocol: str = "http", **http: Any) -> dict[str, Any]:
    config = http_config([up.address])
    listener = config["listeners"][0]
    listener["protocol"] = protocol
    listener["tls"] = {"certificates": [{"cert": pki.cert, "key": pki.key}], "client_certificate": mode, "client_ca": pki.client_ca_path}
    if http:
        listener["http"] = http
    config["admin"] = {"socket": admin}
    return config


def seen_headers(result: Any) -> dict[str, list[str]]:
    assert result.returncode == 0, result.stderr
    out: dict[str, list[str]] = {}
    for name, value in json.loads(result.stdout)["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


def _args(pki: Pki, *extra: str) -> list[str]:
    return [*extra, "-servername", "b.example.com", "-CAfile", pki.server_ca_path]


async def s_client_get(proxy: Any, pki: Pki, *extra: str) -> str:
    """`openssl s_client` sending an HTTP/1.0 request and reading until the proxy closes: a
    TLS 1.3 server refuses a client certificate after the client's handshake is done, so the
    alert comes where the answer would."""
    host, port = proxy.address("http")
    with trio.fail_after(15):
        result = await trio.run_process(
            ["openssl", "s_client", "-connect", f"{host}:{port}", "-brief", "-ign_eof", *_args(pki, *extra)],
            stdin=b"GET /echo HTTP/1.0\r\nHost: b.example.com\r\n\r\n",
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return (result.stdout + result.stderr).decode("latin-1")


# ---------------------------------------------------------------- mutual TLS


async def test_require_serves_a_client_with_a_certificate_and_logs_who_it_is(tmp_path, upstream, pki):
    admin = str(tmp_path / "admin.sock")
    log = tmp_path / "access.log"
    fmt = (
        "%protocol%|%downstream_peer_verified%|%downstream_peer_subject%|%downstream_peer_uri_san%|%downstream_peer_dns_san%"
        "|%downstream_peer_fingerprint_256%|%downstream_peer_serial%|%downstream_peer_issuer%"
    )
    config = mtls_config(upstream, pki, admin)
    config["listeners"][0]["access_log"] = [{"path": str(log), "format": fmt}]
    async with running_proxy(config, tmp_path) as proxy:
        hello = await s_client_get(proxy, pki, "-cert", pki.client_cert, "-key", pki.client_key)
        assert "Verification: OK" in hello and "alert" not in hello, hello
        for extra in ([], ["--http1.1"]):
            got = await curl(*extra, *pki.client_args(), *https(proxy, "b.example.com"))
            assert got.returncode == 0, got.stderr
        with trio.fail_after(5):
            while log.read_text().count("\n") < 3:
                await trio.sleep(0.02)
        subject = pki.client.subject.rfc4514_string()
        fingerprint = pki.client.fingerprint(hashes.SHA256()).hex()
        serial = f"{pki.client.serial_number:x}"
        serial = serial if len(serial) % 2 == 0 else "0" + serial
        issuer = pki.client.issuer.rfc4514_string()
        expected = f"SUCCESS|{subject}|{SPIFFE}|client.example.org|{fingerprint}|{serial}|{issuer}"
        lines = sorted(log.read_text().splitlines())  # s_client's HTTP/1.0, curl's HTTP/1.1 and HTTP/2
        assert [line.partition("|")[2] for line in lines] == [expected] * 3, lines
        assert lines[-1].startswith("HTTP/2|"), lines
        assert subject == "CN=client one,O=Example\\, Inc."
        stats = await listener_stats(admin)
        assert stats["ssl_handshake"] == 3 and stats["ssl_fail_verify_no_cert"] == 0 and stats["ssl_fail_verify_error"] == 0
        assert "PRIVATE KEY" not in proxy.log()


async def test_require_refuses_no_certificate_and_a_stranger_with_an_alert_and_a_count(tmp_path, upstream, pki):
    admin = str(tmp_path / "admin.sock")
    async with running_proxy(mtls_config(upstream, pki, admin), tmp_path) as proxy:
        bare = await s_client_get(proxy, pki)
        assert "alert certificate required" in bare, bare  # TLS 1.3's alert 116
        bare12 = await s_client_get(proxy, pki, "-tls1_2")
        assert "alert handshake failure" in bare12, bare12  # TLS 1.2 has no certificate_required
        stranger = await s_client_get(proxy, pki, "-cert", pki.other_cert, "-key", pki.other_key)
        assert "alert unknown ca" in stranger, stranger
        refused = await curl("--cacert", pki.server_ca_path, *https(proxy, "b.example.com"))
        assert refused.returncode != 0 and b"alert" in refused.stderr, refused.stderr
        wrong = await curl("--cacert", pki.server_ca_path, "--cert", pki.other_cert, "--key", pki.other_key, *https(proxy, "b.example.com"))
        assert wrong.returncode != 0 and b"unknown ca" in wrong.stderr, wrong.stderr
        ok = await curl(*pki.client_args(), *https(proxy, "b.example.com"))  # the others are served
        assert ok.returncode == 0, ok.stderr
        stats = await listener_stats(admin)
        assert stats["ssl_fail_verify_no_cert"] == 3, stats
        assert stats["ssl_fail_verify_error"] == 2, stats
        assert stats["ssl_connection_error"] == 0 and stats["ssl_handshake"] == 1, stats
        assert "Traceback" not in proxy.log()


async def test_request_serves_a_client_without_a_certificate_and_refuses_a_bad_one(tmp_path, upstream, pki):
    admin = str(tmp_path / "admin.sock")
    log = tmp_path / "access.log"
    config = mtls_config(upstream, pki, admin, mode="request")
    config["listeners"][0]["access_log"] = [{"path": str(log), "format": "%downstream_peer_verified% %downstream_peer_subject%"}]
    async with running_proxy(config, tmp_path) as proxy:
        anonymous = await curl("--cacert", pki.server_ca_path, *https(proxy, "b.example.com"))
        assert anonymous.returncode == 0, anonymous.stderr
        known = await curl(*pki.client_args(), *https(proxy, "b.example.com"))
        assert known.returncode == 0, known.stderr
        stranger = await s_client_get(proxy, pki, "-cert", pki.other_cert, "-key", pki.other_key)
        assert "alert unknown ca" in stranger, stranger
        with trio.fail_after(5):
            while log.read_text().count("\n") < 2:
                await trio.sleep(0.02)
        assert log.read_text().splitlines() == ["NONE -", "SUCCESS CN=client one,O=Example\\, Inc."]
        stats = await listener_stats(admin)
        assert stats["ssl_no_certificate"] == 1 and stats["ssl_fail_verify_error"] == 1 and stats["ssl_handshake"] == 2, stats


async def test_a_chain_deeper_than_verify_depth_is_refused(tmp_path, upstream, pki):
    admin = str(tmp_path / "admin.sock")
    root = pki.client_ca
    intermediate = root.create_child_ca()
    pem, key = issue_client(intermediate, "deep", [], ["deep.example.org"])
    (pki.dir / "deep.pem").write_bytes(pem)
    (pki.dir / "deep-chain.pem").write_bytes(intermediate.cert_pem.bytes())
    (pki.dir / "deep.key").write_bytes(key)
    deep_args = ["-cert", str(pki.dir / "deep.pem"), "-cert_chain", str(pki.dir / "deep-chain.pem"), "-key", str(pki.dir / "deep.key")]
    config = mtls_config(upstream, pki, admin)
    async with running_proxy(config, tmp_path) as proxy:  # the default depth takes it
        ok = await s_client_get(proxy, pki, *deep_args)
        assert "alert" not in ok, ok
    config["listeners"][0]["tls"]["verify_depth"] = 0  # issued by a CA of client_ca itself
    async with running_proxy(config, tmp_path) as proxy:
        deep = await s_client_get(proxy, pki, *deep_args)
        assert "alert unknown ca" in deep or "alert bad certificate" in deep, deep
        direct = await s_client_get(proxy, pki, "-cert", pki.client_cert, "-key", pki.client_key)
        assert "alert" not in direct, direct
        assert (await listener_stats(admin))["ssl_fail_verify_error"] == 1


# ---------------------------------------------------------------- x-forwarded-client-cert


async def test_sanitize_set_sends_our_xfcc_and_drops_a_forged_one_over_http1_and_http2(tmp_path, upstream, pki):
    admin = str(tmp_path / "admin.sock")
    details = {"subject": True, "uri": True, "dns": True}
    config = mtls_config(upstream, pki, admin, forward_client_cert_details="sanitize_set", set_current_client_cert_details=details)
    fingerprint = pki.client.fingerprint(hashes.SHA256()).hex()
    expected = f'Hash={fingerprint};Subject="CN=client one,O=Example\\\\, Inc.";URI={SPIFFE};DNS=client.example.org'
    async with running_proxy(config, tmp_path) as proxy:
        for extra in ([], ["--http1.1"]):
            got = seen_headers(await curl(*extra, *pki.client_args(), "-H", "x-forwarded-client-cert: Hash=forged", *https(proxy, "b.example.com")))
            assert got["x-forwarded-client-cert"] == [expected], got
    # with the certificate itself, URL-encoded
    details = {"cert": True, "chain": True}
    config = mtls_config(upstream, pki, admin, forward_client_cert_details="sanitize_set", set_current_client_cert_details=details)
    async with running_proxy(config, tmp_path) as proxy:
        got = seen_headers(await curl(*pki.client_args(), *https(proxy, "b.example.com")))
        (xfcc,) = got["x-forwarded-client-cert"]
        cert = re.search(r'Cert="([^"]*)"', xfcc)
        chain = re.search(r'Chain="([^"]*)"', xfcc)
        assert cert and chain, xfcc
        from urllib.parse import unquote

        assert x509.load_pem_x509_certificate(unquote(cert.group(1)).encode()) == pki.client
        assert x509.load_pem_x509_certificates(unquote(chain.group(1)).encode())[0] == pki.client


async def test_append_forward_and_forward_only_keep_the_clients_xfcc_only_over_mutual_tls(tmp_path, upstream, pki):
    admin = str(tmp_path / "admin.sock")
    fingerprint = pki.client.fingerprint(hashes.SHA256()).hex()
    forged = ["-H", "x-forwarded-client-cert: By=spiffe://front;Hash=abc"]
    config = mtls_config(upstream, pki, admin, mode="request", forward_client_cert_details="append_forward", set_current_client_cert_details={"uri": True})
    async with running_proxy(config, tmp_path) as proxy:
        for extra in ([], ["--http1.1"]):
            got = seen_headers(await curl(*extra, *pki.client_args(), *forged, *https(proxy, "b.example.com")))
            assert got["x-forwarded-client-cert"] == [f"By=spiffe://front;Hash=abc,Hash={fingerprint};URI={SPIFFE}"], got
            anonymous = seen_headers(await curl(*extra, "--cacert", pki.server_ca_path, *forged, *https(proxy, "b.example.com")))
            assert "x-forwarded-client-cert" not in anonymous, anonymous  # no client certificate: stripped
    config = mtls_config(upstream, pki, admin, mode="request", forward_client_cert_details="forward_only")
    async with running_proxy(config, tmp_path) as proxy:
        got = seen_headers(await curl(*pki.client_args(), *forged, *https(proxy, "b.example.com")))
        assert got["x-forwarded-client-cert"] == ["By=spiffe://front;Hash=abc"], got
        anonymous = seen_headers(await curl("--cacert", pki.server_ca_path, *forged, *https(proxy, "b.example.com")))
        assert "x-forwarded-client-cert" not in anonymous, anonymous


async def test_a_plaintext_listener_strips_xfcc_unless_always_forward_only(tmp_path, upstream):
    forged = ["-H", "x-forwarded-client-cert: Hash=forged", "-H", "X-Forwarded-Client-Cert: Hash=again"]
    async with running_proxy(http_config([upstream.address]), tmp_path) as proxy:
        got = seen_headers(await curl(*forged, url(proxy, "/echo")))
        assert "x-forwarded-client-cert" not in got, got
    config = http_config([upstream.address], protocol="http", http={"forward_client_cert_details": "always_forward_only"})
    async with running_proxy(config, tmp_path) as proxy:
        got = seen_headers(await curl(*forged, url(proxy, "/echo")))
        assert got["x-forwarded-client-cert"] == ["Hash=forged", "Hash=again"], got
        h2 = seen_headers(await curl("--http2-prior-knowledge", *forged, url(proxy, "/echo")))
        assert sorted(h2["x-forwarded-client-cert"]) == ["Hash=again", "Hash=forged"], h2


# ---------------------------------------------------------------- config checks


def test_client_certificate_settings_are_checked_with_their_paths(tmp_path, pki):
    from proxy.config.errors import ConfigError
    from proxy.config.loader import load_text

    (tmp_path / "empty.pem").write_text("")
    listeners = []
    for i, tls in enumerate(
        [
            {"client_certificate": "require"},
            {"client_certificate": "request", "client_ca": str(tmp_path / "missing.pem")},
            {"client_certificate": "require", "client_ca": str(tmp_path / "empty.pem")},
            {"client_ca": pki.client_ca_path},
        ]
    ):
        tls["certificates"] = [{"cert": pki.cert, "key": pki.key}]
        listeners.append({"name": f"l{i}", "address": f"127.0.0.1:{20000 + i}", "protocol": "http1", "route": "main", "tls": tls})
    listeners[0]["http"] = {"set_current_client_cert_details": {"subject": True}}
    config = http_config(["127.0.0.1:1"])
    config["listeners"] = listeners
    with pytest.raises(ConfigError) as err:
        load_text(json.dumps(config), fmt="json")
    text = str(err.value)
    assert "listeners[0].tls.client_ca" in text and "needs client_ca" in text, text
    assert "listeners[1].tls.client_ca" in text and "cannot read the client CA bundle" in text, text
    assert "listeners[2].tls.client_ca" in text and "holds no PEM certificate" in text, text
    assert "listeners[3].tls.client_ca" in text and "applies only with client_certificate" in text, text
    assert "listeners[0].http.set_current_client_cert_details" in text and "sanitize_set" in text, text


# ---------------------------------------------------------------- rotation


def replace_file(path: str, data: bytes) -> None:
    """As certificate tools do: write a new file beside it, then rename it over."""
    tmp = f"{path}.new"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def rotate_server(pki: Pki, *names: str) -> str:
    """A new server certificate (same name, new key) over the old files; its subject."""
    fresh = pki.server_ca.issue_cert(*(names or ("b.example.com",)), organization_unit_name=f"rotated {os.urandom(4).hex()}", key_type=trustme.KeyType.ECDSA)
    replace_file(pki.key, fresh.private_key_pem.bytes())  # (a key first: a moment of mismatch)
    replace_file(pki.cert, fresh.cert_chain_pems[0].bytes())
    return x509.load_pem_x509_certificate(fresh.cert_chain_pems[0].bytes()).subject.rfc4514_string()


async def wait_for_subject(proxy: Any, pki: Pki, subject: str, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while await served_subject(proxy, "-servername", "b.example.com") != subject:
            await trio.sleep(0.1)


async def test_a_rotated_certificate_serves_new_handshakes_while_open_connections_go_on(tmp_path, upstream, pki):
    import ssl

    from tests.integration.harness import connect
    from tests.integration.test_tls import _https_request

    admin = str(tmp_path / "admin.sock")
    config = mtls_config(upstream, pki, admin, mode="none")
    del config["listeners"][0]["tls"]["client_ca"]
    config["listeners"][0]["protocol"] = "http1"
    config["listeners"][0]["tls"]["watch_interval"] = "200ms"
    async with running_proxy(config, tmp_path) as proxy:
        before = await served_subject(proxy, "-servername", "b.example.com")
        context = ssl.create_default_context(cafile=pki.server_ca_path)
        held = trio.SSLStream(await connect(proxy.address("http")), context, server_hostname="b.example.com")
        assert (await _https_request(held, "/echo")).startswith(b"HTTP/1.1 200")
        subject = rotate_server(pki)
        assert subject != before
        await wait_for_subject(proxy, pki, subject)
        await proxy.wait_log("tls.certificates_rotated")
        assert (await _https_request(held, "/echo")).startswith(b"HTTP/1.1 200")  # its old session goes on
        ok = await curl("--cacert", pki.server_ca_path, *https(proxy, "b.example.com"))
        assert ok.returncode == 0, ok.stderr
        stats = await listener_stats(admin)
        assert stats["ssl_certificate_rotated"] == 1 and stats["ssl_certificate_rotation_failed"] == 0, stats
        await held.aclose()


async def test_a_bad_new_pair_keeps_the_old_one_and_shows_in_status_until_fixed(tmp_path, upstream, pki):
    admin = str(tmp_path / "admin.sock")
    config = mtls_config(upstream, pki, admin, mode="require")
    config["listeners"][0]["tls"]["watch_interval"] = "200ms"
    config["runtime"]["workers"] = 2
    async with running_proxy(config, tmp_path) as proxy:
        before = await served_subject(proxy, "-servername", "b.example.com")
        good_key = Path(pki.key).read_bytes()
        stranger = pki.server_ca.issue_cert("b.example.com", key_type=trustme.KeyType.ECDSA)
        replace_file(pki.key, stranger.private_key_pem.bytes())  # a key that is not the certificate's
        line = await proxy.wait_log("tls.rotation_failed")
        assert pki.key in line and "does not belong" in line, line
        with trio.fail_after(5):  # each worker watches its own
            while [e.get("workers") for e in (await status(proxy))["certificate_errors"]] != [[0, 1]]:
                await trio.sleep(0.1)
        st = await status(proxy)
        (error,) = st["certificate_errors"]
        assert error["listener"] == "http" and pki.key in error["error"] and "does not belong" in error["error"], st
        shown = await ctl(proxy, "status")
        assert "certificate errors:" in shown.stdout and pki.key in shown.stdout, shown.stdout
        assert await served_subject(proxy, "-servername", "b.example.com") == before  # the old pair serves on
        ok = await curl(*pki.client_args(), *https(proxy, "b.example.com"))
        assert ok.returncode == 0, ok.stderr

        async def errors_become(expected: list[str]) -> None:
            with trio.fail_after(5):  # every worker, each watching on its own
                while True:
                    found = (await status(proxy))["certificate_errors"]
                    if [e["error"] for e in found if e["workers"] == [0, 1]] == expected and len(found) == len(expected):
                        return
                    await trio.sleep(0.1)

        replace_file(pki.key, good_key)
        await errors_become([])
        replace_file(pki.client_ca_path, b"not a certificate\n")
        await errors_become([f"{pki.client_ca_path} holds no PEM certificate"])
        ok = await curl(*pki.client_args(), *https(proxy, "b.example.com"))  # the old client CA verifies on
        assert ok.returncode == 0, ok.stderr
        replace_file(pki.client_ca_path, pki.client_ca.cert_pem.bytes())
        await errors_become([])
        assert await served_subject(proxy, "-servername", "b.example.com") == before
        assert re.search(r"certificate errors: +none", (await ctl(proxy, "status")).stdout)
        stats = await listener_stats(admin)
        assert stats["ssl_certificate_rotation_failed"] == 4 and stats["ssl_certificate_rotated"] == 4, stats  # 2 workers
        assert "PRIVATE KEY" not in proxy.log()
        ok = await curl(*pki.client_args(), *https(proxy, "b.example.com"))
        assert ok.returncode == 0, ok.stderr


async def test_a_reload_reads_the_new_files_when_watching_is_off(tmp_path, upstream, pki):
    admin = str(tmp_path / "admin.sock")
    config = mtls_config(upstream, pki, admin, mode="none")
    del config["listeners"][0]["tls"]["client_ca"]
    config["listeners"][0]["tls"]["watch_interval"] = None
    async with running_proxy(config, tmp_path) as proxy:
        before = await served_subject(proxy, "-servername", "b.example.com")
        subject = rotate_server(pki)
        await trio.sleep(0.5)
        assert await served_subject(proxy, "-servername", "b.example.com") == before  # not watched
        outcome = await reload(proxy)
        assert outcome.get("result") == "ok", outcome
        assert await served_subject(proxy, "-servername", "b.example.com") == subject


async def test_rotation_under_wrk_load_loses_nothing(tmp_path, upstream, pki):
    admin = str(tmp_path / "admin.sock")
    config = mtls_config(upstream, pki, admin, mode="none", protocol="http1")
    del config["listeners"][0]["tls"]["client_ca"]
    config["listeners"][0]["tls"]["watch_interval"] = "200ms"
    async with running_proxy(config, tmp_path) as proxy:
        host, port = proxy.address("http")

        async def rotate() -> None:
            for _ in range(6):
                await trio.sleep(0.5)
                rotate_server(pki)

        runs: dict[str, str] = {}

        async def wrk(name: str, *args: str) -> None:
            done = await trio.run_process(["wrk", "-t1", *args, "-d4s", f"https://{host}:{port}/echo"], capture_stdout=True, check=False)
            runs[name] = done.stdout.decode()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(rotate)
            nursery.start_soon(wrk, "kept", "-c20")  # keep-alive: connections live across rotations
            # and new handshakes all along, crossing every rotation
            nursery.start_soon(wrk, "closing", "-c4", "-H", "Connection: close")
        for name, out in runs.items():
            requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
            assert requests > 50, (name, out)
            assert "Socket errors" not in out and "Non-2xx" not in out, (name, out)
        stats = await listener_stats(admin)
        assert stats["ssl_certificate_rotated"] >= 3 and stats["ssl_certificate_rotation_failed"] == 0, stats


async def test_a_resumed_session_keeps_its_client_certificate(tmp_path, upstream, pki):
    admin = str(tmp_path / "admin.sock")
    log = tmp_path / "access.log"
    config = mtls_config(upstream, pki, admin)
    config["listeners"][0]["access_log"] = [{"path": str(log), "format": "%downstream_peer_verified% %downstream_peer_subject%"}]
    session = str(tmp_path / "session.pem")
    async with running_proxy(config, tmp_path) as proxy:
        for version in ("-tls1_2", "-tls1_3"):
            host, port = proxy.address("http")
            outputs = []
            for resume in (["-sess_out", session], ["-sess_in", session]):
                with trio.fail_after(15):
                    done = await trio.run_process(
                        ["openssl", "s_client", "-connect", f"{host}:{port}", "-ign_eof", version, *resume, *_args(pki, "-cert", pki.client_cert, "-key", pki.client_key)],
                        stdin=b"GET /echo HTTP/1.0\r\nHost: b.example.com\r\n\r\n",
                        capture_stdout=True,
                        capture_stderr=True,
                        check=False,
                    )
                outputs.append(done.stdout.decode("latin-1"))
            assert "\nNew, " in outputs[0] and "\nReused, " in outputs[1], outputs[1]
            assert "HTTP/1.1 200" in outputs[1], outputs[1]
        with trio.fail_after(5):
            while log.read_text().count("\n") < 4:
                await trio.sleep(0.02)
        assert log.read_text().splitlines() == ["SUCCESS CN=client one,O=Example\\, Inc."] * 4
