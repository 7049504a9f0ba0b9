"""HTTP/2 to the upstream (`clusters[].protocol: http2 | downstream`), through a real `proxy run`,
with nghttpd (nghttp2's server) as the h2c upstream: HTTP/1.1 clients translated to HTTP/2,
HTTP/2 clients multiplexed onto few upstream connections, bodies past the initial flow-control
window intact, a dead upstream answered 502."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import time

import pytest
import trio

from tests.integration.harness import running_proxy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(argv: list[str], port: int):
    """Run a server process until the block ends (stopped by its pid), once `port` accepts."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError(f"{argv[0]} did not listen on {port}") from None
                time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        proc.wait(5)


@pytest.fixture
def nghttpd(tmp_path):
    docs = tmp_path / "htdocs"
    docs.mkdir()
    (docs / "index.html").write_bytes(b"hello over h2\n")
    big = os.urandom(700_000)  # > 10 x the 64 KiB initial window
    (docs / "big.bin").write_bytes(big)
    port = free_port()
    with serving(["nghttpd", "--no-tls", "--address=127.0.0.1", "-d", str(docs), str(port)], port) as proc:
        yield f"127.0.0.1:{port}", hashlib.sha256(big).hexdigest(), proc


def config(upstream: str, cluster_protocol: str = "http2", admin: str | None = None) -> dict:
    return {
        **({"admin": {"socket": admin}} if admin else {}),
        "logging": {"level": "info"},
        "runtime": {"drain_timeout": "5s"},
        "listeners": [
            {"name": "h1", "address": "127.0.0.1:0", "protocol": "http1", "route": "main"},
            {"name": "h2", "address": "127.0.0.1:0", "protocol": "http2", "route": "main"},
        ],
        "clusters": [{"name": "up", "protocol": cluster_protocol, "connect_timeout": "500ms", "hosts": [{"address": upstream}]}],
        "routes": {"main": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "cluster": "up"}]}]}},
    }


async def run(*argv: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(list(argv), capture_stdout=True, capture_stderr=True, check=False)


def base(proxy, listener: str) -> str:
    host, port = proxy.address(listener)
    return f"http://{host}:{port}"


async def test_http1_clients_are_translated_to_an_http2_upstream(tmp_path, nghttpd):
    address, digest, _ = nghttpd
    async with running_proxy(config(address), tmp_path) as proxy:
        small = await run("curl", "-sS", "-i", base(proxy, "h1") + "/index.html")
        assert small.stdout.startswith(b"HTTP/1.1 200 OK"), small.stdout[:200]
        assert b"server: nghttpd" in small.stdout and small.stdout.endswith(b"\r\n\r\nhello over h2\n")
        big = await run("curl", "-sS", base(proxy, "h1") + "/big.bin")
        assert hashlib.sha256(big.stdout).hexdigest() == digest  # windows opened as we consumed
        missing = await run("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", base(proxy, "h1") + "/nope")
        assert missing.stdout == b"404"
        load = await run("wrk", "-t1", "-c8", "-d1s", base(proxy, "h1") + "/index.html")
        out = load.stdout.decode()
        assert load.returncode == 0 and "Socket errors" not in out and "Non-2xx" not in out, out


async def test_http2_clients_multiplex_onto_the_upstream(tmp_path, nghttpd):
    address, digest, _ = nghttpd
    import json
    import sys

    admin = str(tmp_path / "admin.sock")
    async with running_proxy(config(address, "downstream", admin), tmp_path) as proxy:
        result = await run("h2load", "-n", "1000", "-c", "2", "-m", "20", base(proxy, "h2") + "/index.html")
        out = result.stdout.decode()
        assert "1000 succeeded, 0 failed, 0 errored, 0 timeout" in out, out
        # 40 streams in flight at a time went over the peer's 100-stream connections: one
        # upstream connection (two at most, if both clients' first requests raced).
        stats = json.loads((await run(sys.executable, "-m", "proxy", "ctl", "--socket", admin, "--json", "stats", "upstream_cx_total")).stdout)
        opened = {k: v for k, v in stats.items() if k.startswith("cluster.up.") and k.endswith("upstream_cx_total")}
        assert opened and 1 <= sum(opened.values()) <= 2, stats
        big = await run("curl", "-sS", "--http2-prior-knowledge", base(proxy, "h2") + "/big.bin")
        assert hashlib.sha256(big.stdout).hexdigest() == digest
        # `downstream`: an HTTP/1.1 client goes upstream as HTTP/1.1, which nghttpd does not speak.
        h1 = await run("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", base(proxy, "h1") + "/index.html")
        assert h1.stdout in (b"502", b"503"), h1.stdout


async def test_a_dead_http2_upstream_is_a_502_and_the_proxy_serves_on(tmp_path, nghttpd):
    address, _, proc = nghttpd
    async with running_proxy(config(address), tmp_path) as proxy:
        ok = await run("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", base(proxy, "h1") + "/index.html")
        assert ok.stdout == b"200"
        proc.terminate()
        proc.wait(5)
        await trio.sleep(0.2)
        down = await run("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", base(proxy, "h1") + "/index.html")
        assert down.stdout in (b"502", b"503"), down.stdout
        down2 = await run("curl", "-sS", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}", base(proxy, "h2") + "/index.html")
        assert down2.stdout in (b"502", b"503"), down2.stdout
    assert "connection.failed" not in proxy.log() and "Traceback" not in proxy.log()
