"""HTTP/1 heads and chunks to bytes, and the header helpers a proxy needs (see http1)."""

from __future__ import annotations

from http import HTTPStatus

from proxy.codec._http1_events import Headers, RequestHead, ResponseHead

_REASONS = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}


def _check_lines(out: bytes, lines: int) -> bytes:
    # A CR or LF inside a name or value (a filter's bug, or a variable carrying client bytes) would
    # split the head: count them in one C-speed pass instead of checking every field.
    if out.count(b"\n") != lines or out.count(b"\r") != lines:
        raise ValueError("CR or LF inside an HTTP/1 head field")
    return out


def request_head_bytes(head: RequestHead) -> bytes:
    """The head exactly as given: no header added or removed, single SP, CRLF line ends."""
    lines = [b"%s %s HTTP/%s" % (head.method, head.target, head.http_version)]
    lines.extend(map(b": ".join, head.headers))
    lines += (b"", b"")
    return _check_lines(b"\r\n".join(lines), len(head.headers) + 2)


def response_head_bytes(head: ResponseHead) -> bytes:
    """Always with a reason phrase (some clients choke on none): the given one, else the standard."""
    reason = head.reason or _REASONS.get(head.status, b"Unknown")
    lines = [b"HTTP/%s %d %s" % (head.http_version, head.status, reason)]
    lines.extend(map(b": ".join, head.headers))
    lines += (b"", b"")
    return _check_lines(b"\r\n".join(lines), len(head.headers) + 2)


def response_head_bytes_11(status: int, reason: bytes, headers: Headers) -> bytes:
    """response_head_bytes(ResponseHead(status, reason, b"1.1", headers, ...)), for a proxy that
    builds a head only to send it: the same bytes without the object (~0.4 µs a response)."""
    lines = [b"HTTP/1.1 %d %s" % (status, reason or _REASONS.get(status, b"Unknown"))]
    lines.extend(map(b": ".join, headers))
    lines += (b"", b"")
    return _check_lines(b"\r\n".join(lines), len(headers) + 2)


def chunk(data: bytes | bytearray | memoryview) -> bytes:
    """One chunk; b"" for empty data, because an empty chunk would end the body."""
    if not data:
        return b""
    return b"".join((b"%x\r\n" % len(data), data, b"\r\n"))


def last_chunk(trailers: Headers | tuple[()] = ()) -> bytes:
    if not trailers:
        return b"0\r\n\r\n"
    lines = [b"0"]
    lines.extend(map(b": ".join, trailers))
    lines += (b"", b"")
    return _check_lines(b"\r\n".join(lines), len(trailers) + 2)


HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)


def strip_hop_by_hop(headers: Headers) -> Headers:
    """A new list without the hop-by-hop fields and those named in Connection (RFC 9110 §7.6.1)."""
    drop = HOP_BY_HOP
    for name, value in headers:
        # The length test first: most names are not "connection", and lower() allocates.
        if len(name) == 10 and name.lower() == b"connection":
            named = {t.strip().lower() for t in value.split(b",")}
            named.discard(b"")
            drop = drop | named
    # One lower() per field, no lowered copy of the list: 2.0 -> 1.3 µs for nginx's 5 fields.
    return [field for field in headers if field[0].lower() not in drop]


def header_value(headers: Headers, name: bytes) -> bytes | None:
    """The first value of `name` (given lowercase), compared case-insensitively."""
    n = len(name)
    for field, value in headers:
        if len(field) == n and field.lower() == name:
            return value
    return None
