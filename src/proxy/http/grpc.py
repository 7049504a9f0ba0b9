"""gRPC over the stream layer: what the router must know of it, whatever carries it.

- A local reply to a gRPC request is gRPC-shaped, as Envoy makes it: HTTP 200, `content-type:
  application/grpc`, `grpc-status` and `grpc-message` in a trailers-only response (the head
  ends the stream), so a gRPC client sees a status, not a broken call.
- `grpc-timeout` (the client's deadline) caps the route timeout.
- The call's status (from trailers, a trailers-only head, or our local reply) is kept for
  `%grpc_status%`.
"""

from __future__ import annotations

from urllib.parse import quote

from proxy.http import stream_info as flags

OK = 0
UNKNOWN = 2
DEADLINE_EXCEEDED = 4
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14
UNAUTHENTICATED = 16

CONTENT_TYPE = b"application/grpc"

# What a local reply's response flag means to a gRPC client (the and Envoy's choices).
_BY_FLAG = {
    flags.NO_HEALTHY_UPSTREAM: UNAVAILABLE,
    flags.UPSTREAM_CONNECT_FAILURE: UNAVAILABLE,
    flags.UPSTREAM_CONNECTION_TERMINATION: UNAVAILABLE,
    flags.UPSTREAM_TIMEOUT: DEADLINE_EXCEEDED,
    flags.UPSTREAM_OVERFLOW: RESOURCE_EXHAUSTED,
    flags.RATE_LIMITED: RESOURCE_EXHAUSTED,
    flags.NO_ROUTE: UNIMPLEMENTED,
    flags.UNAUTHORIZED: PERMISSION_DENIED,
}

# Otherwise by HTTP status (the gRPC spec's "HTTP to gRPC status code mapping").
_BY_HTTP = {400: INTERNAL, 401: UNAUTHENTICATED, 403: PERMISSION_DENIED, 404: UNIMPLEMENTED, 429: UNAVAILABLE, 502: UNAVAILABLE, 503: UNAVAILABLE, 504: UNAVAILABLE}

# grpc-timeout: 1-8 digits and a unit (hours, minutes, seconds, milli-, micro-, nanoseconds).
_UNITS = {ord("H"): 3600.0, ord("M"): 60.0, ord("S"): 1.0, ord("m"): 1e-3, ord("u"): 1e-6, ord("n"): 1e-9}


def is_grpc(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if len(name) == 12 and name.lower() == b"content-type":
            return value[:16].lower() == CONTENT_TYPE
    return False


def parse_timeout(value: bytes) -> float | None:
    """Seconds from a grpc-timeout value; None when it is malformed (then it is ignored)."""
    value = value.strip()
    if not 2 <= len(value) <= 9 or not value[:-1].isdigit():
        return None
    unit = _UNITS.get(value[-1])
    return None if unit is None else int(value[:-1]) * unit


def local_status(http_status: int, flag: str | None) -> int:
    if flag is not None and flag in _BY_FLAG:
        return _BY_FLAG[flag]
    if 200 <= http_status < 300:
        return OK
    return _BY_HTTP.get(http_status, UNKNOWN)


def reply_headers(status: int, message: bytes) -> list[tuple[bytes, bytes]]:
    """The head of a trailers-only gRPC reply."""
    headers = [(b"content-type", CONTENT_TYPE), (b"grpc-status", str(status).encode())]
    if message:
        # grpc-message is percent-encoded UTF-8 (printable ASCII but '%' may pass as is).
        headers.append((b"grpc-message", quote(message.decode("utf-8", "replace"), safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode()))
    return headers


def status_of(headers: list[tuple[bytes, bytes]] | tuple[()]) -> int | None:
    for name, value in headers:
        if len(name) == 11 and name.lower() == b"grpc-status":
            try:
                return int(value)
            except ValueError:
                return None
    return None
