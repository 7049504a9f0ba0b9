"""TLS termination through a real `proxy run`, with real peers: curl and h2load (ALPN h2 and
http/1.1), `openssl s_client` (SNI, signature algorithms, versions), and raw sockets for bad
input. Certificates from trustme, a test CA."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme
from cryptography import x509

from tests.integration.harness import admin_get, connect, read_all, running_proxy
from tests.integration.http_upstream import HttpUpstream, http_config
from tests.integration.test_http_proxy import curl, upstream  # noqa: F401 - upstream is a fixture


class Certs:
    """A CA and, in `dir`, an RSA certificate for a.example.com and *.w.example.com, an ECDSA
    one for a.example.com, and an ECDSA one for b.example.com."""

    def __init__(self, dir: Path) -> None:
        self.ca = trustme.CA()
        self.dir = dir
        self.ca_path = str(dir / "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_path)
        self.subjects: dict[str, str] = {}
        for name, names, kind in (
            ("a_rsa", ["a.example.com", "*.w.example.com"], trustme.KeyType.RSA),
            ("a_ec", ["a.example.com"], trustme.KeyType.ECDSA),
            ("b", ["b.example.com"], trustme.KeyType.ECDSA),
        ):
            cert = self.ca.issue_cert(*names, key_type=kind)
            cert.private_key_pem.write_to_path(str(dir / f"{name}.key"))
            cert.cert_chain_pems[0].write_to_path(str(dir / f"{name}.pem"))
            self.subjects[name] = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes()).subject.rfc4514_string()

    def entry(self, name: str, **extra: Any) -> dict[str, Any]:
        return {"cert": str(self.dir / f"{name}.pem"), "key": str(self.dir / f"{name}.key"), **extra}


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    (tmp_path / "certs").mkdir()
    return Certs(tmp_path / "certs")


def tls_config(up: HttpUpstream, certs: Certs, admin: str, protocol: str = "http", **tls: Any) -> dict[str, Any]:
    config = http_config([up.address])
    listener = config["listeners"][0]
    listener["protocol"] = protocol
    listener["tls"] = {"certificates": [certs.entry("b"), certs.entry("a_rsa"), certs.entry("a_ec")], **tls}
    config["admin"] = {"socket": admin}
    return config


def https(proxy: Any, name: str, path: str = "/echo") -> list[str]:
    host, port = proxy.address("http")
    return ["--resolve", f"{name}:{port}:{host}", f"https://{name}:{port}{path}"]


async def s_client(proxy: Any, *args: str) -> str:
    host, port = proxy.address("http")
    result = await trio.run_process(
        ["openssl", "s_client", "-connect", f"{host}:{port}", "-brief", *args],
        stdin=b"",
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return (result.stdout + result.stderr).decode("latin-1")


async def served_subject(proxy: Any, *args: str) -> str:
    host, port = proxy.address("http")
    result = await trio.run_process(
        ["openssl", "s_client", "-connect", f"{host}:{port}", *args], stdin=b"", capture_stdout=True, capture_stderr=True, check=False
    )
    pem = result.stdout.decode("latin-1")
    start, end = pem.find("-----BEGIN CERTIFICATE-----"), pem.find("-----END CERTIFICATE-----")
    assert start >= 0, pem + result.stderr.decode("latin-1")
    cert = x509.load_pem_x509_certificate(pem[start : end + len("-----END CERTIFICATE-----")].encode())
    return cert.subject.rfc4514_string()


async def listener_stats(admin: str) -> dict[str, int]:
    prefix = "listener.http."
    return {k.removeprefix(prefix): v for k, v in json.loads(await admin_get(admin, "/stats")).items() if k.startswith(prefix)}


async def test_curl_over_tls_speaks_h2_or_http1_by_alpn(tmp_path, upstream, certs):
    admin = str(tmp_path / "admin.sock")
    async with running_proxy(tls_config(upstream, certs, admin), tmp_path) as proxy:
        h2 = await curl("--cacert", certs.ca_path, "-w", "\n%{http_version}", *https(proxy, "a.example.com"))
        assert h2.returncode == 0, h2.stderr
        body, _, version = h2.stdout.rpartition(b"\n")
        assert version == b"2"
        headers = {k.lower(): v for k, v in json.loads(body)["headers"]}
        assert headers["x-forwarded-proto"] == "https"
        h1 = await curl("--http1.1", "--cacert", certs.ca_path, "-w", "\n%{http_version}", *https(proxy, "a.example.com"))
        assert h1.returncode == 0, h1.stderr
        body, _, version = h1.stdout.rpartition(b"\n")
        assert version == b"1.1"
        assert {k.lower(): v for k, v in json.loads(body)["headers"]}["x-forwarded-proto"] == "https"
        body_file = tmp_path / "body"
        body_file.write_bytes(b"x" * 300_000)
        posted = await curl("--cacert", certs.ca_path, "--data-binary", f"@{body_file}", *https(proxy, "a.example.com"))
        assert json.loads(posted.stdout)["body_length"] == 300_000  # many records each way
        stats = await listener_stats(admin)
        assert stats["ssl_handshake"] == 3 and stats["ssl_connection_error"] == 0


async def test_access_log_has_the_tls_variables(tmp_path, upstream, certs):
    admin = str(tmp_path / "admin.sock")
    log = tmp_path / "access.log"
    fmt = "%protocol% %requested_server_name% %downstream_tls_version% %downstream_alpn% %downstream_tls_cipher%"
    config = tls_config(upstream, certs, admin)
    config["listeners"][0]["access_log"] = [{"path": str(log), "format": fmt}]
    async with running_proxy(config, tmp_path) as proxy:
        for extra in ([], ["--http1.1"]):
            got = await curl(*extra, "--cacert", certs.ca_path, *https(proxy, "x.w.example.com"))
            assert got.returncode == 0, got.stderr
        with trio.fail_after(5):
            while log.read_text().count("\n") < 2:
                await trio.sleep(0.02)
        h1, h2 = sorted(log.read_text().splitlines())
        assert h2.startswith("HTTP/2 x.w.example.com TLSv1.3 h2 TLS_"), h2
        assert h1.startswith("HTTP/1.1 x.w.example.com TLSv1.3 http/1.1 TLS_"), h1


async def test_h2load_many_streams_and_http1_keep_alive_over_tls(tmp_path, upstream, certs):
    admin = str(tmp_path / "admin.sock")
    async with running_proxy(tls_config(upstream, certs, admin), tmp_path) as proxy:
        host, port = proxy.address("http")
        for extra in ([], ["--h1"]):
            result = await trio.run_process(
                ["h2load", *extra, "-n", "1000", "-c", "4", "-m", "10", f"https://{host}:{port}/echo"], capture_stdout=True, check=False
            )
            out = result.stdout.decode()
            assert "1000 succeeded, 0 failed" in out, out
            assert "status codes: 1000 2xx" in out, out


async def test_sni_picks_the_certificate_exact_then_wildcard_then_the_first(tmp_path, upstream, certs):
    admin = str(tmp_path / "admin.sock")
    async with running_proxy(tls_config(upstream, certs, admin), tmp_path) as proxy:
        assert await served_subject(proxy, "-servername", "b.example.com") == certs.subjects["b"]
        assert await served_subject(proxy, "-servername", "x.w.example.com", "-sigalgs", "RSA-PSS+SHA256") == certs.subjects["a_rsa"]
        assert await served_subject(proxy, "-servername", "x.y.w.example.com") == certs.subjects["b"]  # one label only
        assert await served_subject(proxy, "-servername", "unknown.example.org") == certs.subjects["b"]
        assert await served_subject(proxy, "-noservername") == certs.subjects["b"]
        # curl checks the name against the certificate it got
        ok = await curl("--cacert", certs.ca_path, *https(proxy, "x.w.example.com"))
        assert ok.returncode == 0, ok.stderr


async def test_one_name_with_rsa_and_ecdsa_serves_what_the_client_can_verify(tmp_path, upstream, certs):
    admin = str(tmp_path / "admin.sock")
    async with running_proxy(tls_config(upstream, certs, admin), tmp_path) as proxy:
        rsa = await s_client(proxy, "-servername", "a.example.com", "-sigalgs", "RSA-PSS+SHA256:RSA+SHA256")
        assert "type: RSA-PSS" in rsa, rsa
        ec = await s_client(proxy, "-servername", "a.example.com", "-sigalgs", "ECDSA+SHA256")
        assert "type: ECDSA" in ec, ec
        assert await served_subject(proxy, "-servername", "a.example.com", "-sigalgs", "ECDSA+SHA256") == certs.subjects["a_ec"]
        assert await served_subject(proxy, "-servername", "a.example.com", "-sigalgs", "RSA-PSS+SHA256") == certs.subjects["a_rsa"]


async def test_an_unknown_name_is_refused_with_an_alert_when_so_configured(tmp_path, upstream, certs):
    admin = str(tmp_path / "admin.sock")
    async with running_proxy(tls_config(upstream, certs, admin, unknown_server_name="refuse"), tmp_path) as proxy:
        refused = await s_client(proxy, "-servername", "nobody.example.org")
        assert "unrecognized name" in refused, refused
        served = await s_client(proxy, "-servername", "b.example.com")
        assert "Protocol version: TLSv1.3" in served, served
        stats = await listener_stats(admin)
        assert stats["ssl_sni_refused"] == 1 and stats["ssl_handshake"] == 1
        assert "Traceback" not in proxy.log()


async def test_versions_and_ciphers_are_enforced(tmp_path, upstream, certs):
    admin = str(tmp_path / "admin.sock")
    config = tls_config(upstream, certs, admin, min_version="1.3")
    async with running_proxy(config, tmp_path) as proxy:
        old = await s_client(proxy, "-servername", "b.example.com", "-tls1_2")
        assert "Protocol version" not in old and "alert" in old, old
        new = await s_client(proxy, "-servername", "b.example.com", "-tls1_3")
        assert "Protocol version: TLSv1.3" in new, new
    config = tls_config(upstream, certs, admin, max_version="1.2", ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
    async with running_proxy(config, tmp_path) as proxy:
        chosen = await s_client(proxy, "-servername", "b.example.com")
        assert "Protocol version: TLSv1.2" in chosen and "Ciphersuite: ECDHE-ECDSA-AES128-GCM-SHA256" in chosen, chosen
        refused = await s_client(proxy, "-servername", "b.example.com", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384")
        assert "Ciphersuite" not in refused and "alert handshake failure" in refused, refused


async def test_bad_input_gets_a_clean_close_and_a_count_and_spares_other_connections(tmp_path, upstream, certs):
    admin = str(tmp_path / "admin.sock")
    config = tls_config(upstream, certs, admin, handshake_timeout="500ms")
    async with running_proxy(config, tmp_path) as proxy:
        address = proxy.address("http")
        stalled = await connect(address)  # sends nothing: the handshake times out
        hello = bytes.fromhex("16030100c8010000c40303") + b"\x00" * 20  # a ClientHello cut short
        truncated = await connect(address)
        await truncated.send_all(hello)
        for junk in (b"\x16\x03\x01\x00\x05garbage-garbage", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"):
            stream = await connect(address)
            await stream.send_all(junk)
            with trio.fail_after(5):
                rest = await read_all(stream)  # closed by the proxy: an alert at most, then EOF
            assert not rest.startswith(b"HTTP/"), rest
            await stream.aclose()
        ok = await curl("--cacert", certs.ca_path, *https(proxy, "b.example.com"))  # others are served
        assert ok.returncode == 0, ok.stderr
        with trio.fail_after(5):
            assert await read_all(stalled) == b""  # the timeout closed it
            await read_all(truncated)
        stats = await listener_stats(admin)
        assert stats["ssl_connection_error"] == 2, stats
        assert stats["ssl_handshake_timeout"] == 2, stats  # the silent one and the cut-short one
        assert stats["ssl_handshake"] == 1
        assert "Traceback" not in proxy.log()


def test_a_bad_certificate_or_key_refuses_the_config_with_the_path(tmp_path, certs):
    from proxy.config.errors import ConfigError
    from proxy.config.loader import load_text

    (tmp_path / "empty.pem").write_text("")
    entries = [
        {"cert": str(tmp_path / "missing.pem"), "key": str(certs.dir / "b.key")},
        {"cert": str(certs.dir / "b.pem"), "key": str(certs.dir / "a_ec.key")},
        {"cert": str(tmp_path / "empty.pem"), "key": str(certs.dir / "b.key")},
    ]
    config = http_config(["127.0.0.1:1"])
    config["listeners"][0]["tls"] = {"certificates": entries, "ciphers": "NOT-A-CIPHER"}
    with pytest.raises(ConfigError) as err:
        load_text(json.dumps(config), fmt="json")
    text = str(err.value)
    assert "listeners[0].tls.certificates[0]" in text and "cannot read the certificate" in text
    assert "listeners[0].tls.certificates[1]" in text and "does not belong to the certificate" in text
    assert "listeners[0].tls.certificates[2]" in text and "holds no PEM certificate" in text
    assert "listeners[0].tls.ciphers" in text
    assert "PRIVATE KEY" not in text


def test_tls_is_for_tcp_and_http_listeners_not_other_codecs(tmp_path, certs):
    from proxy.config.errors import ConfigError
    from proxy.config.loader import load_text

    config = {
        "listeners": [{"name": "t", "address": "127.0.0.1:0", "protocol": "tcp", "cluster": "c", "tls": {"certificates": [certs.entry("b")]}}],
        "clusters": [{"name": "c", "hosts": [{"address": "127.0.0.1:1"}]}],
    }
    assert load_text(json.dumps(config), fmt="json").listeners[0].tls is not None  # terminated, then relayed
    config["listeners"][0].update(protocol="tests.stream.rpc_codec:RpcServerCodec", route="r", cluster=None)
    config["routes"] = {"r": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "cluster": "c"}]}]}}
    with pytest.raises(ConfigError, match=r"listeners\[0\].tls: TLS termination is for tcp, http1, http2 and http listeners"):
        load_text(json.dumps(config), fmt="json")



async def test_websocket_over_tls_is_pumped_both_ways(tmp_path, nursery, certs):
    import ssl

    from trio_websocket import serve_websocket, wrap_client_stream

    from tests.integration.test_http_proxy import websocket_echo

    server = await nursery.start(serve_websocket, websocket_echo, "127.0.0.1", 0, None)
    config = http_config([f"127.0.0.1:{server.port}"])
    config["listeners"][0]["tls"] = {"certificates": [certs.entry("b")]}
    async with running_proxy(config, tmp_path) as proxy:
        context = ssl.create_default_context(cafile=certs.ca_path)
        tcp = await connect(proxy.address("http"))
        stream = trio.SSLStream(tcp, context, server_hostname="b.example.com")
        ws = await wrap_client_stream(nursery, stream, "b.example.com", "/ws")
        for i in range(200):
            await ws.send_message(f"message {i}" * (i % 7 + 1))
        for i in range(200):
            assert await ws.get_message() == f"message {i}" * (i % 7 + 1)
        big = "y" * 200_000  # many records each way
        await ws.send_message(big)
        assert await ws.get_message() == big
        await ws.aclose()


async def test_a_key_readable_by_other_users_gets_a_warning_at_start(tmp_path, upstream, certs):
    import os

    os.chmod(certs.dir / "b.key", 0o644)
    os.chmod(certs.dir / "a_rsa.key", 0o600)
    async with running_proxy(tls_config(upstream, certs, str(tmp_path / "admin.sock")), tmp_path) as proxy:
        line = await proxy.wait_log("tls.key_readable_by_others")
        assert str(certs.dir / "b.key") in line
        log = proxy.log()
        assert str(certs.dir / "a_rsa.key") not in log
        assert "PRIVATE KEY" not in log


async def _https_request(stream: trio.SSLStream, path: str) -> bytes:
    """One GET on a TLS stream; the response head and body (Content-Length framed)."""
    await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: b.example.com\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += await stream.receive_some(65536)
    return head + b"\r\n\r\n" + body


async def test_a_reload_drains_tls_connections_cleanly_and_the_next_worker_serves(tmp_path, upstream, certs):
    import ssl

    from tests.integration.test_upgrade import reload, stat

    config = tls_config(upstream, certs, str(tmp_path / "admin.sock"), protocol="http1")
    async with running_proxy(config, tmp_path) as proxy:
        context = ssl.create_default_context(cafile=certs.ca_path)
        idle = trio.SSLStream(await connect(proxy.address("http")), context, server_hostname="b.example.com")
        assert (await _https_request(idle, "/echo")).startswith(b"HTTP/1.1 200")
        await trio.sleep(0.6)  # idle past PARK_AFTER: a plaintext connection would park here
        assert (await _https_request(idle, "/echo")).startswith(b"HTTP/1.1 200")  # its TLS went on
        busy = trio.SSLStream(await connect(proxy.address("http")), context, server_hostname="b.example.com")
        await busy.send_all(b"GET /slow/3000 HTTP/1.1\r\nHost: b.example.com\r\n\r\n")
        await trio.sleep(0.2)
        outcome = await reload(proxy)
        assert outcome.get("result") == "ok", outcome
        with trio.fail_after(10):
            assert await idle.receive_some(65536) == b""  # closed with close_notify: a clean end
            answer = b""
            while True:  # the request in flight finishes in the old worker, then the connection ends
                chunk = await busy.receive_some(65536)
                if not chunk:
                    break
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200") and b"connection: close" in answer.lower(), answer[:300]
        fresh = await curl("--cacert", certs.ca_path, *https(proxy, "b.example.com"))
        assert fresh.returncode == 0, fresh.stderr
        assert await stat(proxy, "listener.http.downstream_cx_migrated_out") == 0
        assert outcome.get("forced", 0) == 0, outcome  # none had to be cut at the handover deadline


def test_a_config_without_tls_never_imports_pyopenssl(tmp_path):
    """pyOpenSSL and cryptography cost ~10 MB of RSS in the keeper and each worker: only a
    config with TLS loads them."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from proxy.config.loader import load\n"
        "from proxy.server import Worker\n"
        "load('config/proxy.yaml')\n"
        "print('OpenSSL' in sys.modules, 'cryptography' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[2])
    assert result.stdout.split() == ["False", "False"], result


async def test_groups_are_offered_as_configured(tmp_path, upstream, certs):
    admin = str(tmp_path / "admin.sock")
    async with running_proxy(tls_config(upstream, certs, admin, groups=["P-384", "X25519"]), tmp_path) as proxy:
        p384 = await s_client(proxy, "-servername", "b.example.com", "-groups", "P-384")
        assert "Peer Temp Key: ECDH, secp384r1" in p384 or "Server Temp Key: ECDH, secp384r1" in p384, p384
        refused = await s_client(proxy, "-servername", "b.example.com", "-groups", "P-256")
        assert "Protocol version" not in refused and "alert" in refused, refused


def test_groups_openssl_does_not_know_refuse_the_config(tmp_path, certs):
    from proxy.config.errors import ConfigError
    from proxy.config.loader import load_text

    config = http_config(["127.0.0.1:1"])
    config["listeners"][0]["tls"] = {"certificates": [certs.entry("b")], "groups": ["X25519", "not-a-group"]}
    with pytest.raises(ConfigError) as err:
        load_text(json.dumps(config), fmt="json")
    assert "listeners[0].tls.groups" in str(err.value) and "not-a-group" in str(err.value)


async def test_a_client_that_hangs_up_right_after_its_handshake_counts_as_a_handshake(tmp_path, upstream, certs):
    """`openssl s_time -new` closes once its handshake is done, before TLS 1.3's session tickets
    arrive: the tickets meet a reset, but the handshake was whole (not a connection error)."""
    admin = str(tmp_path / "admin.sock")
    async with running_proxy(tls_config(upstream, certs, admin), tmp_path) as proxy:
        host, port = proxy.address("http")
        result = await trio.run_process(
            ["openssl", "s_time", "-connect", f"{host}:{port}", "-new", "-tls1_3", "-time", "1"], capture_stdout=True, capture_stderr=True, check=False
        )
        marks = result.stdout.decode("latin-1").split("\n")
        done = sum(line.count("*") for line in marks if set(line) <= {"*", "r"})
        assert done > 20, result.stdout
        await trio.sleep(0.3)
        stats = await listener_stats(admin)
        assert stats["ssl_connection_error"] == 0, stats
        assert done <= stats["ssl_handshake"] <= done + 2, (done, stats)
