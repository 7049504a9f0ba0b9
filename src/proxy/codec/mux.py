"""The sans-IO interface of a multiplexed server codec: many streams over one connection.

HTTP/2 (proxy.codec.http2), the RPC protocols to come (SOFABolt, Dubbo) and the test-only RPC
codec of tests/http/rpc_codec.py all look like this to the stream layer (proxy.http.multiplex),
which runs one task per stream and the router on each. Bytes go in through `receive`, events
come out; responses go in through `send_*`, bytes come out of `data_to_send`. No I/O, no
clock reads (time is passed in), no trio.

Heads are the HTTP/1 codec's `RequestHead`/`ResponseHead`: a codec translates its own framing
(pseudo-headers, a service name, a request id) into them, so the router needs nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.codec.http1 import Headers, RequestHead, ResponseHead


@dataclass(frozen=True, slots=True)
class RequestReceived:
    stream_id: int
    head: RequestHead
    scheme: bytes  # b"http" / b"https" (HTTP/2 :scheme), b"http" where the protocol has none
    end_stream: bool  # no body follows


@dataclass(frozen=True, slots=True)
class DataReceived:
    stream_id: int
    data: bytes
    end_stream: bool
    flow_length: int  # what to `acknowledge` once the data is consumed (HTTP/2: with padding)


@dataclass(frozen=True, slots=True)
class TrailersReceived:
    stream_id: int
    trailers: Headers  # the stream's request side ends here


@dataclass(frozen=True, slots=True)
class StreamReset:
    stream_id: int
    error_code: int
    remote: bool = True  # False: the codec reset the stream itself (a malformed request)


@dataclass(frozen=True, slots=True)
class GoAwayReceived:
    last_stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True)
class WindowOpened:
    stream_id: int  # 0: the whole connection; sends blocked by flow control may go on


class CodecError(Exception):
    """The peer broke the protocol at the connection level. The codec has already queued its
    last words (HTTP/2: a GOAWAY with `code`): flush `data_to_send()`, then close."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


NO_ERROR = 0
CANCEL = 8  # HTTP/2's code for "not wanted any more": used for resets the proxy decides


class ServerCodec:
    """A multiplexed server codec; override every method. One instance per connection."""

    protocol = "unknown"  # %protocol% in access logs, e.g. "HTTP/2"

    def initiate(self) -> None:
        """Queue what the server says first (HTTP/2: its SETTINGS)."""

    def receive(self, data: bytes, now: float) -> list[object]:
        """Feed bytes from the peer; the events they complete. Raises CodecError."""
        raise NotImplementedError

    def send_response(self, stream_id: int, head: ResponseHead, end_stream: bool) -> None:
        raise NotImplementedError

    def send_data(self, stream_id: int, data: bytes, end_stream: bool) -> int:
        """Queue as much of `data` as flow control allows; how many bytes were taken. The
        rest waits for a `WindowOpened`. `end_stream` takes effect only once all is taken."""
        raise NotImplementedError

    def send_trailers(self, stream_id: int, trailers: Headers) -> None:
        raise NotImplementedError

    def reset(self, stream_id: int, code: int) -> None:
        raise NotImplementedError

    def acknowledge(self, stream_id: int, flow_length: int) -> None:
        """The stream layer consumed this much of a stream's data: open the windows again."""

    def goaway(self, code: int = NO_ERROR, last_stream_id: int | None = None) -> None:
        """No new streams: the first step of a drain (`last_stream_id` = the highest possible)
        or the last (None: the highest stream processed)."""

    def data_to_send(self) -> bytes:
        raise NotImplementedError

    def count_into(self, counters: object) -> None:
        """Count protocol events (HTTP/2: resets by code, GOAWAYs, flow-control stalls) into
        the listener's stats; a codec with nothing of its own to count ignores it."""

    def outbound_backlog(self) -> int:
        """Bytes queued by `send_*` and not yet taken by `data_to_send`."""
        return 0
