"""HTTP/2 header blocks <-> the HTTP/1 codec's heads: validation and translation (see http2).

Inbound (decoded HPACK field lists, pseudo-headers first) becomes a RequestHead or ResponseHead
the router can use as it uses an HTTP/1 one: no pseudo-header survives, `:authority` becomes
the first field, `host` (a `host` field as well must say the same, RFC 9113 §8.3.1, and then
appears once; `host` alone, without `:authority`, is kept where it is), cookie crumbs are
joined with "; " (§8.2.3), framing is stated the HTTP/1 way: `content_length` from the one
content-length field (a second one is refused, as by the HTTP/1 codec), `chunked` when a body
of unknown length follows (an HTTP/1 hop sends it chunked).
A block that RFC 9113 §8.1.1 calls malformed raises `Malformed` (the caller resets the stream
with PROTOCOL_ERROR); so does anything an HTTP/1 hop could read differently: field names
outside lowercase tchar, CTLs in values, spaces in `:path`.

Outbound, heads become field lists: pseudo-headers first, names lowercased, the
connection-specific fields (RFC 9113 §8.2.2) and those a `Connection` header names dropped,
`te` kept only as `trailers`.

Compiled by mypyc (scripts/build-native). A field that may be a NeverIndexedHeaderTuple is
typed `Any` where it is read (not `tuple[bytes, bytes]`, which compiled code unboxes into a
plain pair and so loses the never-indexed mark).
"""

from __future__ import annotations

import re
from typing import Any, Final, cast

from hpack import HeaderTuple, NeverIndexedHeaderTuple

from proxy.codec._http1_events import Headers, RequestHead, ResponseHead


class Malformed(Exception):
    """The header block breaks RFC 9113 §8 for this stream only: reset it (PROTOCOL_ERROR)."""


# Names: lowercase tchar (RFC 9113 §8.2.1 forbids uppercase; HTTP/1 needs tokens). Checked once
# per block on the names joined by LF, which no name may contain.
_NAMES: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+(?:\n[!#$%&'*+\-.^_`|~0-9a-z]+)*")
# Values, joined by LF: no CTL but HTAB, no leading or trailing whitespace (§8.2.1). An LF
# inside a value shows as one LF too many (counted), every other CTL matches here.
_BAD_VALUES: Final = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]|^[ \t]|[ \t]$", re.MULTILINE)
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PATH: Final = re.compile(rb"/[\x21-\x7e]*")  # origin-form, visible ASCII: nothing an HTTP/1 line would split on
_AUTHORITY: Final = re.compile(rb"[A-Za-z0-9\-._~!$&'()*+,;=%:\[\]]+")  # host[:port], no userinfo (§8.3.1)
_DIGITS: Final = re.compile(rb"[0-9]{1,18}")
_SCHEMES: Final = frozenset({b"http", b"https"})

# RFC 9113 §8.2.2: never in HTTP/2. `te` is handled apart (only "trailers" may pass).
CONNECTION_SPECIFIC: Final = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})
_REQUEST_SPECIAL: Final = CONNECTION_SPECIFIC | {b"host", b"cookie", b"content-length", b"te", b"expect"}
_RESPONSE_SPECIAL: Final = CONNECTION_SPECIFIC | {b"content-length", b"te"}
_TRAILER_SPECIAL: Final = CONNECTION_SPECIFIC | {b"content-length", b"te", b"host", b"trailer"}
_STRIP_OUT: Final = CONNECTION_SPECIFIC | {b"host", b"http2-settings"}
# Never indexed by our HPACK encoder (as h2's normalisation does): a compression oracle must
# not learn them. Short cookies too (RFC 7541 §7.1.3).
_SENSITIVE: Final = frozenset({b"authorization", b"proxy-authorization"})

# Request kinds a stream keeps for its response (what framing the response may have).
PLAIN: Final = 0
HEAD: Final = 1
CONNECT: Final = 2
EXTENDED_CONNECT: Final = 3


def _check_fields(names: list[bytes], values: list[bytes]) -> None:
    if names and _NAMES.fullmatch(b"\n".join(names)) is None:
        bad = next(n for n in names if _NAMES.fullmatch(n) is None)
        raise Malformed(f"invalid field name {bad!r}")
    if values:
        joined = b"\n".join(values)
        if _BAD_VALUES.search(joined) is not None or joined.count(b"\n") != len(values) - 1:
            raise Malformed("invalid field value (control character or surrounding whitespace)")


def _content_length(value: bytes, previous: int | None) -> int:
    if previous is not None:
        raise Malformed("more than one content-length")  # as the HTTP/1 codec: never merged
    if _DIGITS.fullmatch(value) is None:
        raise Malformed(f"invalid content-length {value!r}")
    return int(value)


def request_head(
    fields: list[HeaderTuple], end_stream: bool, connect_protocol: bool, max_fields: int
) -> tuple[RequestHead, bytes, bytes | None]:
    """A request's header block -> (head, scheme, :protocol). Raises Malformed.

    `connect_protocol`: we advertised SETTINGS_ENABLE_CONNECT_PROTOCOL, so `:protocol` (RFC 8441)
    is allowed. An extended CONNECT becomes what an HTTP/1 upgrade looks like (as Envoy does):
    GET of `:path` with `upgrade` set to the lowercased protocol.
    """
    method = path = scheme = authority = protocol = host = None
    headers: Headers = []
    names: list[bytes] = []
    values: list[bytes] = []
    cookies: list[bytes] | None = None
    cookie_at = 0
    content_length: int | None = None
    expect_continue = False
    if len(fields) > max_fields:
        raise Malformed(f"more than {max_fields} fields")
    for field in fields:
        name, value = field
        if name[:1] == b":":
            if names:
                raise Malformed(f"pseudo-header {name!r} after a regular field")
            if name == b":method" and method is None:
                method = value
            elif name == b":path" and path is None:
                path = value
            elif name == b":scheme" and scheme is None:
                scheme = value
            elif name == b":authority" and authority is None:
                authority = value
            elif name == b":protocol" and protocol is None and connect_protocol:
                protocol = value
            else:
                raise Malformed(f"unexpected or repeated pseudo-header {name!r}")
            continue
        names.append(name)
        values.append(value)
        if name in _REQUEST_SPECIAL:
            if name == b"cookie":
                if cookies is None:
                    cookies = [value]
                    cookie_at = len(headers)
                    headers.append(field)  # replaced by the joined value below
                else:
                    cookies.append(value)
                continue
            if name == b"host":
                if host is not None:
                    raise Malformed("more than one host")
                host = value
                if authority is not None:
                    if value != authority:
                        raise Malformed("host and :authority differ")
                    continue  # the :authority's host field (first) stands for it
            elif name == b"content-length":
                content_length = _content_length(value, content_length)
            elif name == b"te":
                if value.lower() != b"trailers":
                    raise Malformed(f"te: {value!r} (only 'trailers' is allowed)")
            elif name == b"expect":
                expect_continue = value.lower() == b"100-continue"
            else:
                raise Malformed(f"connection-specific field {name!r}")
        headers.append(field)
    _check_fields(names, values)
    if cookies is not None and len(cookies) > 1:
        headers[cookie_at] = (b"cookie", b"; ".join(cookies))  # RFC 9113 §8.2.3
    if method is None or _TOKEN.fullmatch(method) is None:
        raise Malformed(f"missing or invalid :method {method!r}")
    if authority is not None:
        if _AUTHORITY.fullmatch(authority) is None:
            raise Malformed(f"invalid :authority {authority!r}")
        headers.insert(0, (b"host", authority))
    elif host is None:
        raise Malformed("neither :authority nor host")
    upgrade = None
    chunked = False
    if method == b"CONNECT":
        if protocol is None:  # RFC 9113 §8.5: a tunnel to :authority
            if scheme is not None or path is not None or authority is None:
                raise Malformed("CONNECT takes :authority only")
            if content_length is not None:
                raise Malformed("CONNECT with content-length")
            head = RequestHead(method, authority, b"2", headers, True, False, None, False, b"connect")
            return head, b"http", None
        if scheme is None or path is None or authority is None:  # RFC 8441 §4
            raise Malformed("extended CONNECT needs :scheme, :path and :authority")
        method = b"GET"
        upgrade = protocol.lower()
        content_length = None
    elif protocol is not None:
        raise Malformed(":protocol without CONNECT")
    elif scheme is None or path is None:
        raise Malformed("missing :scheme or :path")
    elif end_stream or content_length is not None:
        pass
    else:
        chunked = True  # a body of unknown length follows: an HTTP/1 hop sends it chunked
    if scheme in _SCHEMES:
        if _PATH.fullmatch(path) is None and not (path == b"*" and method == b"OPTIONS"):
            raise Malformed(f"invalid :path {path!r}")
    elif _TOKEN.fullmatch(scheme) is None or _PATH.fullmatch(path) is None:
        raise Malformed(f"invalid :scheme {scheme!r} or :path {path!r}")
    if end_stream and content_length:
        raise Malformed("content-length with no body")
    head = RequestHead(method, path, b"2", headers, True, chunked, content_length, expect_continue, upgrade)
    return head, scheme, protocol


def response_head(fields: list[HeaderTuple], end_stream: bool, kind: int, max_fields: int) -> ResponseHead:
    """A response's header block -> ResponseHead (1xx included). Raises Malformed.

    `kind`: the request's (PLAIN, HEAD, CONNECT, EXTENDED_CONNECT). A 2xx to an extended CONNECT
    becomes the 101 an HTTP/1 client of the upgrade waits for.
    """
    if len(fields) > max_fields:
        raise Malformed(f"more than {max_fields} fields")
    if not fields or fields[0][0] != b":status":
        raise Malformed("the first field is not :status")
    raw = fields[0][1]
    if len(raw) != 3 or not raw.isdigit() or not 100 <= int(raw) <= 599:
        raise Malformed(f"invalid :status {raw!r}")
    status = int(raw)
    headers: Headers = []
    names: list[bytes] = []
    values: list[bytes] = []
    content_length: int | None = None
    for i in range(1, len(fields)):
        field = fields[i]
        name, value = field
        if name in _RESPONSE_SPECIAL:
            if name == b"content-length":
                content_length = _content_length(value, content_length)
            elif name != b"te":
                raise Malformed(f"connection-specific field {name!r}")
            else:
                continue  # te means nothing in a response: dropped
        elif name[:1] == b":":
            raise Malformed(f"unexpected pseudo-header {name!r}")
        names.append(name)
        values.append(value)
        headers.append(field)
    _check_fields(names, values)
    if status == 101:
        raise Malformed("101 is not allowed in HTTP/2 (RFC 9113 §8.6)")
    if status < 200:
        if end_stream:
            raise Malformed("an informational response ends the stream")
        return ResponseHead(status, b"", b"2", headers, True, False, content_length)
    no_body = kind == HEAD or status == 204 or status == 304
    if no_body:
        chunked = False
    elif kind >= CONNECT and status < 300:
        chunked = False  # a tunnel follows, not a body
        content_length = None
        if kind == EXTENDED_CONNECT:
            status = 101
            headers.append((b"connection", b"upgrade"))
            headers.append((b"upgrade", b"websocket"))
    else:
        chunked = content_length is None and not end_stream
        if end_stream and content_length:
            raise Malformed("content-length with no body")
    return ResponseHead(status, b"", b"2", headers, True, chunked, content_length)


def trailers(fields: list[HeaderTuple], max_fields: int) -> Headers:
    """A trailer block -> fields. No pseudo-headers, nothing that frames or routes a message."""
    if len(fields) > max_fields:
        raise Malformed(f"more than {max_fields} fields")
    names = []
    values = []
    for name, value in fields:
        if name in _TRAILER_SPECIAL or name[:1] == b":":
            raise Malformed(f"{name!r} is not allowed in trailers")
        names.append(name)
        values.append(value)
    _check_fields(names, values)
    return fields  # type: ignore[return-value]


def _connection_named(headers: Headers) -> frozenset[bytes] | None:
    named = None
    for name, value in headers:
        if len(name) == 10 and name.lower() == b"connection":
            tokens = {t.strip().lower() for t in value.split(b",")}
            named = (named or frozenset()) | tokens
    return named


def _outbound(headers: list[Any], out: list[tuple[bytes, bytes]], keep_te: bool) -> None:
    """Append `headers` to `out` as HTTP/2 fields (see the module docstring). `list[Any]`: a
    field may be a NeverIndexedHeaderTuple, which compiled code must see as it is, not unboxed
    into a plain pair (mypyc would for a `tuple[bytes, bytes]`)."""
    drop = _STRIP_OUT
    named = _connection_named(headers)
    if named is not None:
        drop = drop | named
    for field in headers:
        name = field[0].lower()
        if name in drop:
            continue
        value = field[1]
        if name == b"te":
            # Only "trailers" may cross (RFC 9113 §8.2.2): kept from a list that has it.
            if not keep_te or b"trailers" not in [t.strip() for t in value.lower().split(b",")]:
                continue
            value = b"trailers"
        elif name in _SENSITIVE or (name == b"cookie" and len(value) < 20):
            out.append(NeverIndexedHeaderTuple(name, value))
            continue
        elif isinstance(field, NeverIndexedHeaderTuple):
            out.append(NeverIndexedHeaderTuple(name, value))  # came in never-indexed: stays so
            continue
        out.append((name, value))


def response_fields(head: ResponseHead, kind: int) -> list[tuple[bytes, bytes]]:
    """A ResponseHead -> the response's HTTP/2 fields. Raises ValueError for what HTTP/2 cannot
    carry (101 on a stream that is not an extended CONNECT)."""
    status = head.status
    if status == 101:
        if kind != EXTENDED_CONNECT:
            raise ValueError("101 cannot be sent over HTTP/2")
        status = 200  # the upgrade succeeded: RFC 8441 says so with a 2xx
    out: list[tuple[bytes, bytes]] = [(b":status", b"%d" % status)]
    if kind == EXTENDED_CONNECT and status < 300:
        headers = [f for f in cast(list[Any], head.headers) if f[0].lower() != b"sec-websocket-accept"]
    else:
        headers = head.headers
    _outbound(headers, out, False)
    return out


def trailer_fields(headers: Headers) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    _outbound(headers, out, False)
    return out


def request_fields(head: RequestHead, scheme: bytes, extended_connect: bool) -> tuple[list[tuple[bytes, bytes]], int]:
    """A RequestHead -> (the request's HTTP/2 fields, its kind). Host becomes :authority (an
    absolute-form target's authority wins, RFC 9112 §3.2.2); CONNECT carries :authority only;
    an upgrade to websocket becomes an extended CONNECT (RFC 8441) when `extended_connect` (the
    peer allows it), else ValueError."""
    method = head.method
    target = head.target
    authority = None
    for name, value in head.headers:
        if len(name) == 4 and name.lower() == b"host":
            authority = value
            break
    if method == b"CONNECT":
        out: list[tuple[bytes, bytes]] = [(b":method", b"CONNECT"), (b":authority", target)]
        _outbound(head.headers, out, False)
        return out, CONNECT
    kind = HEAD if method == b"HEAD" else PLAIN
    if target[:1] != b"/" and target != b"*":
        # absolute-form: scheme://authority/path?query
        sep = target.find(b"://")
        if sep <= 0:
            raise ValueError(f"cannot send request-target {target!r} over HTTP/2")
        scheme = target[:sep].lower()
        rest = target[sep + 3 :]
        cut = len(rest)
        for mark in (b"/", b"?"):
            at = rest.find(mark)
            if 0 <= at < cut:
                cut = at
        authority = rest[:cut]
        target = rest[cut:] or b"/"
        if target[:1] == b"?":
            target = b"/" + target
    if authority is None:
        raise ValueError("a request without Host or authority")
    upgrade = head.upgrade
    if upgrade is not None and upgrade != b"connect":
        if upgrade != b"websocket" or not extended_connect:
            raise ValueError(f"upgrade {upgrade!r} cannot be sent over this HTTP/2 connection")
        out = [(b":method", b"CONNECT"), (b":protocol", upgrade), (b":scheme", scheme), (b":path", target), (b":authority", authority)]
        headers = [f for f in cast(list[Any], head.headers) if f[0].lower() not in (b"sec-websocket-key", b"content-length")]
        _outbound(headers, out, False)
        return out, EXTENDED_CONNECT
    out = [(b":method", method), (b":scheme", scheme), (b":path", target), (b":authority", authority)]
    _outbound(head.headers, out, True)
    return out, kind
