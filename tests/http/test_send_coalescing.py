"""The connection manager with send coalescing on (network/sockio.py), over a TCP connection
with tiny buffers, so a queued response stalls: what is queued is flushed before the
connection closes, and that flush is bounded by http.idle_timeout."""

from __future__ import annotations

import json
import socket

import trio

from proxy.config.loader import load_text
from proxy.http import connection_manager
from proxy.network.sockio import coalesce_sends
from tests.http.test_migration import manager
from tests.integration.http_upstream import http_config
from tests.network.test_migration import Handoff, wait_for

BODY = 60_000  # queued whole (under COALESCE_MAX) and far more than the socket buffers hold


def _config(idle_timeout: str, body: str):
    routes = [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": body}}]
    return load_text(json.dumps(http_config(["127.0.0.1:1"], routes, http={"idle_timeout": idle_timeout})), fmt="json")


async def _serve_one(
    nursery: trio.Nursery, idle_timeout: str, body: str = "x" * BODY
) -> tuple[socket.socket, trio.Event, connection_manager.HttpConnectionManager]:
    coalesce_sends(lone_send_now=False)
    cm = manager(_config(idle_timeout, body), nursery)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window
        client.connect(listener.getsockname())
        proxy_side, peer = listener.accept()
    proxy_side.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # fixed: no autotuning
    for s in (proxy_side, client):
        s.setblocking(False)
    done = trio.Event()

    async def serve():
        await cm.handle(proxy_side, peer)
        done.set()

    nursery.start_soon(serve)
    return client, done, cm


async def _read_to_eof(client: socket.socket) -> bytes:
    got = bytearray()
    with trio.fail_after(10):
        while True:
            await trio.lowlevel.wait_readable(client)
            data = client.recv(65536)
            if not data:
                return bytes(got)
            got += data


async def _read_response(client: socket.socket) -> bytes:
    """One whole response with a BODY-byte body."""
    got = bytearray()
    with trio.fail_after(10):
        while b"\r\n\r\n" not in got or len(got) - got.index(b"\r\n\r\n") - 4 < BODY:
            await trio.lowlevel.wait_readable(client)
            got += client.recv(65536)
    return bytes(got)


async def test_a_queued_response_is_flushed_before_close(nursery):
    client, done, _ = await _serve_one(nursery, "10s")
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    got = await _read_to_eof(client)
    assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"x" * 100)
    assert len(got) - got.index(b"\r\n\r\n") - 4 == BODY
    await done.wait()


async def test_the_closing_flush_gives_up_after_idle_timeout(nursery):
    client, done, _ = await _serve_one(nursery, "500ms")
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    with trio.fail_after(5):
        await done.wait()  # the client read nothing, and the connection is over anyway
    got = await _read_to_eof(client)
    assert got.startswith(b"HTTP/1.1 200") and len(got) < BODY


async def test_a_connection_with_a_stalled_response_is_not_handed_over(nursery):
    """Hot upgrade: a connection at its safe point whose last response still sits in our
    queue (the client reads nothing) must not leave with those bytes: after
    HANDOVER_FLUSH_TIMEOUT it is refused and served on here, closing after its next response."""
    client, done, cm = await _serve_one(nursery, "10s")
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await wait_for(lambda: len(cm.connections) == 1 and next(iter(cm.connections)).io.owner is not None)
    handoff = Handoff(None, {})
    cm.start_migration(handoff)
    await trio.sleep(connection_manager.HANDOVER_FLUSH_TIMEOUT + 0.3)
    assert handoff.offered == [] and cm.stats.downstream_cx_migrated_out == 0
    first = await _read_response(client)
    assert first.endswith(b"x" * 100) and b"connection: close" not in first.lower()
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    rest = await _read_to_eof(client)  # the next response closes the connection
    assert rest.startswith(b"HTTP/1.1 200") and b"connection: close" in rest.lower()
    await done.wait()
    assert handoff.offered == []


async def test_pipelined_local_replies_of_mixed_sizes_all_arrive_in_order(nursery):
    """Small, over COALESCE_MAX, and two just under it, pipelined in one write, then one more
    request: every response arrives, whole and in order (review repro of a double-queued
    connection whose stalled rest was lost)."""
    coalesce_sends(lone_send_now=False)
    routes = [
        {"match": {"path": "/s"}, "direct_response": {"status": 200, "body": "s" * 10}},
        {"match": {"path": "/big"}, "direct_response": {"status": 200, "body": "b" * 70_000}},
        {"match": {"path": "/m"}, "direct_response": {"status": 200, "body": "m" * 60_000}},
    ]
    cm = manager(load_text(json.dumps(http_config(["127.0.0.1:1"], routes)), fmt="json"), nursery)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 60_000)
        client.connect(listener.getsockname())
        proxy_side, peer = listener.accept()
    proxy_side.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    for s in (proxy_side, client):
        s.setblocking(False)
    nursery.start_soon(cm.handle, proxy_side, peer)
    targets = [b"/s", b"/big", b"/m", b"/m"]
    client.send(b"".join(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % t for t in targets))
    await trio.sleep(0.3)
    client.send(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n")
    targets.append(b"/s")
    expected = {b"/s": b"s" * 10, b"/big": b"b" * 70_000, b"/m": b"m" * 60_000}
    got = bytearray()
    bodies: list[bytes] = []
    with trio.fail_after(10):
        while len(bodies) < len(targets):
            await trio.lowlevel.wait_readable(client)
            got += client.recv(1 << 20)
            while b"\r\n\r\n" in got:
                head, _, rest = bytes(got).partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200"), head[:60]
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
                if len(rest) < length:
                    break
                bodies.append(rest[:length])
                got = bytearray(rest[length:])
    assert bodies == [expected[t] for t in targets]


async def test_queued_pipelined_replies_go_out_before_connection_close(nursery):
    """Small replies, all queued (nothing stalls): three pipelined requests, the last with
    `Connection: close`, are served in one pass, and the connection ends in that same pass
    (no wait for the client in between): the flush before close sends every reply."""
    client, done, _ = await _serve_one(nursery, "10s", body="small")
    get = b"GET / HTTP/1.1\r\nHost: x\r\n"
    client.send(get + b"\r\n" + get + b"\r\n" + get + b"Connection: close\r\n\r\n")
    got = await _read_to_eof(client)
    assert got.count(b"HTTP/1.1 200 OK\r\n") == 3 and got.endswith(b"small")
    await done.wait()
