"""HTTP/1.1 keep-alive through a real Worker over real loopback sockets, in one process (not a test).

    .venv/bin/python tests/http/bench_http1_sockets.py N

A Worker with the bench scenario's config (one http1 listener, one route, one cluster), a
trio upstream answering `ok`, and 10 clients doing N keep-alive requests in all. Unlike
bench_connection_manager.py (fake sockets that never block) every wait and syscall is real, so
trio's per-wait cost is in it. Made for instruction counts, which stay put on a noisy machine:

    valgrind --tool=callgrind python tests/http/bench_http1_sockets.py 1000   # and 3000
    (difference / 2000 = instructions per request, client and upstream included; measure two
    builds with PYTHONPATH=<checkout>/src:<checkout>)
"""

from __future__ import annotations

import functools
import sys

import trio

from proxy.config.loader import load_text
from proxy.server import Worker

RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n"
REQ = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: wrk\r\n\r\n"

async def upstream_conn(stream: trio.SocketStream) -> None:
    buf = b""
    try:
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            buf += data
            n = buf.count(b"\r\n\r\n")
            if n:
                buf = buf[buf.rindex(b"\r\n\r\n") + 4:]
                await stream.send_all(RESP * n)
    except trio.BrokenResourceError:
        pass

async def client(port: int, n: int) -> None:
    s = await trio.open_tcp_stream("127.0.0.1", port)
    for _ in range(n):
        await s.send_all(REQ)
        got = b""
        while not got.endswith(b"ok\n"):
            got += await s.receive_some(65536)
    await s.aclose()

async def main(total: int, conns: int = 10) -> None:
    async with trio.open_nursery() as n:
        listeners = await n.start(functools.partial(trio.serve_tcp, upstream_conn, 0, host="127.0.0.1"))
        up_port = listeners[0].socket.getsockname()[1]
        cfg = load_text(f"""
logging: {{level: warning}}
listeners:
  - {{name: l, address: "127.0.0.1:0", protocol: http1, route: main}}
clusters:
  - {{name: backend, hosts: [{{address: "127.0.0.1:{up_port}"}}]}}
routes:
  main:
    virtual_hosts:
      - {{name: all, domains: ["*"], routes: [{{match: {{prefix: /}}, cluster: backend}}]}}
""")
        w = Worker(cfg)
        w.bind_listeners()
        port = w.listeners[0].socks[0].getsockname()[1]
        n.start_soon(w.run)
        await trio.sleep(0.1)
        async with trio.open_nursery() as c:
            for _ in range(conns):
                c.start_soon(client, port, total // conns)
        n.cancel_scope.cancel()

if __name__ == "__main__":
    import os

    if os.environ.get("PROXY_EDGE") == "1":
        from proxy.network import edge_epoll

        assert edge_epoll.install()
    trio.run(main, int(sys.argv[1]))
