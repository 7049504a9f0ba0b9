"""The protocol-neutral stream API: what the router sees of a request, whatever the protocol.

Envoy splits an HTTP listener into codec, connection manager and router filter; MOSN into
`pkg/stream` codec connections under `pkg/proxy` downstream and upstream requests. Here:

    downstream codec connection          Router (proxy.http.router)         upstream codec
    (http1_server, multiplex, ...)       one request, any protocol           (http1_upstream, ...)
    bytes -> ServerStream  ------------>  filters, route, cluster, host  ---> UpstreamRequest -> bytes
           <- write_response/data/end <-  retries, timeouts, local      <--- receive() events
                                          replies, flags, stats, logs

A codec connection turns bytes into `ServerStream`s and calls `Router.serve(stream)` for each
(HTTP/1 inline in the connection's task, one request after another; a multiplexed codec in a
task per stream). The router talks to the upstream through an `UpstreamRequest` taken from the
cluster's pool for that host. Heads are `RequestHead`/`ResponseHead` (proxy.codec.http1) on
both sides, so the router never sees a pseudo-header or a chunk size: each codec translates.

Writes are synchronous and buffer; `flush()` sends what was written, one send per batch
(DESIGN: one receive and one send per batch). A flush after `write_end` is the end of a
message and goes out with the rest of this scheduler pass's sends (SockIO.send_soon).

Both classes are abstract: a codec overrides every method. They subclass nothing of trio, so
a codec in the tests (tests/http/rpc_codec.py) plugs in without touching this layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from proxy.codec.http1 import Body, EndOfMessage, Headers, ProtocolError, RequestHead, ResponseHead
from proxy.http.filter import Stream

if TYPE_CHECKING:
    from proxy.http.stream_info import StreamInfo
    from proxy.upstream.host import Host

__all__ = [
    "Body",
    "EndOfMessage",
    "ProtocolError",
    "ReusedClosed",
    "ServerStream",
    "StreamReset",
    "UpstreamRequest",
]


class StreamReset(Exception):
    """The peer reset this stream (an RST_STREAM, a closed HTTP/1 connection): the exchange
    cannot go on. `code` is the protocol's error code where it has one."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class ReusedClosed(StreamReset):
    """A reused upstream connection turned out closed before any byte of the response came:
    the request cannot have been processed, so one more try on a new connection is safe."""


class ServerStream(Stream):
    """One request from a downstream codec, and the way back for its response.

    `request` is the head as received (filters may edit it); `scheme` is b"http" or b"https";
    `protocol` the access log's %protocol% ("HTTP/1.1", "HTTP/2", ...). `keep_alive` is the
    codec's to keep: the router only reads it to pass into local replies. Filters see this
    object as their `Stream`.
    """

    __slots__ = ("scheme", "response_started", "has_body", "grpc")

    def __init__(self, request: RequestHead, info: StreamInfo, downstream_address: str) -> None:
        # (the fields of Stream and ServerStream, set here in one frame: codecs build one
        # stream per request and call no super().__init__ on the hot path)
        self.request = request
        self.response = None
        self.info = info
        self.route = None
        self.downstream_address = downstream_address
        self.scheme = b"http"
        self.response_started = False  # the first byte of the response has been written
        # A request body is still to come (chunked, a content length, or a stream that did not
        # end with its head): set by the codec, and what the router reads before the body.
        self.has_body = request.chunked or bool(request.content_length)
        self.grpc = False  # a gRPC call (content-type application/grpc): seen by the router

    # -- the request body
    async def receive_body(self) -> Body | EndOfMessage:
        """The next piece of the request body, or its end (with trailers). Raises StreamReset
        (or ConnectionLost) if the client goes away midway, ProtocolError if it breaks the
        protocol."""
        raise NotImplementedError

    async def send_continue(self) -> None:
        """Answer `Expect: 100-continue`: the router is about to read the body."""
        raise NotImplementedError

    # -- the response
    def write_response(self, head: ResponseHead, end_stream: bool) -> None:
        """Buffer the response head (hop-by-hop fields already gone). `end_stream`: no body
        and no trailers follow: the head is the whole response, and no write_end comes after
        it. The codec adds its own framing (Content-Length, chunking, :status...)."""
        raise NotImplementedError

    def write_data(self, data: bytes) -> None:
        raise NotImplementedError

    def write_end(self, trailers: Headers | tuple[()] = ()) -> None:
        """The response is complete (with trailers, where the protocol carries them)."""
        raise NotImplementedError

    async def flush(self) -> None:
        """Send what was written (at the end of this pass if the response is complete)."""
        raise NotImplementedError

    async def respond(self, head: ResponseHead, body: bytes, trailers: Headers | tuple[()] = ()) -> None:
        """A whole response at once (the common case: it came in one read): the same as
        write_response, write_data, write_end and flush, in one call a codec may make cheaper."""
        ends = not body and not trailers
        self.write_response(head, ends)
        if not ends:
            if body:
                self.write_data(body)
            self.write_end(trailers)
        await self.flush()

    # -- local replies and deadlines
    def reply_headers(self, close: bool) -> None:
        """A local reply is about to be written; `close` asks the codec to end the connection
        after it (HTTP/1: a refused CONNECT). Multiplexed codecs ignore it."""
        raise NotImplementedError

    def set_deadline(self, deadline: float) -> None:
        """The route timeout: when it passes, the stream is cancelled and the codec answers
        504 (or cuts a response already started)."""
        raise NotImplementedError

    def timed_out(self) -> bool:
        """The route timeout (not a client or handover cancel) ended this exchange."""
        raise NotImplementedError

    # -- upgrades (WebSocket, CONNECT)
    async def start_tunnel(self, upstream: UpstreamRequest, response: ResponseHead) -> bool:
        """After a 101 (or a CONNECT 2xx) both directions become a byte tunnel; True if this
        codec could make one (then it owns the upstream from here)."""
        return False


class UpstreamRequest:
    """One request on an upstream codec connection, taken from the host's pool.

    The router writes the request (`write_request`, then `write_data`/`write_end` and
    `flush`), reads the response (`receive_head`, then `receive` in batches) and gives the
    request back with `release`. HTTP/1: the pooled connection itself (one request at a time).
    """

    __slots__ = ()

    host: Host
    local_address: str

    def write_request(self, head: RequestHead, body: bytes | None) -> None:
        """Buffer the request head, and the whole body when it is given (b"" for none): the
        request is then complete and `flush` sends it with this pass's other sends."""
        raise NotImplementedError

    def write_data(self, data: bytes) -> None:
        raise NotImplementedError

    def write_end(self, trailers: Headers | tuple[()] = ()) -> None:
        raise NotImplementedError

    async def flush(self) -> None:
        raise NotImplementedError

    async def send_request(self, head: RequestHead, body: bytes) -> None:
        """A whole request at once: write_request(head, body) and flush, in one call."""
        self.write_request(head, body)
        await self.flush()

    async def receive_head(self, reused: bool) -> ResponseHead:
        """The final response head (1xx dropped, 101 kept). With `reused`, a connection found
        closed before any byte raises ReusedClosed (safe to retry)."""
        raise NotImplementedError

    def buffered(self) -> list[Any]:
        """The response events already parsed after the head (maybe none), taken."""
        raise NotImplementedError

    async def receive(self) -> list[Any]:
        """The next batch of response events (Body, EndOfMessage): at least one. Raises
        StreamReset / ConnectionLost / ProtocolError when the upstream breaks midway."""
        raise NotImplementedError

    def release(self, complete: bool) -> None:
        """Give the request back: `complete` if its response was read to the end (the
        connection may then be reused), else the connection or stream is reset."""
        raise NotImplementedError
