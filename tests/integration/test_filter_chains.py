"""Filter chains through a real `proxy run`: TLS passthrough routed by the ClientHello's SNI and
ALPN to TLS backends (the client sees the backend's own certificate: nothing terminated), TLS
terminated on a tcp listener, route tables by server name on one HTTP listener, and TLS and
plaintext on one port; with real peers (Python's ssl, openssl s_client, curl) and a hot
upgrade in the middle of a passthrough connection. Certificates from trustme."""

from __future__ import annotations

import functools
import json
import ssl
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from tests.integration.harness import admin_get, connect, echo_handler, read_all, running_proxy, start_server
from tests.integration.test_upgrade import RUNTIME, assert_ok, reload, stat

NAMES = {"a": ["a.example.com"], "b": ["*.b.example.com"], "c": ["c.example.com"], "h2": ["a.example.com"]}


class Pki:
    """A test CA and a certificate (files in `dir`, and the trustme objects) per backend."""

    def __init__(self, dir: Path) -> None:
        self.ca = trustme.CA()
        self.dir = dir
        self.ca_path = str(dir / "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_path)
        self.leaf: dict[str, trustme.LeafCert] = {}
        for name, names in NAMES.items():
            cert = self.leaf[name] = self.ca.issue_cert(*names)
            cert.private_key_pem.write_to_path(str(dir / f"{name}.key"))
            cert.cert_chain_pems[0].write_to_path(str(dir / f"{name}.pem"))

    def tls(self, name: str, **extra: Any) -> dict[str, Any]:
        return {"certificates": [{"cert": str(self.dir / f"{name}.pem"), "key": str(self.dir / f"{name}.key")}], **extra}

    def serial(self, name: str) -> int:
        from cryptography import x509

        return x509.load_pem_x509_certificate(self.leaf[name].cert_chain_pems[0].bytes()).serial_number


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    (tmp_path / "pki").mkdir()
    return Pki(tmp_path / "pki")


async def tls_backend(nursery: trio.Nursery, pki: Pki, name: str) -> str:
    """A TLS echo server (Python's ssl, OpenSSL underneath) with certificate `name`; it
    answers the ALPN it agreed on first, as `alpn=PROTO\\n`, then echoes."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pki.leaf[name].configure_cert(ctx)
    ctx.set_alpn_protocols(["h2", "http/1.1"])

    async def serve(stream: trio.SSLStream) -> None:
        try:
            await stream.do_handshake()
            await stream.send_all(f"alpn={stream.selected_alpn_protocol()}\n".encode())
            async for data in stream:
                await stream.send_all(data)
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    listeners = await nursery.start(functools.partial(trio.serve_ssl_over_tcp, serve, 0, ctx, host="127.0.0.1"))
    return f"127.0.0.1:{listeners[0].transport_listener.socket.getsockname()[1]}"


async def tls_client(
    address: Any, name: str | None, pki: Pki, alpn: list[str] | None = None, check_name: bool = True
) -> tuple[trio.SSLStream, str]:
    """A verified TLS connection (the certificate must be valid for `name`, with `check_name`)
    and its first line."""
    ctx = ssl.create_default_context(cafile=pki.ca_path)
    if name is None or not check_name:
        ctx.check_hostname = False
    if alpn:
        ctx.set_alpn_protocols(alpn)
    stream = trio.SSLStream(await connect(address), ctx, server_hostname=name)
    with trio.fail_after(5):
        await stream.do_handshake()
        line = b""
        while not line.endswith(b"\n"):
            line += await stream.receive_some(1)
    return stream, line.decode().strip()


def served_serial(stream: trio.SSLStream) -> int:
    from cryptography import x509

    return x509.load_der_x509_certificate(stream.getpeercert(binary_form=True)).serial_number


async def echo(stream: trio.abc.Stream, message: bytes) -> None:
    await stream.send_all(message)
    got = b""
    with trio.fail_after(5):
        while len(got) < len(message):
            got += await stream.receive_some(65536)
    assert got == message


def passthrough_config(tmp_path: Path, backends: dict[str, str], **listener: Any) -> dict[str, Any]:
    return {
        "logging": {"level": "info"},
        "admin": {"socket": str(tmp_path / "admin.sock")},
        "runtime": dict(RUNTIME),
        "listeners": [
            {
                "name": "edge",
                "address": "127.0.0.1:0",
                "protocol": "tcp",
                "filter_chains": [
                    {"name": "a", "match": {"server_names": ["a.example.com"]}, "cluster": "a"},
                    {"name": "b", "match": {"server_names": ["*.b.example.com"]}, "cluster": "b"},
                ],
                **listener,
            }
        ],
        "clusters": [{"name": name, "connect_timeout": "1s", "hosts": [{"address": address}]} for name, address in backends.items()],
    }


async def listener_stats(tmp_path: Path, listener: str = "edge") -> dict[str, int]:
    prefix = f"listener.{listener}."
    raw = json.loads(await admin_get(str(tmp_path / "admin.sock"), "/stats"))
    return {k.removeprefix(prefix): v for k, v in raw.items() if k.startswith(prefix)}


# ---------------------------------------------------------------- 1. passthrough


async def test_passthrough_routes_by_sni_and_the_client_sees_the_backends_certificate(tmp_path, nursery, pki):
    from cryptography import x509

    backends = {name: await tls_backend(nursery, pki, name) for name in ("a", "b", "c")}
    config = passthrough_config(tmp_path, backends, cluster="c")  # c: the fallback
    async with running_proxy(config, tmp_path) as proxy:
        address = proxy.address("edge")
        for name, backend in (("a.example.com", "a"), ("x.b.example.com", "b"), ("y.x.b.example.com", "b")):
            # (a chain's wildcard covers any depth; a certificate's, one label)
            stream, _ = await tls_client(address, name, pki, check_name=name != "y.x.b.example.com")
            assert served_serial(stream) == pki.serial(backend), name  # the backend's own certificate
            await echo(stream, b"hello " * 1000)
            await echo(stream, b"x" * 300_000)  # many records, both ways
            await stream.aclose()
        # b.example.com itself is not under *.b.example.com; no SNI at all: both to the fallback
        for name in ("c.example.com", None):
            stream, _ = await tls_client(address, name, pki)
            assert served_serial(stream) == pki.serial("c")
            await echo(stream, b"to the fallback")
            await stream.aclose()
        # openssl s_client agrees: the certificate it is served is the backend's
        host, port = address
        result = await trio.run_process(
            ["openssl", "s_client", "-connect", f"{host}:{port}", "-servername", "z.b.example.com", "-CAfile", pki.ca_path],
            stdin=b"",
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        out = result.stdout.decode("latin-1")
        assert "Verify return code: 0 (ok)" in out, out
        pem = out[out.index("-----BEGIN CERTIFICATE-----") : out.index("-----END CERTIFICATE-----") + 25]
        assert x509.load_pem_x509_certificate(pem.encode()).serial_number == pki.serial("b")
        listed = json.loads(await admin_get(str(tmp_path / "admin.sock"), "/listeners"))
        assert listed[0]["filter_chains"] == ["a", "b"]
        stats = await listener_stats(tmp_path)
        assert stats["tls_inspector_tls_found"] == 6, stats
        assert stats["tls_inspector_sni_found"] == 5 and stats["tls_inspector_sni_not_found"] == 1, stats
        assert stats["no_filter_chain_match"] == 0 and stats["ssl_handshake"] == 0, stats  # nothing terminated
        assert "Traceback" not in proxy.log()


async def test_alpn_picks_the_chain_among_those_of_one_name(tmp_path, nursery, pki):
    backends = {"h2": await tls_backend(nursery, pki, "h2"), "a": await tls_backend(nursery, pki, "a")}
    config = passthrough_config(tmp_path, backends)
    config["listeners"][0]["filter_chains"] = [
        {"name": "h2", "match": {"server_names": ["a.example.com"], "alpn": ["h2"]}, "cluster": "h2"},
        {"name": "other", "match": {"server_names": ["a.example.com"]}, "cluster": "a"},
    ]
    async with running_proxy(config, tmp_path) as proxy:
        address = proxy.address("edge")
        stream, line = await tls_client(address, "a.example.com", pki, alpn=["http/1.1", "h2"])
        assert served_serial(stream) == pki.serial("h2") and line == "alpn=h2"
        await stream.aclose()
        stream, line = await tls_client(address, "a.example.com", pki, alpn=["http/1.1"])
        assert served_serial(stream) == pki.serial("a") and line == "alpn=http/1.1"
        await stream.aclose()
        stats = await listener_stats(tmp_path)
        assert stats["tls_inspector_alpn_found"] == 2 and stats["tls_inspector_alpn_not_found"] == 0, stats


async def test_no_match_plaintext_silence_and_garbage_are_closed_counted_and_spare_the_rest(tmp_path, nursery, pki):
    backends = {name: await tls_backend(nursery, pki, name) for name in ("a", "b")}
    config = passthrough_config(tmp_path, backends, inspect_timeout="500ms")  # no fallback cluster
    async with running_proxy(config, tmp_path) as proxy:
        address = proxy.address("edge")
        silent = await connect(address)
        unknown = ssl.create_default_context(cafile=pki.ca_path)
        with pytest.raises((trio.BrokenResourceError, ssl.SSLError)):
            stream = trio.SSLStream(await connect(address), unknown, server_hostname="nobody.example.org")
            with trio.fail_after(5):
                await stream.do_handshake()
        plain = await connect(address)  # a plaintext client on a passthrough-only port
        await plain.send_all(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
        assert await read_all(plain) == b""
        bad = await connect(address)
        await bad.send_all(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00")  # a handshake record, not a ClientHello
        assert await read_all(bad) == b""
        stream, _ = await tls_client(address, "a.example.com", pki)  # others are served all along
        await echo(stream, b"still here")
        with trio.fail_after(5):
            assert await read_all(silent) == b""  # inspect_timeout
        stats = await listener_stats(tmp_path)
        assert stats["no_filter_chain_match"] == 2, stats  # the unknown name and the plaintext client
        assert stats["tls_inspector_tls_not_found"] == 1 and stats["tls_inspector_client_hello_bad"] == 1, stats
        assert stats["downstream_pre_cx_timeout"] == 1, stats
        await stream.aclose()
        assert "Traceback" not in proxy.log()


async def test_a_passthrough_connection_survives_a_hot_upgrade_with_bytes_both_ways(tmp_path, nursery, pki):
    backends = {name: await tls_backend(nursery, pki, name) for name in ("a", "b")}
    async with running_proxy(passthrough_config(tmp_path, backends), tmp_path) as proxy:
        address = proxy.address("edge")
        streams = []
        for name, backend in (("a.example.com", "a"), ("q.b.example.com", "b")):
            stream, _ = await tls_client(address, name, pki)
            assert served_serial(stream) == pki.serial(backend)
            await echo(stream, b"before " * 5000)
            streams.append(stream)
        await trio.sleep(0.6)  # one of them idle long enough to be parked
        for _ in range(2):
            outcome = await reload(proxy)
            assert_ok(outcome)
            assert (outcome.get("migrated") or {}).get("tcp", 0) == 2, outcome
            for stream in streams:
                await echo(stream, b"after " * 5000)  # the same TLS session, end to end
            # adopted into each one's chain: its cluster (not the other's) holds it now
            assert await stat(proxy, "cluster.a.upstream_cx_active") == 1
            assert await stat(proxy, "cluster.b.upstream_cx_active") == 1
        assert await stat(proxy, "listener.edge.downstream_cx_migrated_in") >= 2
        for stream in streams:
            await stream.aclose()
        assert "adopt_failed" not in proxy.log()


# ---------------------------------------------------------------- 2. TLS terminated on tcp listeners


def terminating_config(tmp_path: Path, pki: Pki, upstream: str, **listener: Any) -> dict[str, Any]:
    return {
        "logging": {"level": "info"},
        "admin": {"socket": str(tmp_path / "admin.sock")},
        "runtime": {**RUNTIME, "drain_timeout": "2s"},
        "listeners": [{"name": "edge", "address": "127.0.0.1:0", "protocol": "tcp", "cluster": "plain", "tls": pki.tls("c"), **listener}],
        "clusters": [{"name": "plain", "connect_timeout": "1s", "hosts": [{"address": upstream}]}],
    }


async def plain_tls_client(address: Any, name: str, pki: Pki) -> trio.SSLStream:
    stream = trio.SSLStream(await connect(address), ssl.create_default_context(cafile=pki.ca_path), server_hostname=name)
    with trio.fail_after(5):
        await stream.do_handshake()
    return stream


async def test_a_tls_terminating_tcp_listener_relays_plaintext_to_its_upstream(tmp_path, nursery, pki):
    seen: list[bytes] = []

    async def recording_echo(stream: trio.SocketStream) -> None:
        async for data in stream:
            seen.append(data)
            await stream.send_all(data)
        await stream.send_eof()

    upstream = await start_server(nursery, recording_echo)
    async with running_proxy(terminating_config(tmp_path, pki, upstream), tmp_path) as proxy:
        address = proxy.address("edge")
        stream = await plain_tls_client(address, "c.example.com", pki)
        assert served_serial(stream) == pki.serial("c")  # the proxy's certificate: terminated here
        await echo(stream, b"hello over TLS")
        await echo(stream, bytes(range(256)) * 4000)  # ~1 MB: many records each way
        assert b"".join(seen).startswith(b"hello over TLS")  # the upstream got plaintext
        await stream.aclose()  # close_notify: the upstream sees the end and closes back
        with trio.fail_after(5):
            while (await listener_stats(tmp_path))["downstream_cx_active"]:
                await trio.sleep(0.05)
        stats = await listener_stats(tmp_path)
        assert stats["ssl_handshake"] == 1 and stats["downstream_cx_destroy"] == 1, stats
        assert stats["downstream_rx_bytes_total"] > 1_000_000, stats
        plain = await connect(address)  # plaintext at a TLS port: an alert, then the close
        await plain.send_all(b"GET / HTTP/1.1\r\n\r\n")
        assert not (await read_all(plain)).startswith(b"HTTP")
        assert (await listener_stats(tmp_path))["ssl_connection_error"] == 1
        assert "Traceback" not in proxy.log()


async def test_one_tcp_listener_passes_one_name_through_and_terminates_another(tmp_path, nursery, pki):
    backend = await tls_backend(nursery, pki, "a")
    upstream = await start_server(nursery, echo_handler)
    config = terminating_config(tmp_path, pki, upstream)
    listener = config["listeners"][0]
    del listener["tls"]
    listener["filter_chains"] = [
        {"name": "pass", "match": {"server_names": ["a.example.com"]}, "cluster": "tls-backend"},
        {"name": "end", "match": {"server_names": ["c.example.com"]}, "tls": pki.tls("c")},  # the listener's cluster
    ]
    config["clusters"].append({"name": "tls-backend", "hosts": [{"address": backend}]})
    async with running_proxy(config, tmp_path) as proxy:
        address = proxy.address("edge")
        passed, line = await tls_client(address, "a.example.com", pki)
        assert served_serial(passed) == pki.serial("a") and line == "alpn=None"
        ended = await plain_tls_client(address, "c.example.com", pki)
        assert served_serial(ended) == pki.serial("c")
        await echo(passed, b"through")
        await echo(ended, b"terminated")
        await passed.aclose()
        await ended.aclose()


async def test_terminated_tls_on_tcp_drains_in_a_hot_upgrade(tmp_path, nursery, pki):
    upstream = await start_server(nursery, echo_handler)
    async with running_proxy(terminating_config(tmp_path, pki, upstream), tmp_path) as proxy:
        address = proxy.address("edge")
        stream = await plain_tls_client(address, "c.example.com", pki)
        await echo(stream, b"before")
        outcome: dict[str, Any] = {}

        async def reload_now() -> None:
            outcome.update(await reload(proxy))

        async with trio.open_nursery() as n:
            n.start_soon(reload_now)
            await trio.sleep(1)  # the old generation drains: this connection still works there
            await echo(stream, b"during the drain")
            fresh = await plain_tls_client(address, "c.example.com", pki)  # the new one serves new ones
            await echo(fresh, b"new generation")
        assert_ok(outcome)
        assert (outcome.get("migrated") or {}).get("tcp", 0) == 0 and outcome.get("forced") == 1, outcome
        with trio.fail_after(5):  # cut at drain_timeout, as a TLS HTTP connection would be
            assert await read_all(stream) == b""
        await echo(fresh, b"still")
        await fresh.aclose()


# ---------------------------------------------------------------- 3. HTTP listeners; 4. TLS and plaintext on one port


def answer(body: str) -> dict[str, Any]:
    return {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": body}}]}]}


def http_chains_config(tmp_path: Path, chains: list[dict[str, Any]], protocol: str = "http", **listener: Any) -> dict[str, Any]:
    return {
        "logging": {"level": "info"},
        "admin": {"socket": str(tmp_path / "admin.sock")},
        "runtime": dict(RUNTIME),
        "listeners": [{"name": "edge", "address": "127.0.0.1:0", "protocol": protocol, "filter_chains": chains, **listener}],
        "routes": {"table_a": answer("table a\n"), "table_c": answer("table c\n"), "plain": answer("plain\n")},
    }


def at(proxy: Any, scheme: str, name: str, path: str = "/") -> list[str]:
    host, port = proxy.address("edge")
    return ["--resolve", f"{name}:{port}:{host}", f"{scheme}://{name}:{port}{path}"]


async def test_two_server_names_two_route_tables_and_two_certificates_on_one_http_listener(tmp_path, pki):
    from tests.integration.test_http_proxy import curl

    chains = [
        {"name": "a", "match": {"server_names": ["a.example.com"]}, "route": "table_a", "tls": pki.tls("a")},
        {"name": "c", "match": {"server_names": ["c.example.com"]}, "route": "table_c", "tls": pki.tls("c", min_version="1.3")},
    ]
    log = tmp_path / "access.log"
    config = http_chains_config(tmp_path, chains)
    config["listeners"][0]["access_log"] = [{"path": str(log), "format": "%filter_chain_name% %requested_server_name%"}]
    async with running_proxy(config, tmp_path) as proxy:
        for name, body in (("a.example.com", b"table a\n"), ("c.example.com", b"table c\n")):
            for version in ("--http2", "--http1.1"):  # curl checks the certificate is for `name`
                got = await curl(version, "--cacert", pki.ca_path, "-w", "%{http_version}", *at(proxy, "https", name))
                assert got.returncode == 0, got.stderr
                assert got.stdout == body + (b"2" if version == "--http2" else b"1.1"), got.stdout
        old = await curl("--tlsv1.2", "--tls-max", "1.2", "--cacert", pki.ca_path, *at(proxy, "https", "c.example.com"))
        assert old.returncode != 0  # chain c's own settings: TLS 1.3 only
        older = await curl("--tlsv1.2", "--tls-max", "1.2", "--cacert", pki.ca_path, *at(proxy, "https", "a.example.com"))
        assert older.returncode == 0 and older.stdout == b"table a\n"
        unknown = await curl("-k", *at(proxy, "https", "nobody.example.org"))  # no chain, no listener route
        assert unknown.returncode != 0
        stats = await listener_stats(tmp_path)
        assert stats["ssl_handshake"] == 5 and stats["no_filter_chain_match"] == 1, stats
        assert stats["downstream_rq_2xx"] == 5, stats
        with trio.fail_after(5):
            while log.read_text().count("\n") < 5:
                await trio.sleep(0.02)
        assert sorted(log.read_text().splitlines()) == ["a a.example.com"] * 3 + ["c c.example.com"] * 2


@pytest.mark.parametrize("tls_on", ["chain", "listener"])
async def test_curl_http_and_https_on_one_port(tmp_path, pki, tls_on):
    from tests.integration.test_http_proxy import curl

    chains = [
        {"name": "plain", "match": {"transport": "plaintext"}, "route": "plain"},  # (never the listener's tls)
        {"name": "tls", "match": {"transport": "tls"}, "route": "table_a"},
    ]
    listener: dict[str, Any] = {}
    if tls_on == "chain":
        chains[1]["tls"] = pki.tls("a")
    else:
        listener["tls"] = pki.tls("a")
    async with running_proxy(http_chains_config(tmp_path, chains, **listener), tmp_path) as proxy:
        cases = [
            ("http", [], b"plain\n1.1"),
            ("http", ["--http2-prior-knowledge"], b"plain\n2"),  # h2c: the preface after the inspector's bytes
            ("https", ["--http2"], b"table a\n2"),
            ("https", ["--http1.1"], b"table a\n1.1"),
        ]
        for scheme, extra, expected in cases:
            got = await curl(*extra, "--cacert", pki.ca_path, "-w", "%{http_version}", *at(proxy, scheme, "a.example.com"))
            assert got.returncode == 0, got.stderr
            assert got.stdout == expected, (scheme, extra, got.stdout)
        stats = await listener_stats(tmp_path)
        assert stats["tls_inspector_tls_found"] == 2 and stats["tls_inspector_tls_not_found"] == 2, stats


async def test_a_plaintext_http_connection_of_a_chain_moves_in_a_hot_upgrade(tmp_path, pki):
    from tests.integration.test_upgrade import read_response

    chains = [
        {"name": "plain", "match": {"transport": "plaintext"}, "route": "plain"},
        {"name": "tls", "match": {"transport": "tls"}, "route": "table_a", "tls": pki.tls("a")},
    ]
    async with running_proxy(http_chains_config(tmp_path, chains, protocol="http1"), tmp_path) as proxy:
        stream = await connect(proxy.address("edge"))
        buffer = bytearray()
        for round in range(3):
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
            status, body = await read_response(stream, buffer)
            assert (status, body) == (200, b"plain\n"), round
            if round < 2:
                outcome = await reload(proxy)
                assert_ok(outcome)
                assert (outcome.get("migrated") or {}).get("http1", 0) == 1, outcome
        await stream.aclose()


async def test_an_h2c_connection_of_a_chain_moves_in_a_hot_upgrade_with_its_codec(tmp_path, pki):
    from tests.integration.test_http2_upgrade import H2Client

    chains = [
        {"name": "plain", "match": {"transport": "plaintext"}, "route": "plain"},
        {"name": "tls", "match": {"transport": "tls"}, "route": "table_a", "tls": pki.tls("a")},
    ]
    async with running_proxy(http_chains_config(tmp_path, chains, protocol="http"), tmp_path) as proxy:
        client = await H2Client.open(proxy.address("edge"))
        for round in range(3):
            status, _, body = await client.get("/", [(b"x-indexed", b"the same value each time")])
            assert (status, body) == (200, b"plain\n"), round
            if round < 2:
                outcome = await reload(proxy)
                assert_ok(outcome)
                assert (outcome.get("migrated") or {}).get("http2", 0) == 1, outcome
        assert client.goaways == 0
        await client.stream.aclose()


async def test_a_reload_that_removes_a_chain_leaves_its_connections_to_finish_in_the_old_generation(tmp_path, nursery, pki):
    import yaml

    backends = {name: await tls_backend(nursery, pki, name) for name in ("a", "b")}
    config = passthrough_config(tmp_path, backends)
    config["runtime"]["drain_timeout"] = "3s"
    async with running_proxy(config, tmp_path) as proxy:
        address = proxy.address("edge")
        kept, _ = await tls_client(address, "a.example.com", pki)
        dropped, _ = await tls_client(address, "x.b.example.com", pki)
        config["listeners"][0]["filter_chains"].pop()  # chain b is gone
        proxy.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        outcome: dict[str, Any] = {}

        async def reload_now() -> None:
            outcome.update(await reload(proxy))

        async with trio.open_nursery() as n:
            n.start_soon(reload_now)
            await trio.sleep(1)
            await echo(dropped, b"still served by the old generation")  # refused, so it stays there
            await echo(kept, b"moved")
        assert_ok(outcome)
        assert (outcome.get("migrated") or {}).get("tcp", 0) == 1 and outcome.get("forced") == 1, outcome
        await echo(kept, b"in the new generation")
        with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
            await read_all(dropped)  # cut at the old generation's drain_timeout (no close_notify: not ours to send)
        with pytest.raises((trio.BrokenResourceError, ssl.SSLError)):  # no chain for it now
            await tls_client(address, "x.b.example.com", pki)
        await kept.aclose()


@pytest.mark.parametrize("where", ["chain", "listener"])
async def test_certificates_on_demand_on_a_tcp_listener_and_a_chain(tmp_path, nursery, pki, where):
    """The chain's inspection already read the ClientHello: the certificate is minted from it,
    not from a second read (which would wait for bytes the client never sends)."""
    upstream = await start_server(nursery, echo_handler)
    issuer_key = tmp_path / "issuer.key"
    pki.ca.private_key_pem.write_to_path(str(issuer_key))
    tls = {"on_demand": {"issuer": {"cert": pki.ca_path, "key": str(issuer_key)}, "server_names": ["*.apps.example.com"]}, "handshake_timeout": "2s"}
    config = terminating_config(tmp_path, pki, upstream)
    listener = config["listeners"][0]
    if where == "chain":
        del listener["tls"]
        listener["filter_chains"] = [{"match": {"server_names": ["*.apps.example.com"]}, "tls": tls}]
    else:
        listener["tls"] = tls
    async with running_proxy(config, tmp_path) as proxy:
        with trio.fail_after(5):
            stream = await plain_tls_client(proxy.address("edge"), "x.apps.example.com", pki)  # verified: minted for the name
        await echo(stream, b"minted")
        await stream.aclose()
        stats = await listener_stats(tmp_path)
        assert stats["ssl_dynamic_minted"] == 1 and stats["ssl_handshake"] == 1, stats


async def test_listeners_that_need_no_inspection_read_nothing_first(tmp_path, nursery, pki):
    """A server-speaks-first upstream (a banner before any client byte): through a listener
    without filter chains, or whose one chain matches everything, the banner comes at once;
    nothing waits for the client's first bytes."""

    async def banner(stream: trio.SocketStream) -> None:
        await stream.send_all(b"220 ready\r\n")
        async for data in stream:
            await stream.send_all(data)

    upstream = await start_server(nursery, banner)
    config = passthrough_config(tmp_path, {"smtp": upstream}, cluster="smtp", inspect_timeout="30s")
    config["listeners"][0]["filter_chains"] = []
    config["listeners"].append({"name": "chained", "address": "127.0.0.1:0", "protocol": "tcp", "filter_chains": [{"cluster": "smtp"}]})
    async with running_proxy(config, tmp_path) as proxy:
        for name in ("edge", "chained"):
            stream = await connect(proxy.address(name))
            with trio.fail_after(2):
                assert await stream.receive_some(100) == b"220 ready\r\n", name
            await echo(stream, b"EHLO x\r\n")
            await stream.aclose()
        assert (await listener_stats(tmp_path, "chained"))["tls_inspector_tls_not_found"] == 0


async def test_the_chains_deadlines_are_watched(tmp_path, pki):
    """One watchdog task looks after every chain's connections: a request head that stalls on a
    plaintext chain gets its 408, an idle TLS one is closed at the idle timeout."""
    chains = [
        {"name": "plain", "match": {"transport": "plaintext"}, "route": "plain"},
        {"name": "tls", "match": {"transport": "tls"}, "route": "table_a", "tls": pki.tls("a")},
    ]
    http = {"request_header_timeout": "300ms", "idle_timeout": "500ms"}
    async with running_proxy(http_chains_config(tmp_path, chains, protocol="http1", http=http), tmp_path) as proxy:
        stalled = await connect(proxy.address("edge"))
        await stalled.send_all(b"GET / HTTP/1.1\r\nHost: a")
        with trio.fail_after(3):
            assert (await read_all(stalled)).startswith(b"HTTP/1.1 408")  # (the head began in the inspected bytes)
        idle = await plain_tls_client(proxy.address("edge"), "a.example.com", pki)
        await idle.send_all(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
        with trio.fail_after(3):
            answer = b""
            while True:
                chunk = await idle.receive_some(65536)
                if not chunk:
                    break
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"table a\n")  # then closed, idle


async def test_mutual_tls_on_a_tcp_listener(tmp_path, nursery, pki):
    """The tcp listener's TLS is the HTTP listeners' (network/tls_accept.py): a client without
    a certificate is refused with an alert and counted, one with a certificate is relayed."""
    upstream = await start_server(nursery, echo_handler)
    config = terminating_config(tmp_path, pki, upstream)
    config["listeners"][0]["tls"].update(client_certificate="require", client_ca=pki.ca_path)
    async with running_proxy(config, tmp_path) as proxy:
        address = proxy.address("edge")
        ctx = ssl.create_default_context(cafile=pki.ca_path)
        pki.ca.issue_cert("client.example.com").configure_cert(ctx)
        stream = trio.SSLStream(await connect(address), ctx, server_hostname="c.example.com")
        await echo(stream, b"with a certificate")
        await stream.aclose()
        bare = trio.SSLStream(await connect(address), ssl.create_default_context(cafile=pki.ca_path), server_hostname="c.example.com")
        with pytest.raises(trio.BrokenResourceError) as refused:
            with trio.fail_after(5):
                await bare.do_handshake()
                await bare.send_all(b"x")
                await bare.receive_some(10)
        assert "CERTIFICATE_REQUIRED" in repr(refused.value.__cause__).upper(), refused.value.__cause__
        stats = await listener_stats(tmp_path)
        assert stats["ssl_fail_verify_no_cert"] == 1 and stats["ssl_handshake"] == 1, stats
