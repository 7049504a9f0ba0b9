"""A real HTTP/1.1 upstream for tests, built on h11 (an independent HTTP implementation).

Paths choose behaviour:
  /echo...            200, JSON of what arrived: method, target, headers, body length and sha256,
                      and the trailers of a chunked body
  /status/N           answers status N
  /bytes/N            N bytes of body (Content-Length), a repeating pattern
  /chunked/N          N bytes in 64 KiB chunks, Transfer-Encoding: chunked
  /slow/MS            answers after MS milliseconds
  /reset              resets the connection without answering
  /close-mid-body     sends a head promising 1000 bytes, 10 of them, then closes
  /flaky/N            the first N requests on this server answer 503, then 200
  /sink               reads the body (any size), answers its length and sha256
Every response carries `x-upstream: NAME` and `x-conn: K` (the index of the TCP connection on
this server, to check keep-alive reuse).
"""

from __future__ import annotations

import functools
import hashlib
import json
import socket

import h11
import trio

PATTERN = bytes(range(256)) * 256  # 64 KiB


class HttpUpstream:
    def __init__(self, name: str = "up") -> None:
        self.name = name
        self.connections = 0
        self.requests = 0
        self.flaky_served = 0
        self.address = ""
        self.port = 0
        self.seen: list[dict] = []

    async def start(self, nursery: trio.Nursery, host: str = "127.0.0.1") -> str:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, self._serve, 0, host=host))
        self.port = listeners[0].socket.getsockname()[1]
        self.address = f"{host}:{self.port}"
        return self.address

    async def _serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn_index = self.connections
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
        try:
            while True:
                event = await self._next(stream, conn)
                if isinstance(event, h11.ConnectionClosed) or event is None:
                    return
                assert isinstance(event, h11.Request), event
                self.requests += 1
                keep = await self._respond(stream, conn, event, conn_index)
                if not keep or conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return
        finally:
            await trio.aclose_forcefully(stream)

    async def _next(self, stream: trio.SocketStream, conn: h11.Connection):
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                continue
            return event

    async def _read_body(self, stream, conn) -> tuple[int, str, list]:
        h = hashlib.sha256()
        n = 0
        while True:
            event = await self._next(stream, conn)
            if isinstance(event, h11.Data):
                h.update(event.data)
                n += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return n, h.hexdigest(), [[k.decode(), v.decode()] for k, v in event.headers]
            else:
                raise h11.RemoteProtocolError("unexpected event")

    async def _send(self, stream, conn, *events) -> None:
        for event in events:
            data = conn.send(event)
            if data:
                await stream.send_all(data)

    def _headers(self, conn_index: int, extra=()) -> list[tuple[bytes, bytes]]:
        return [(b"x-upstream", self.name.encode()), (b"x-conn", str(conn_index).encode()), *extra]

    async def _respond(self, stream, conn, request: h11.Request, conn_index: int) -> bool:
        target = request.target.decode()
        path = target.split("?")[0]
        n, digest, trailers = await self._read_body(stream, conn)
        record = {
            "method": request.method.decode(),
            "target": target,
            "headers": [[k.decode(), v.decode()] for k, v in request.headers],
            "body_length": n,
            "body_sha256": digest,
            "trailers": trailers,
        }
        self.seen.append(record)
        if path == "/reset":
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            return False
        if path == "/close-mid-body":
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
            return False
        status = 200
        body = b""
        extra: list[tuple[bytes, bytes]] = []
        if path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
        elif path.startswith("/slow/"):
            await trio.sleep(int(path.rsplit("/", 1)[1]) / 1000)
            body = b"slow"
        elif path.startswith("/flaky/"):
            if self.flaky_served < int(path.rsplit("/", 1)[1]):
                self.flaky_served += 1
                status = 503
        elif path.startswith("/bytes/"):
            size = int(path.rsplit("/", 1)[1])
            await self._send(stream, conn, h11.Response(status_code=200, headers=self._headers(conn_index, [(b"content-length", str(size).encode())])))
            sent = 0
            while sent < size:
                piece = PATTERN[: min(len(PATTERN), size - sent)]
                await self._send(stream, conn, h11.Data(data=piece))
                sent += len(piece)
            await self._send(stream, conn, h11.EndOfMessage())
            return True
        elif path.startswith("/chunked/"):
            size = int(path.rsplit("/", 1)[1])
            await self._send(stream, conn, h11.Response(status_code=200, headers=self._headers(conn_index, [(b"transfer-encoding", b"chunked")])))
            sent = 0
            while sent < size:
                piece = PATTERN[: min(len(PATTERN), size - sent)]
                await self._send(stream, conn, h11.Data(data=piece))
                sent += len(piece)
            await self._send(stream, conn, h11.EndOfMessage(headers=[(b"x-trailer", b"done")]))
            return True
        else:
            body = json.dumps(record).encode()
            extra.append((b"content-type", b"application/json"))
        if request.method == b"HEAD":
            extra.append((b"content-length", str(len(body)).encode()))
            await self._send(stream, conn, h11.Response(status_code=status, headers=self._headers(conn_index, extra)), h11.EndOfMessage())
            return True
        extra.append((b"content-length", str(len(body)).encode()))
        await self._send(
            stream,
            conn,
            h11.Response(status_code=status, headers=self._headers(conn_index, extra)),
            h11.Data(data=body),
            h11.EndOfMessage(),
        )
        return True


def http_config(upstreams: list[str], routes: list[dict] | None = None, **listener) -> dict:
    """An http1 listener with one catch-all virtual host in front of cluster `up`."""
    cluster_extra = listener.pop("cluster", {})
    return {
        "logging": {"level": "info"},
        "runtime": {"drain_timeout": "5s"},
        "listeners": [{"name": "http", "address": "127.0.0.1:0", "protocol": "http1", "route": "main", **listener}],
        "clusters": [{"name": "up", "connect_timeout": "500ms", "hosts": [{"address": a} for a in upstreams], **cluster_extra}],
        "routes": {
            "main": {
                "virtual_hosts": [
                    {"name": "all", "domains": ["*"], "routes": routes or [{"match": {"prefix": "/"}, "cluster": "up"}]}
                ]
            }
        },
    }
