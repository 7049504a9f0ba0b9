"""Upstream connects through a real `proxy run`: a dropped SYN is survived with the default
connect timeout, and failed connects reach the log, one warning per host per interval."""

from __future__ import annotations

import socket

import trio

from tests.integration.harness import connect, dead_address, read_all, running_proxy, tcp_config
from tests.integration.http_upstream import http_config


async def fill_accept_queue(address: tuple[str, int]) -> list[trio.socket.SocketType]:
    """Connect to a listener that never accepts until its accept queue is full: Linux then drops
    each new SYN (ListenOverflows) and the client resends it after 1 s. The probe that found
    the queue full is closed (a socket closed in SYN-SENT sends no more SYNs)."""
    fillers: list[trio.socket.SocketType] = []
    while len(fillers) < 64:
        sock = trio.socket.socket()
        with trio.move_on_after(0.2) as scope:
            await sock.connect(address)
        if scope.cancelled_caught:
            sock.close()
            return fillers
        fillers.append(sock)
    raise AssertionError("the accept queue never filled")


async def answer_from(listener: trio.socket.SocketType, nursery: trio.Nursery) -> None:
    """Accept every queued connection and answer each request 200."""

    async def one(sock: trio.socket.SocketType) -> None:
        with sock:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await sock.recv(65536)
                if not chunk:
                    return
                data += chunk
            await sock.send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")

    while True:
        sock, _ = await listener.accept()
        nursery.start_soon(one, sock)


async def get(address) -> bytes:
    stream = await connect(address)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        return await read_all(stream)


async def test_a_dropped_syn_is_resent_within_the_default_connect_timeout(nursery, tmp_path):
    # A backend with a tiny accept backlog under a burst (Python's http.server: listen(5)).
    backend = trio.socket.socket()
    await backend.bind(("127.0.0.1", 0))
    backend.listen(0)
    address = backend.getsockname()
    fillers = await fill_accept_queue(address)
    assert fillers
    config = http_config([f"127.0.0.1:{address[1]}"])
    del config["clusters"][0]["connect_timeout"]  # the default
    async with running_proxy(config, tmp_path) as proxy:

        async def accept_soon() -> None:
            await trio.sleep(0.5)  # the proxy's first SYN was dropped; its resend (at 1 s) fits
            await answer_from(backend, nursery)

        nursery.start_soon(accept_soon)
        start = trio.current_time()
        response = await get(proxy.address("http"))
        elapsed = trio.current_time() - start
    assert response.startswith(b"HTTP/1.1 200 "), response
    assert response.endswith(b"\r\n\r\nok")
    assert 1.0 <= elapsed < 4.0, elapsed  # it waited for the resent SYN, as nginx and HAProxy do
    for sock in fillers:
        sock.close()


def connect_failed_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "event=upstream.connect_failed" in line]


async def test_failed_connects_are_logged_once_per_host_per_interval(tmp_path):
    dead, other = dead_address(), dead_address()
    config = http_config([dead])
    tcp = tcp_config([other])
    tcp["listeners"][0]["cluster"] = tcp["clusters"][0]["name"] = "down"
    config["listeners"] += tcp["listeners"]
    config["clusters"] += tcp["clusters"]
    async with running_proxy(config, tmp_path) as proxy:
        for _ in range(20):  # HTTP: a 502 UF each, before this seen only in the access log
            assert (await get(proxy.address("http"))).startswith(b"HTTP/1.1 502 ")
        for _ in range(20):  # TCP: 3 attempts each, 60 failures, before this a line each
            stream = await connect(proxy.address("tcp"))
            async with stream:
                assert await read_all(stream) == b""
        await proxy.wait_log("event=upstream.all_attempts_failed")
        await trio.sleep(0.2)
        lines = connect_failed_lines(proxy.log())
    # within 10 s of its first failure a host's failures are counted, not logged: the next line
    # carries the count (tests/upstream/test_connect_log.py)
    assert len(lines) == 2, lines
    assert lines[0].endswith(f" level=warning logger=proxy.upstream event=upstream.connect_failed cluster=up host={dead} reason=econnrefused failures=1 listener=http"), lines
    assert lines[1].endswith(f" level=warning logger=proxy.upstream event=upstream.connect_failed cluster=down host={other} reason=econnrefused failures=1 listener=tcp"), lines
