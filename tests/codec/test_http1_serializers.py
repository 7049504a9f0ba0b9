"""Serialisers and header helpers: heads to bytes, chunks, hop-by-hop stripping."""

from __future__ import annotations

import pytest

from proxy.codec.http1 import (
    HOP_BY_HOP,
    RequestHead,
    ResponseHead,
    chunk,
    header_value,
    last_chunk,
    request_head_bytes,
    response_head_bytes,
    response_head_bytes_11,
    strip_hop_by_hop,
)
from tests.codec.helpers import messages, parse_requests, parse_response


def _req(headers, method=b"GET", target=b"/x?y=1", version=b"1.1"):
    return RequestHead(method, target, version, headers, True, False, None, False, None)


def test_request_head_bytes_exact():
    head = _req([(b"Host", b"h"), (b"x-Mixed-Case", b"a  b"), (b"Empty", b""), (b"Host", b"dup")])
    assert request_head_bytes(head) == (
        b"GET /x?y=1 HTTP/1.1\r\nHost: h\r\nx-Mixed-Case: a  b\r\nEmpty: \r\nHost: dup\r\n\r\n"
    )


def test_request_head_bytes_adds_nothing():
    assert request_head_bytes(_req([], version=b"1.0")) == b"GET /x?y=1 HTTP/1.0\r\n\r\n"


def test_request_head_round_trip():
    raw = b"POST http://e.com/a HTTP/1.1\r\nHost: e.com\r\nContent-Length: 3\r\nX: y\r\n\r\n"
    [head, *_] = parse_requests(raw + b"abc")
    assert request_head_bytes(head) == raw


@pytest.mark.parametrize(
    ("status", "reason", "expected"),
    [
        (200, b"OK", b"HTTP/1.1 200 OK\r\n"),
        (200, b"", b"HTTP/1.1 200 OK\r\n"),
        (404, b"", b"HTTP/1.1 404 Not Found\r\n"),
        (418, b"", b"HTTP/1.1 418 I'm a Teapot\r\n"),
        (502, b"Custom  Reason", b"HTTP/1.1 502 Custom  Reason\r\n"),
        (299, b"", b"HTTP/1.1 299 Unknown\r\n"),
        (599, b"", b"HTTP/1.1 599 Unknown\r\n"),
    ],
)
def test_response_head_always_has_a_reason(status, reason, expected):
    out = response_head_bytes(ResponseHead(status, reason, b"1.1", [], True, False, None))
    assert out == expected + b"\r\n"


@pytest.mark.parametrize("status, reason", [(200, b""), (200, b"Fine"), (204, b""), (599, b""), (101, b"Switching")])
@pytest.mark.parametrize("headers", [[], [(b"Server", b"p"), (b"Content-Length", b"2"), (b"x", b"")]])
def test_response_head_bytes_11_is_response_head_bytes_without_the_object(status, reason, headers):
    head = ResponseHead(status, reason, b"1.1", headers, True, False, None)
    assert response_head_bytes_11(status, reason, headers) == response_head_bytes(head)


def test_response_head_bytes_with_headers_round_trip():
    head = ResponseHead(200, b"", b"1.0", [(b"Server", b"p"), (b"Content-Length", b"2")], False, False, 2)
    raw = response_head_bytes(head)
    assert raw == b"HTTP/1.0 200 OK\r\nServer: p\r\nContent-Length: 2\r\n\r\n"
    [m] = messages(parse_response(raw + b"ok"))
    assert m.head.headers == head.headers and m.body == b"ok"


@pytest.mark.parametrize(
    "headers",
    [
        [(b"X", b"a\r\nInjected: 1")],
        [(b"X", b"a\nInjected: 1")],
        [(b"X", b"a\rb")],
        [(b"X\r\nInjected", b"1")],
    ],
)
def test_cr_or_lf_in_a_field_is_refused(headers):
    with pytest.raises(ValueError):
        request_head_bytes(_req(headers))
    with pytest.raises(ValueError):
        response_head_bytes(ResponseHead(200, b"OK", b"1.1", headers, True, False, None))
    with pytest.raises(ValueError):
        response_head_bytes_11(200, b"OK", headers)
    with pytest.raises(ValueError):
        last_chunk(headers)


def test_cr_lf_in_target_or_reason_is_refused():
    with pytest.raises(ValueError):
        request_head_bytes(_req([], target=b"/a HTTP/1.1\r\nX: y"))
    with pytest.raises(ValueError):
        response_head_bytes(ResponseHead(200, b"OK\r\nX: y", b"1.1", [], True, False, None))
    with pytest.raises(ValueError):
        response_head_bytes_11(200, b"OK\r\nX: y", [])


def test_chunk():
    assert chunk(b"") == b""
    assert chunk(b"abc") == b"3\r\nabc\r\n"
    assert chunk(b"x" * 255) == b"ff\r\n" + b"x" * 255 + b"\r\n"
    assert chunk(memoryview(b"ab")) == b"2\r\nab\r\n"


def test_last_chunk():
    assert last_chunk() == b"0\r\n\r\n"
    assert last_chunk([]) == b"0\r\n\r\n"
    assert last_chunk([(b"grpc-status", b"0"), (b"X", b"y")]) == b"0\r\ngrpc-status: 0\r\nX: y\r\n\r\n"


def test_chunks_round_trip_through_the_parser():
    head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    parts = [b"a", b"", b"b" * 300, b"c" * 17]
    raw = head + b"".join(map(chunk, parts)) + last_chunk([(b"T", b"1")])
    [m] = messages(parse_requests(raw))
    assert m.body == b"".join(parts) and m.trailers == [(b"T", b"1")]


def test_hop_by_hop_set():
    assert HOP_BY_HOP == {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade",
    }


def test_strip_hop_by_hop():
    headers = [
        (b"Host", b"h"),
        (b"Connection", b"keep-alive, X-Secret , , close"),
        (b"Keep-Alive", b"timeout=5"),
        (b"X-Secret", b"1"),
        (b"x-secret", b"2"),
        (b"TE", b"trailers"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Upgrade", b"websocket"),
        (b"Proxy-Connection", b"keep-alive"),
        (b"Trailer", b"X"),
        (b"connection", b"x-Other"),
        (b"X-Other", b"3"),
        (b"Accept", b"*/*"),
        (b"Host", b"dup"),
    ]
    original = list(headers)
    out = strip_hop_by_hop(headers)
    assert out == [(b"Host", b"h"), (b"Accept", b"*/*"), (b"Host", b"dup")]
    assert headers == original and out is not headers


def test_strip_hop_by_hop_returns_a_new_list_even_when_nothing_to_strip():
    headers = [(b"A", b"1")]
    out = strip_hop_by_hop(headers)
    assert out == headers and out is not headers


def test_header_value():
    headers = [(b"Host", b"a"), (b"X-Y", b"1"), (b"x-y", b"2"), (b"Empty", b"")]
    assert header_value(headers, b"host") == b"a"
    assert header_value(headers, b"x-y") == b"1"
    assert header_value(headers, b"empty") == b""
    assert header_value(headers, b"missing") is None
    assert header_value([], b"host") is None
