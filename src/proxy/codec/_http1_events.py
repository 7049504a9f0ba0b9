"""The HTTP/1 codec's vocabulary: events, the protocol error and the limits (see http1)."""

from __future__ import annotations

from dataclasses import dataclass

# (name as received, value with OWS stripped), in order, duplicates kept.
Headers = list[tuple[bytes, bytes]]


@dataclass(slots=True)  # mutable on purpose: stream filters and the router edit heads
class RequestHead:
    method: bytes
    target: bytes  # raw request-target: origin-form, absolute-form, authority-form (CONNECT) or b"*"
    http_version: bytes  # b"1.1" or b"1.0"
    headers: Headers
    keep_alive: bool  # llhttp's verdict from the version and Connection
    chunked: bool
    content_length: int | None
    expect_continue: bool  # Expect: 100-continue on an HTTP/1.1 request
    # Lowercased Upgrade value when the request switches protocols (Connection: upgrade +
    # Upgrade, HTTP/1.1, no body), b"connect" for CONNECT, else None.
    upgrade: bytes | None


@dataclass(slots=True)
class ResponseHead:
    status: int
    reason: bytes  # as received; may be b"" (response_head_bytes fills in the standard phrase)
    http_version: bytes
    headers: Headers
    keep_alive: bool
    chunked: bool
    # The Content-Length header's value. For a response to HEAD, a 1xx, 204 or 304 it describes
    # the representation only: no body follows (EndOfMessage comes right after the head).
    content_length: int | None


@dataclass(frozen=True, slots=True)
class Body:
    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    # A list when a chunked body carried trailers; the empty tuple otherwise.
    trailers: Headers | tuple[()] = ()


@dataclass(frozen=True, slots=True)
class Upgraded:
    """HTTP/1 ends here: `leftover` (and every later byte) belongs to the tunnel or new protocol."""

    leftover: bytes


Event = RequestHead | ResponseHead | Body | EndOfMessage | Upgraded


class ProtocolError(Exception):
    """The peer broke HTTP/1.1; the parser is dead afterwards (every later feed raises it again).

    status: the response to send: 400/413/414/431/501/505 from RequestParser, 502 from
    ResponseParser. code: a short word for logs and stats. events: what the failing feed() had
    already produced for messages that *ended* before the bad one (never part of the bad one), so
    pipelined requests ahead of the garbage, or a response followed by junk, can still be served.
    """

    def __init__(self, message: str, status: int = 400, code: str = "bad_request") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.events: list[Event] = []


@dataclass(frozen=True, slots=True)
class Limits:
    max_request_line: int = 8192  # method SP target SP HTTP/1.x -> 414
    max_header_bytes: int = 65536  # request-target/reason + every field line (name+value+4) -> 431
    max_header_count: int = 100  # -> 431 (trailers are counted separately against the same limits)
    max_body_bytes: int | None = None  # Content-Length above it at head time, or a chunked total -> 413
