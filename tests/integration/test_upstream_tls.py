"""TLS to upstream clusters (clusters[].tls) through a real `proxy run`, with real TLS servers:
a Python HTTPS server (the stdlib's ssl, which reports SNI, ALPN, the client certificate and
whether the session was resumed), nghttpd (HTTP/2 over TLS, ALPN h2) and `openssl s_server`
(a TCP listener originating TLS). Clients are curl and h2load. Certificates from trustme."""

from __future__ import annotations

import datetime
import http.server
import json
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from tests.integration.harness import admin_get, running_proxy, tcp_config
from tests.integration.http_upstream import http_config
from tests.integration.test_http_proxy import curl, url

NAME = "up.example.test"


class Certs:
    def __init__(self, dir: Path) -> None:
        self.dir = dir
        self.ca = trustme.CA()
        self.ca_path = self._write("ca.pem", self.ca.cert_pem.bytes())
        self.other_ca = trustme.CA()  # a CA the proxy does not trust
        now = datetime.datetime.now(datetime.timezone.utc)
        self.good = self._issue("good", self.ca, NAME, "127.0.0.1")
        self.wrong_name = self._issue("wrong", self.ca, "other.example.test")
        self.expired = self._issue("expired", self.ca, NAME, not_before=now - datetime.timedelta(days=30), not_after=now - datetime.timedelta(days=1))
        self.untrusted = self._issue("untrusted", self.other_ca, NAME)
        self.client = self._issue("client", self.ca, "proxy-client.example.test")

    def _write(self, name: str, data: bytes) -> str:
        path = self.dir / name
        path.write_bytes(data)
        return str(path)

    def _issue(self, name: str, ca: trustme.CA, *names: str, **kw: Any) -> tuple[str, str]:
        cert = ca.issue_cert(*names, **kw)
        return self._write(f"{name}.pem", b"".join(p.bytes() for p in cert.cert_chain_pems)), self._write(f"{name}.key", cert.private_key_pem.bytes())


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    (tmp_path / "certs").mkdir()
    return Certs(tmp_path / "certs")


class TlsHttpServer:
    """HTTPS/1.1 in a thread (stdlib ssl): every answer says what this connection's TLS was:
    SNI, ALPN, resumed or not, the client certificate's names."""

    def __init__(self, cert: tuple[str, str], ca: str | None = None, require_client_cert: bool = False) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*cert)
        ctx.set_alpn_protocols(["http/1.1"])
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(ca)
        self.sni: list[str | None] = []
        self.handshakes = 0
        ctx.sni_callback = lambda sock, name, _ctx: self.sni.append(name)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                conn = self.connection
                if self.path == "/upgrade":  # 101, then every byte back upper-cased, over TLS
                    self.send_response(101)
                    self.send_header("connection", "upgrade")
                    self.send_header("upgrade", "websocket")
                    self.end_headers()
                    self.wfile.flush()
                    while data := conn.recv(4096):
                        conn.sendall(data.upper())
                    self.close_connection = True
                    return
                peer = conn.getpeercert() or {}
                body = json.dumps(
                    {
                        "path": self.path,
                        "reused": conn.session_reused,
                        "alpn": conn.selected_alpn_protocol(),
                        "version": conn.version(),
                        "client_names": [v for k, v in peer.get("subjectAltName", ())],
                        "conn": id(conn),
                    }
                ).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self) -> Any:
                sock, addr = self.socket.accept()
                tls = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                return tls, addr

            def finish_request(self, request: Any, client_address: Any) -> None:
                try:
                    request.do_handshake()  # (here, in the connection's thread)
                except (ssl.SSLError, OSError):
                    return
                server.handshakes += 1
                super().finish_request(request, client_address)

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers():
    started: list[TlsHttpServer] = []

    def start(*args: Any, **kw: Any) -> TlsHttpServer:
        server = TlsHttpServer(*args, **kw)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def tls_cluster_config(address: str, admin: str, **tls: Any) -> dict[str, Any]:
    config = http_config([address], cluster={"tls": tls})
    config["admin"] = {"socket": admin}
    return config


async def cluster_stats(admin: str) -> dict[str, int]:
    prefix = "cluster.up."
    return {k.removeprefix(prefix): v for k, v in json.loads(await admin_get(admin, "/stats")).items() if k.startswith(prefix)}


async def get_json(proxy: Any, path: str = "/") -> dict[str, Any]:
    got = await curl(url(proxy, path))
    assert got.returncode == 0, got.stderr
    return json.loads(got.stdout)


async def test_http1_over_tls_verifies_the_name_and_reuses_the_session(tmp_path, certs, servers):
    server = servers(certs.good)
    admin = str(tmp_path / "admin.sock")
    config = tls_cluster_config(server.address, admin, ca=certs.ca_path, server_name=NAME, max_version="1.2")
    config["clusters"][0]["max_requests_per_connection"] = 1  # a new connection (and handshake) per request
    async with running_proxy(config, tmp_path) as proxy:
        first = await get_json(proxy, "/one")
        assert first["path"] == "/one" and first["alpn"] == "http/1.1" and first["version"] == "TLSv1.2"
        assert first["reused"] is False
        second = await get_json(proxy, "/two")
        assert second["reused"] is True  # the proxy offered the host's last session
        stats = await cluster_stats(admin)
        assert stats["ssl_handshake"] == 2 and stats["ssl_session_reused"] == 1, stats
        assert stats["ssl_connection_error"] == 0
    assert server.sni == [NAME, NAME]


async def test_tls13_session_reuse_and_pooled_connections(tmp_path, certs, servers):
    """TLS 1.3 tickets come after the handshake: the session offered is the one the last
    connection holds by then. Keep-alive connections are pooled as in plaintext."""
    server = servers(certs.good)
    admin = str(tmp_path / "admin.sock")
    config = tls_cluster_config(server.address, admin, ca=certs.ca_path, server_name=NAME)
    async with running_proxy(config, tmp_path) as proxy:
        a = await get_json(proxy)
        b = await get_json(proxy)
        assert a["version"] == "TLSv1.3" and a["conn"] == b["conn"]  # one pooled connection
        await trio.sleep(1.2)  # idle long enough to be checked before reuse (pool.PEEK_AFTER_IDLE)
        assert (await get_json(proxy))["conn"] == a["conn"]
        assert server.handshakes == 1
    config["clusters"][0]["max_requests_per_connection"] = 1
    async with running_proxy(config, tmp_path) as proxy:
        results = [await get_json(proxy) for _ in range(3)]
        assert [r["reused"] for r in results] == [False, True, True]
        stats = await cluster_stats(admin)
        assert stats["ssl_session_reused"] == 2, stats


async def test_an_upgrade_tunnel_to_a_tls_upstream_is_copied_not_spliced(tmp_path, certs, servers):
    server = servers(certs.good)
    admin = str(tmp_path / "admin.sock")
    async with running_proxy(tls_cluster_config(server.address, admin, ca=certs.ca_path, server_name=NAME), tmp_path) as proxy:
        stream = await trio.open_tcp_stream(*proxy.address("http"))
        await stream.send_all(
            b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        got = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in got:
                got += await stream.receive_some(1000)
            assert got.startswith(b"HTTP/1.1 101"), got
            for word in (b"ping", b"pong" * 5000):
                await stream.send_all(word)
                echoed = b""
                while len(echoed) < len(word):
                    echoed += await stream.receive_some(65536)
                assert echoed == word.upper()
        await stream.aclose()


async def test_session_reuse_can_be_turned_off(tmp_path, certs, servers):
    server = servers(certs.good)
    admin = str(tmp_path / "admin.sock")
    config = tls_cluster_config(server.address, admin, ca=certs.ca_path, server_name=NAME, session_reuse=False)
    config["clusters"][0]["max_requests_per_connection"] = 1
    async with running_proxy(config, tmp_path) as proxy:
        assert [(await get_json(proxy))["reused"] for _ in range(2)] == [False, False]


async def test_ip_host_is_verified_against_the_certificate_ip(tmp_path, certs, servers):
    good = servers(certs.good)  # names 127.0.0.1 as an IP address
    wrong = servers(certs.wrong_name)
    admin = str(tmp_path / "admin.sock")
    async with running_proxy(tls_cluster_config(good.address, admin, ca=certs.ca_path), tmp_path) as proxy:
        assert (await get_json(proxy))["path"] == "/"
    assert good.sni == [None]  # no SNI for an IP address
    async with running_proxy(tls_cluster_config(wrong.address, admin, ca=certs.ca_path), tmp_path) as proxy:
        got = await curl("-i", url(proxy))
        assert got.stdout.startswith(b"HTTP/1.1 502"), got.stdout
        assert (await cluster_stats(admin))["ssl_fail_verify_san"] == 1


async def test_dns_host_name_is_the_default_server_name(tmp_path, certs, servers):
    server = servers(certs.good)
    admin = str(tmp_path / "admin.sock")
    port = server.address.rpartition(":")[2]
    # localhost resolves to 127.0.0.1 here; the certificate is not for it, so set nothing but the
    # CA and see the name checked and refused, with the host's own name as SNI
    async with running_proxy(tls_cluster_config(f"localhost:{port}", admin, ca=certs.ca_path), tmp_path) as proxy:
        got = await curl("-i", url(proxy))
        assert got.stdout.startswith(b"HTTP/1.1 502") and b"hostname mismatch" in got.stdout, got.stdout
    assert server.sni == ["localhost"]


@pytest.mark.parametrize(
    "which, counter, reason",
    [
        ("expired", "ssl_fail_verify_error", "certificate has expired"),
        ("untrusted", "ssl_fail_verify_error", "unable to get local issuer certificate"),
        ("wrong_name", "ssl_fail_verify_san", "hostname mismatch"),
    ],
)
async def test_a_certificate_that_does_not_verify_is_a_connect_failure(tmp_path, certs, servers, which, counter, reason):
    server = servers(getattr(certs, which))
    admin = str(tmp_path / "admin.sock")
    log = tmp_path / "access.log"
    config = tls_cluster_config(server.address, admin, ca=certs.ca_path, server_name=NAME)
    config["listeners"][0]["access_log"] = [{"path": str(log), "format": "%response_code% %response_flags% [%upstream_transport_failure_reason%]"}]
    async with running_proxy(config, tmp_path) as proxy:
        got = await curl("-i", url(proxy))
        assert got.stdout.startswith(b"HTTP/1.1 502"), got.stdout  # as a refused connect: 502 UF
        assert reason.encode() in got.stdout
        stats = await cluster_stats(admin)
        assert stats[counter] == 1 and stats["ssl_connection_error"] == 1 and stats["ssl_handshake"] == 0, stats
        assert stats["upstream_cx_connect_fail"] == 1 and stats["upstream_cx_active"] == 0
        with trio.fail_after(5):
            while not log.exists() or not log.read_text():
                await trio.sleep(0.02)
        line = log.read_text().strip()
        assert line.startswith("502 UF [TLS: certificate verify failed: ") and reason in line, line
        assert "upstream.connect_failed" in proxy.log() and reason in proxy.log()
    assert server.handshakes == 0


async def test_verify_false_accepts_any_certificate_and_warns(tmp_path, certs, servers):
    server = servers(certs.untrusted)
    admin = str(tmp_path / "admin.sock")
    async with running_proxy(tls_cluster_config(server.address, admin, verify=False), tmp_path) as proxy:
        assert (await get_json(proxy))["path"] == "/"
        assert "cluster.tls_verify_off cluster=up" in proxy.log()


async def test_retry_on_connect_failure_covers_a_failed_handshake(tmp_path, certs, servers):
    bad = servers(certs.expired)
    good = servers(certs.good)
    admin = str(tmp_path / "admin.sock")
    config = tls_cluster_config(bad.address, admin, ca=certs.ca_path, server_name=NAME)
    config["clusters"][0]["hosts"].append({"address": good.address})
    config["routes"]["main"]["virtual_hosts"][0]["routes"][0]["retry"] = {"on": ["connect-failure"], "attempts": 2}
    async with running_proxy(config, tmp_path) as proxy:
        for _ in range(4):  # round robin: every other request meets the bad host first
            assert (await get_json(proxy))["path"] == "/"
        stats = await cluster_stats(admin)
        assert stats["ssl_fail_verify_error"] >= 2 and stats["upstream_rq_retry"] == stats["ssl_fail_verify_error"], stats


async def test_client_certificate_to_an_upstream_that_requires_one(tmp_path, certs, servers):
    server = servers(certs.good, ca=certs.ca_path, require_client_cert=True)
    admin = str(tmp_path / "admin.sock")
    cert, key = certs.client
    async with running_proxy(tls_cluster_config(server.address, admin, ca=certs.ca_path, server_name=NAME, cert=cert, key=key), tmp_path) as proxy:
        assert (await get_json(proxy))["client_names"] == ["proxy-client.example.test"]
    # Without one: TLS 1.2 fails the handshake; TLS 1.3 finishes it on the client's side before
    # the server checks, whose alert then comes instead of the response (502 either way).
    for version, failed in (("1.2", 1), ("1.3", 0)):
        config = tls_cluster_config(server.address, admin, ca=certs.ca_path, server_name=NAME, max_version=version)
        async with running_proxy(config, tmp_path) as proxy:
            got = await curl("-i", url(proxy))
            assert got.stdout.startswith(b"HTTP/1.1 502"), got.stdout
            assert (await cluster_stats(admin))["ssl_connection_error"] == failed


async def _nghttpd(nursery: trio.Nursery, certs: Certs, tmp_path: Path) -> tuple[str, Any]:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root = tmp_path / "www"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello over h2\n")
    cert, key = certs.good
    proc = await nursery.start(
        lambda task_status: trio.run_process(["nghttpd", "--address=127.0.0.1", "-d", str(root), str(port), key, cert], task_status=task_status, check=False)
    )
    with trio.fail_after(5):
        while True:
            try:
                s = socket.create_connection(("127.0.0.1", port))
                s.close()
                break
            except OSError:
                await trio.sleep(0.05)
    return f"127.0.0.1:{port}", proc


async def test_http2_over_tls_with_alpn_h2(tmp_path, certs, nursery):
    address, nghttpd = await _nghttpd(nursery, certs, tmp_path)
    admin = str(tmp_path / "admin.sock")
    config = tls_cluster_config(address, admin, ca=certs.ca_path, server_name=NAME)
    config["clusters"][0]["protocol"] = "http2"
    try:
        async with running_proxy(config, tmp_path) as proxy:
            got = await curl(url(proxy, "/hello.txt"))
            assert got.returncode == 0 and got.stdout == b"hello over h2\n", got
            host, port = proxy.address("http")
            result = await trio.run_process(
                ["h2load", "--h1", "-n", "400", "-c", "4", f"http://{host}:{port}/hello.txt"], capture_stdout=True, check=False
            )
            assert b"400 succeeded" in result.stdout and b"400 2xx" in result.stdout, result.stdout
            stats = await cluster_stats(admin)
            assert stats["ssl_handshake"] >= 1 and stats["ssl_connection_error"] == 0, stats
            assert stats["upstream_cx_total"] == stats["ssl_handshake"]  # streams share connections
    finally:
        nghttpd.terminate()


async def test_downstream_protocol_offers_what_the_client_spoke(tmp_path, certs, nursery):
    """`protocol: downstream`: an HTTP/2 client's request goes to the HTTP/2 pool (ALPN h2,
    which nghttpd takes); an HTTP/1.1 client's to the HTTP/1.1 pool, whose requests nghttpd,
    h2 only, cannot answer."""
    address, nghttpd = await _nghttpd(nursery, certs, tmp_path)
    admin = str(tmp_path / "admin.sock")
    config = tls_cluster_config(address, admin, ca=certs.ca_path, server_name=NAME)
    config["clusters"][0]["protocol"] = "downstream"
    config["listeners"][0]["protocol"] = "http"  # HTTP/1.1 or h2c by the preface
    try:
        async with running_proxy(config, tmp_path) as proxy:
            h2 = await curl("--http2-prior-knowledge", url(proxy, "/hello.txt"))
            assert h2.returncode == 0 and h2.stdout == b"hello over h2\n", h2
            h1 = await curl("-i", url(proxy, "/hello.txt"))
            assert h1.stdout.startswith(b"HTTP/1.1 502"), h1.stdout
            stats = await cluster_stats(admin)
            assert stats["ssl_handshake"] == 2 and stats["upstream_cx_total"] == 2, stats  # one per pool
    finally:
        nghttpd.terminate()


async def test_auto_protocol_uses_what_each_host_picks_by_alpn(tmp_path, certs, servers, nursery):
    """`protocol: auto`: the first connection to a host offers h2 and http/1.1; nghttpd picks
    h2 (requests multiplexed on it), the stdlib server http/1.1 (pooled keep-alive)."""
    h1 = servers(certs.good)
    h2_address, nghttpd = await _nghttpd(nursery, certs, tmp_path)
    admin = str(tmp_path / "admin.sock")
    config = tls_cluster_config(h1.address, admin, ca=certs.ca_path, server_name=NAME)
    config["clusters"][0]["protocol"] = "auto"
    config["clusters"].append({"name": "h2", "protocol": "auto", "hosts": [{"address": h2_address}], "tls": {"ca": certs.ca_path, "server_name": NAME}})
    config["routes"]["main"]["virtual_hosts"][0]["routes"].insert(0, {"match": {"prefix": "/hello.txt"}, "cluster": "h2"})
    try:
        async with running_proxy(config, tmp_path) as proxy:
            first, second = await get_json(proxy), await get_json(proxy)
            assert first["alpn"] == "http/1.1" and first["conn"] == second["conn"]  # learned, then pooled
            host, port = proxy.address("http")
            result = await trio.run_process(
                ["h2load", "--h1", "-n", "200", "-c", "4", f"http://{host}:{port}/hello.txt"], capture_stdout=True, check=False
            )
            assert b"200 succeeded" in result.stdout and b"200 2xx" in result.stdout, result.stdout
            stats = json.loads(await admin_get(admin, "/stats"))
            assert stats["cluster.h2.http2_rx_goaway"] == 0 and stats["cluster.h2.upstream_rq_total"] == 200
            assert stats["cluster.h2.upstream_cx_total"] <= 4, stats["cluster.h2.upstream_cx_total"]  # streams share connections
    finally:
        nghttpd.terminate()


async def test_http2_cluster_refuses_a_server_that_picks_http1(tmp_path, certs, servers):
    server = servers(certs.good)  # ALPN: http/1.1 only; the proxy offers h2
    admin = str(tmp_path / "admin.sock")
    config = tls_cluster_config(server.address, admin, ca=certs.ca_path, server_name=NAME, alpn=["h2", "http/1.1"])
    config["clusters"][0]["protocol"] = "http2"
    async with running_proxy(config, tmp_path) as proxy:
        got = await curl("-i", url(proxy))
        assert got.stdout.startswith(b"HTTP/1.1 502") and b"ALPN" in got.stdout, got.stdout


async def _s_server(nursery: trio.Nursery, cert: tuple[str, str]) -> tuple[int, Any]:
    """`openssl s_server -rev`: each line it gets over TLS comes back reversed."""
    import socket
    import subprocess

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", cert[0], "-key", cert[1], "-rev", "-quiet"]
    proc = await nursery.start(
        lambda task_status: trio.run_process(command, stdin=subprocess.DEVNULL, capture_stdout=True, task_status=task_status, check=False)
    )
    with trio.fail_after(5):
        while True:
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                await trio.sleep(0.05)
    return port, proc


async def _line(stream: trio.SocketStream, line: bytes) -> bytes:
    await stream.send_all(line)
    got = b""
    with trio.fail_after(5):
        while b"\n" not in got:
            chunk = await stream.receive_some(1000)
            assert chunk, got
            got += chunk
    return got


async def test_tcp_listener_originates_tls_and_drains_it_in_a_reload(tmp_path, certs, nursery):
    """Plaintext from the client, TLS to the upstream. A reload does not move the connection
    (OpenSSL holds its state): it goes on in the old worker, new ones go to the new worker, and
    it is cut at the drain deadline."""
    from tests.integration.test_upgrade import reload, stat

    port, s_server = await _s_server(nursery, certs.good)
    admin = str(tmp_path / "admin.sock")
    config = tcp_config([f"127.0.0.1:{port}"], drain_timeout="3s")
    config["clusters"][0]["tls"] = {"ca": certs.ca_path, "server_name": NAME}
    config["admin"] = {"socket": admin}
    try:
        async with running_proxy(config, tmp_path) as proxy:
            stream = await trio.open_tcp_stream(*proxy.address("tcp"))
            assert await _line(stream, b"hello upstream\n") == b"maertspu olleh\n"  # -rev, over TLS
            await trio.sleep(0.6)  # idle past the relay's park delay: a TLS relay must not park
            assert await _line(stream, b"abc\n") == b"cba\n"
            outcome: dict[str, Any] = {}

            async def reload_now() -> None:
                outcome.update(await reload(proxy))

            async with trio.open_nursery() as inner:
                inner.start_soon(reload_now)
                await proxy.wait_log("event=reload.committed")
                assert await _line(stream, b"still here\n") == b"ereh llits\n"  # in the old worker still
            assert outcome.get("result") == "ok" and outcome.get("forced") == 1, outcome  # cut at the drain deadline
            with trio.fail_after(5):
                assert await stream.receive_some(100) == b""
            assert await stat(proxy, "listener.tcp.downstream_cx_migrated_out") == 0
            await stream.aclose()
            # (s_server serves one connection at a time: the new worker's, now the old one is gone)
            fresh = await trio.open_tcp_stream(*proxy.address("tcp"))
            assert await _line(fresh, b"new\n") == b"wen\n"  # the new worker connects with TLS too
            await fresh.aclose()
    finally:
        s_server.terminate()


async def test_tcp_listener_closes_the_client_when_the_upstream_name_does_not_verify(tmp_path, certs, nursery):
    port, s_server = await _s_server(nursery, certs.wrong_name)
    admin = str(tmp_path / "admin.sock")
    config = tcp_config([f"127.0.0.1:{port}"], max_connect_attempts=2)
    config["clusters"][0]["tls"] = {"ca": certs.ca_path, "server_name": NAME}
    config["admin"] = {"socket": admin}
    try:
        async with running_proxy(config, tmp_path) as proxy:
            stream = await trio.open_tcp_stream(*proxy.address("tcp"))
            with trio.fail_after(5):
                assert await stream.receive_some(100) == b""  # closed: no upstream would do
            stats = await cluster_stats(admin)
            assert stats["ssl_fail_verify_san"] == 2 and stats["upstream_cx_connect_fail"] == 2, stats
            assert stats["upstream_cx_connect_attempts_exceeded"] == 1 and stats["upstream_cx_active"] == 0
            assert "hostname mismatch" in proxy.log()
    finally:
        s_server.terminate()


class BannerServer:
    """A TLS server that speaks first (as SMTP does), then echoes; one thread per connection."""

    def __init__(self, cert: tuple[str, str]) -> None:
        import socket

        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(*cert)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: Any) -> None:
        try:
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"220 banner.example.test ready\r\n")
                while data := tls.recv(4096):
                    tls.sendall(b"echo " + data)
        except (ssl.SSLError, OSError):
            pass

    def close(self) -> None:
        self.sock.close()


async def test_tcp_to_a_tls_server_that_speaks_first(tmp_path, certs):
    server = BannerServer(certs.good)
    admin = str(tmp_path / "admin.sock")
    config = tcp_config([server.address])
    config["clusters"][0]["tls"] = {"ca": certs.ca_path, "server_name": NAME}
    config["admin"] = {"socket": admin}
    try:
        async with running_proxy(config, tmp_path) as proxy:
            for _ in range(2):  # the second resumes the session
                stream = await trio.open_tcp_stream(*proxy.address("tcp"))
                got = b""
                with trio.fail_after(5):
                    while not got.endswith(b"\r\n"):
                        got += await stream.receive_some(1000)
                assert got == b"220 banner.example.test ready\r\n"  # before the client said anything
                assert await _line(stream, b"EHLO me\n") == b"echo EHLO me\n"
                await stream.send_eof()  # half-close: close_notify to the server, which ends too
                with trio.fail_after(5):
                    assert await stream.receive_some(100) == b""
                await stream.aclose()
            stats = await cluster_stats(admin)
            assert stats["ssl_handshake"] == 2 and stats["ssl_session_reused"] == 1, stats
    finally:
        server.close()
