"""The HTTP/1.1 upstream codec connection: a pooled keep-alive connection, one request at a time.

The pool (proxy.upstream.pool) owns these connections and their counts; while the router holds
one it is also the request's `UpstreamRequest` (proxy.http.stream): the request head and body
go out through the serializers, the response comes back through a `ResponseParser` in batches
of events. Whether the connection may be reused is decided here, from the response's framing:
a close-delimited body, `Connection: close`, or a response not read to its end retire it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from proxy.codec import http1
from proxy.codec.http1 import Headers, Limits, RequestHead, ResponseHead, ResponseParser
from proxy.http.codec_io import send_batch
from proxy.http.stream import ReusedClosed, UpstreamRequest
from proxy.network.sockio import ConnectionLost, SockIO

if TYPE_CHECKING:
    from proxy.upstream.host import Host
    from proxy.upstream.pool import HostPool

# Upstreams are trusted more than clients, but not without bound.
_LIMITS = Limits(max_header_bytes=1 << 20, max_header_count=1000)


class Http1Upstream(UpstreamRequest):
    __slots__ = (
        "io",
        "host",
        "pool",
        "parser",
        "requests",
        "idle_since",
        "local_address",
        "out",
        "events",
        "chunked",
        "ended",
        "method",
        "response",
    )

    def __init__(self, io: SockIO, host: Host, pool: HostPool) -> None:
        self.io = io
        self.host = host
        self.pool = pool
        self.parser = ResponseParser(_LIMITS)
        self.requests = 0
        self.idle_since = 0.0
        try:
            name = io.sock.getsockname()
            self.local_address = f"{name[0]}:{name[1]}" if isinstance(name, tuple) else "unix"
        except OSError:
            self.local_address = "-"
        self.out: list[bytes] = []
        self.events: list[Any] = []  # response events parsed, not taken yet
        self.chunked = False
        self.ended = False
        self.method = b"GET"
        self.response: ResponseHead | None = None

    # -- the request
    def write_request(self, head: RequestHead, body: bytes | None) -> None:
        self.parser.start(head.method)
        self.method = head.method
        self.response = None
        self.events = []
        self.chunked = chunked = head.chunked
        data = http1.request_head_bytes(head)
        if body is not None:  # the whole request
            if body or chunked:
                data += http1.chunk(body) + http1.last_chunk() if chunked else body
            self.ended = True
        else:
            self.ended = False
        self.out = [data]

    def write_data(self, data: bytes) -> None:
        self.out.append(http1.chunk(data) if self.chunked else data)

    def write_end(self, trailers: Headers | tuple[()] = ()) -> None:
        if self.chunked:
            self.out.append(http1.last_chunk(trailers))
        self.ended = True

    async def flush(self) -> None:
        await send_batch(self.io, self.out, self.ended)

    async def send_request(self, head: RequestHead, body: bytes) -> None:
        self.write_request(head, body)
        data = self.out[0]
        self.out.clear()
        await self.io.send_soon(data)  # the whole request: out with this pass's other sends

    # -- the response
    async def receive_head(self, reused: bool) -> ResponseHead:
        io = self.io
        parser = self.parser
        got_any = False
        while True:
            events = self.events
            for i, event in enumerate(events):
                if type(event) is ResponseHead:
                    if 100 <= event.status < 200 and event.status != 101:
                        continue  # 100-continue was answered by us; other 1xx are dropped (Envoy)
                    self.events = events[i + 1 :]
                    self.response = event
                    return event
            self.events = []
            try:
                data = await (io.recv() if got_any else io.recv_reply())
            except ConnectionLost:
                if reused and not got_any:
                    raise ReusedClosed("upstream closed a reused connection") from None
                raise
            if not data:
                if reused and not got_any:
                    raise ReusedClosed("upstream closed a reused connection")
                self.events = parser.feed_eof()
                if not self.events:
                    raise ConnectionLost("upstream closed before a response")
                continue
            got_any = True
            self.events = parser.feed(data)

    def buffered(self) -> list[Any]:
        events = self.events
        self.events = []
        return events

    async def receive(self) -> list[Any]:
        events = self.events
        if events:
            self.events = []
            return events
        io = self.io
        while True:
            data = await io.recv()
            if data:
                events = self.parser.feed(data)
            else:
                events = self.parser.feed_eof()
                if not events:
                    raise ConnectionLost("upstream closed mid-response")
            if events:
                return events

    def release(self, complete: bool) -> None:
        reusable = False
        response = self.response
        if complete and response is not None and response.keep_alive:
            status = response.status
            # A body that ends at the close cannot be followed by another response.
            reusable = (
                response.content_length is not None
                or response.chunked
                or self.method == b"HEAD"
                or status in (204, 304)
                or status < 200
            )
        self.pool.release(self, reusable)

    def detach(self) -> None:
        """The connection leaves the pool without being closed (an upgrade tunnel owns it)."""
        self.pool.detach(self)
