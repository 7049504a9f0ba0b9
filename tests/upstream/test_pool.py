"""HostPool against a real upstream socket: what goes back to the idle list."""

from __future__ import annotations

import json
import socket

import trio

from proxy.config.loader import load_text
from proxy.network.sockio import coalesce_sends
from proxy.upstream.cluster import Cluster
from proxy.upstream.pool import PoolManager
from tests.integration.http_upstream import http_config


async def test_a_connection_with_request_bytes_still_queued_is_not_reused():
    """An upstream that answered before reading all of the request (say a 413 to a POST):
    the rest of that request still waits in our queue (send_soon), so reusing the connection
    would put it before the next request. Released as reusable, it is closed instead."""
    coalesce_sends(lone_send_now=False)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        config = load_text(json.dumps(http_config([f"127.0.0.1:{port}"])), fmt="json")
        cluster = Cluster(config.clusters[0])
        host = cluster.hosts[0]
        pool = PoolManager().pool(host, cluster)
        conn, reused = await pool.acquire()
        assert not reused
        await conn.io.send_soon(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
        assert conn.io.unsent  # the pass has not ended: still queued
        pool.release(conn, True)
        assert pool.idle == [] and conn.io.sock.fileno() == -1

        conn, reused = await pool.acquire()  # a new one; this time everything went out
        await conn.io.send_soon(b"GET / HTTP/1.1\r\n\r\n")
        await trio.sleep(0)
        assert not conn.io.unsent
        pool.release(conn, True)
        assert pool.idle == [conn]
        pool.release(pool.idle.pop(), False)
