"""RequestParser: heads, bodies, trailers, keep-alive, pipelining, upgrades, limits, fragmentation."""

from __future__ import annotations

import pytest

from proxy.codec.http1 import (
    Body,
    EndOfMessage,
    Limits,
    ProtocolError,
    RequestHead,
    RequestParser,
    Upgraded,
    request_head_bytes,
)
from tests.codec.helpers import messages, parse_requests, pieces

CHUNKED_WITH_TRAILERS = (
    b"POST /upload?x=1 HTTP/1.1\r\n"
    b"Host: example.com\r\n"
    b"X-Long-Header-Name: some value with spaces\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"Trailer: X-Checksum\r\n"
    b"\r\n"
    b"5\r\nhello\r\n"
    b"1;ext=val\r\n \r\n"
    b"6\r\nworld!\r\n"
    b"0\r\n"
    b"X-Checksum: abc123\r\n"
    b"X-Other:  spaced  \r\n"
    b"\r\n"
)


def test_simple_get():
    [head, eom] = parse_requests(b"GET /a?b=1 HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n")
    assert head == RequestHead(
        method=b"GET",
        target=b"/a?b=1",
        http_version=b"1.1",
        headers=[(b"Host", b"h"), (b"Accept", b"*/*")],
        keep_alive=True,
        chunked=False,
        content_length=None,
        expect_continue=False,
        upgrade=None,
    )
    assert eom == EndOfMessage()


def test_content_length_body():
    [m] = messages(parse_requests(b"PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"))
    assert m.head.content_length == 5 and not m.head.chunked
    assert m.body == b"hello" and m.complete


def test_content_length_zero_has_no_body_events():
    events = parse_requests(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
    assert [type(e) for e in events] == [RequestHead, EndOfMessage]
    assert events[0].content_length == 0


def test_chunked_body_and_trailers():
    [m] = messages(parse_requests(CHUNKED_WITH_TRAILERS))
    assert m.head.chunked and m.head.content_length is None
    assert m.body == b"hello world!"
    assert m.trailers == [(b"X-Checksum", b"abc123"), (b"X-Other", b"spaced")]


def test_header_names_keep_case_and_values_lose_ows():
    [head, _] = parse_requests(b"GET / HTTP/1.1\r\nhOsT:   h  \r\nX-Empty:\r\nX-Tab:\tv\t\r\nX-In: a  b\tc\r\n\r\n")
    assert head.headers == [(b"hOsT", b"h"), (b"X-Empty", b""), (b"X-Tab", b"v"), (b"X-In", b"a  b\tc")]


def test_duplicate_headers_kept_in_order():
    [head, _] = parse_requests(b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\na: 3\r\n\r\n")
    assert head.headers == [(b"Host", b"h"), (b"A", b"1"), (b"B", b"2"), (b"a", b"3")]


def test_obs_text_in_value_is_kept():
    [head, _] = parse_requests(b"GET / HTTP/1.1\r\nHost: h\r\nX: caf\xc3\xa9 \xff\r\n\r\n")
    assert head.headers[1] == (b"X", b"caf\xc3\xa9 \xff")


@pytest.mark.parametrize(
    "target",
    [b"/", b"/a/b?c=d&e=%20f", b"http://example.com/x", b"http://u@example.com:8080/x?y#z", b"/a#frag"],
)
def test_targets_are_raw(target):
    [head, _] = parse_requests(b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n")
    assert head.target == target


def test_options_star():
    [head, _] = parse_requests(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n")
    assert head.method == b"OPTIONS" and head.target == b"*"


# --- keep-alive -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        (b"1.1", None, True),
        (b"1.1", b"close", False),
        (b"1.1", b"Close", False),
        (b"1.1", b"keep-alive, close", False),
        (b"1.1", b"keep-alive", True),
        (b"1.0", None, False),
        (b"1.0", b"keep-alive", True),
        (b"1.0", b"Keep-Alive", True),
        (b"1.0", b"close", False),
    ],
)
def test_keep_alive(version, connection, keep_alive):
    conn = b"Connection: " + connection + b"\r\n" if connection else b""
    [head, _] = parse_requests(b"GET / HTTP/" + version + b"\r\nHost: h\r\n" + conn + b"\r\n")
    assert head.http_version == version
    assert head.keep_alive is keep_alive


def test_bytes_after_connection_close_are_ignored():
    p = RequestParser()
    events = p.feed(b"GET /1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert [type(e) for e in events] == [RequestHead, EndOfMessage]
    assert p.feed(b"GET /3 HTTP/1.1\r\n\r\n") == []
    p.feed_eof()  # not an error: the message ended


def test_keep_alive_over_several_feeds():
    p = RequestParser()
    seen = []
    for i in range(5):
        req = b"POST /%d HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nab%d" % (i, i)
        for part in pieces(req, [7, 20, len(req) - 2]):
            seen.extend(p.feed(part))
    ms = messages(seen)
    assert [m.head.target for m in ms] == [b"/%d" % i for i in range(5)]
    assert [m.body for m in ms] == [b"ab%d" % i for i in range(5)]
    assert all(m.complete for m in ms)
    p.feed_eof()


def test_three_pipelined_requests_in_one_feed():
    data = (
        b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nbody"
        b"PUT /3 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    )
    events = RequestParser().feed(data)
    ms = messages(events)
    assert [(m.head.method, m.head.target, m.body, m.complete) for m in ms] == [
        (b"GET", b"/1", b"", True),
        (b"POST", b"/2", b"body", True),
        (b"PUT", b"/3", b"hi", True),
    ]


def test_leading_empty_lines_between_requests_are_skipped():
    # RFC 9112 §2.2: a server SHOULD ignore at least one empty line before a request-line.
    ms = messages(parse_requests(b"\r\nGET /1 HTTP/1.1\r\nHost: h\r\n\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"))
    assert [m.head.target for m in ms] == [b"/1", b"/2"]


# --- Expect -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "expect", "flag"),
    [
        (b"1.1", b"100-continue", True),
        (b"1.1", b"100-Continue", True),
        (b"1.1", b"something-else", False),
        (b"1.0", b"100-continue", False),  # RFC 9110 §10.1.1: ignored in HTTP/1.0
    ],
)
def test_expect_continue(version, expect, flag):
    data = b"POST / HTTP/" + version + b"\r\nHost: h\r\nContent-Length: 3\r\nExpect: " + expect + b"\r\n\r\n"
    [head] = RequestParser().feed(data)
    assert head.expect_continue is flag


def test_expect_continue_head_arrives_before_the_body():
    p = RequestParser()
    [head] = p.feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    assert head.expect_continue
    assert p.feed(b"abc") == [Body(b"abc"), EndOfMessage()]


# --- upgrades and CONNECT ---------------------------------------------------------------------


def test_websocket_upgrade_with_leftover():
    data = (
        b"GET /chat HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n\x81\x05hello"
    )
    p = RequestParser()
    head, up = p.feed(data)
    assert head.upgrade == b"websocket"
    assert up == Upgraded(b"\x81\x05hello")
    assert p.feed(b"more") == [Upgraded(b"more")]
    assert p.feed(b"") == []
    p.feed_eof()


def test_upgrade_head_split_from_leftover():
    p = RequestParser()
    assert p.feed(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: h2c\r\n") == []
    head, up = p.feed(b"\r\n")
    assert head.upgrade == b"h2c" and up == Upgraded(b"")


def test_upgrade_header_without_connection_upgrade_is_a_plain_request():
    [head, eom] = parse_requests(b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n")
    assert head.upgrade is None and eom == EndOfMessage()


def test_connect():
    p = RequestParser()
    head, up = p.feed(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01")
    assert head.method == b"CONNECT" and head.target == b"example.com:443" and head.upgrade == b"connect"
    assert up == Upgraded(b"\x16\x03\x01")


def test_upgrade_with_body_is_parsed_as_a_plain_request():
    # curl --http2 -d x http://...: Upgrade: h2c on a POST. We do not switch after a body.
    data = (
        b"POST /p HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    for cuts in ([], [len(data) - 40], [len(data) - 33], range(len(data))):
        ms = messages(parse_requests(data, cuts))
        assert [(m.head.target, m.head.upgrade, m.body, m.complete) for m in ms] == [
            (b"/p", None, b"hello", True),
            (b"/next", None, b"", True),
        ]


def test_chunked_upgrade_with_body_is_parsed_as_a_plain_request():
    data = (
        b"POST /p HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: h2c\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nT: 1\r\n\r\nGET /next HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    ms = messages(parse_requests(data))
    assert [(m.head.target, m.head.upgrade, m.body, m.trailers) for m in ms] == [
        (b"/p", None, b"hello", [(b"T", b"1")]),
        (b"/next", None, b"", []),
    ]


def test_upgrade_with_body_and_connection_close_stops_after_it():
    data = (
        b"POST /p HTTP/1.0\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: h2c\r\nContent-Length: 2\r\n\r\nhi"
        b"GET /ignored HTTP/1.1\r\n\r\n"
    )
    ms = messages(parse_requests(data))
    assert [(m.head.target, m.head.keep_alive, m.body, m.complete) for m in ms] == [(b"/p", False, b"hi", True)]


def test_error_after_declined_upgrade_keeps_complete_messages():
    first = b"GET /0 HTTP/1.1\r\nHost: h\r\n\r\n"
    declined = b"POST /p HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: h2c\r\nContent-Length: 2\r\n\r\n"
    with pytest.raises(ProtocolError) as e:  # garbage in the next request: both before it survive
        RequestParser().feed(first + declined + b"hiBAD / HTTP/1.1\r\n\r\n")
    assert [(m.head.target, m.body, m.complete) for m in messages(e.value.events)] == [
        (b"/0", b"", True),
        (b"/p", b"hi", True),
    ]
    chunked = declined.replace(b"Content-Length: 2", b"Transfer-Encoding: chunked")
    with pytest.raises(ProtocolError) as e:  # garbage in the declined request's own body
        RequestParser().feed(first + chunked + b"zz\r\n")
    assert [m.head.target for m in messages(e.value.events)] == [b"/0"]


def test_http10_upgrade_is_ignored():
    data = b"GET / HTTP/1.0\r\nHost: h\r\nConnection: upgrade, keep-alive\r\nUpgrade: websocket\r\n\r\nGET /2 HTTP/1.0\r\n\r\n"
    ms = messages(parse_requests(data))
    assert [(m.head.target, m.head.upgrade, m.complete) for m in ms] == [(b"/", None, True), (b"/2", None, True)]


def test_body_limit_applies_after_declined_upgrade():
    data = b"POST / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: h2c\r\nTransfer-Encoding: chunked\r\n\r\n"
    p = RequestParser(Limits(max_body_bytes=4))
    [head] = p.feed(data)
    assert p.feed(b"3\r\nabc\r\n") == [Body(b"abc")]
    with pytest.raises(ProtocolError) as e:
        p.feed(b"3\r\ndef\r\n")
    assert e.value.status == 413


# --- fragmentation ----------------------------------------------------------------------------


def test_every_single_split_gives_the_same_message():
    expected = messages(parse_requests(CHUNKED_WITH_TRAILERS))
    for i in range(1, len(CHUNKED_WITH_TRAILERS)):
        assert messages(parse_requests(CHUNKED_WITH_TRAILERS, [i])) == expected, i


def test_byte_by_byte():
    data = CHUNKED_WITH_TRAILERS + b"GET /2 HTTP/1.1\r\nHost: h\r\nX-Y: z\r\n\r\n"
    expected = messages(parse_requests(data))
    assert len(expected) == 2
    assert messages(parse_requests(data, range(len(data)))) == expected


def test_url_split_across_feeds():
    target = b"/" + b"a" * 3000 + b"?q=" + b"b" * 3000
    data = b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n"
    [head, _] = parse_requests(data, range(0, len(data), 97))
    assert head.target == target


# --- feed_eof ---------------------------------------------------------------------------------


def test_eof_between_messages_is_fine():
    p = RequestParser()
    p.feed_eof()
    p = RequestParser()
    p.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n\r\n")
    p.feed_eof()


@pytest.mark.parametrize(
    "partial",
    [
        b"G",
        b"GET / HTTP/1.1\r\nHost: h\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    ],
)
def test_eof_mid_message(partial):
    p = RequestParser()
    p.feed(partial)
    with pytest.raises(ProtocolError) as e:
        p.feed_eof()
    assert (e.value.status, e.value.code) == (400, "incomplete")
    assert str(e.value) == "connection closed in the middle of a request"


# --- limits -----------------------------------------------------------------------------------


def test_request_line_limit_is_exact():
    limits = Limits(max_request_line=100)
    # "GET " + target + " HTTP/1.1" == 100 bytes
    target = b"/" + b"a" * (100 - 4 - 9 - 1)
    [head, _] = parse_requests(b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n", limits=limits)
    assert head.target == target
    with pytest.raises(ProtocolError) as e:
        parse_requests(b"GET " + target + b"a HTTP/1.1\r\nHost: h\r\n\r\n", limits=limits)
    assert (e.value.status, e.value.code) == (414, "uri_too_long")


def test_huge_url_is_refused_while_streaming():
    p = RequestParser()
    p.feed(b"GET /")
    with pytest.raises(ProtocolError) as e:
        for _ in range(100):
            p.feed(b"a" * 1000)
    assert e.value.status == 414


def test_header_count_limit():
    head = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(10))
    [req, _] = parse_requests(head + b"\r\n", limits=Limits(max_header_count=10))
    assert len(req.headers) == 10
    with pytest.raises(ProtocolError) as e:
        parse_requests(head + b"Y: 1\r\n\r\n", limits=Limits(max_header_count=10))
    assert (e.value.status, e.value.code) == (431, "too_many_headers")


@pytest.mark.parametrize("cuts", [[], [30], "bytes"])
def test_header_bytes_limit(cuts):
    limits = Limits(max_header_bytes=1000)
    ok = b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"v" * 900 + b"\r\n\r\n"
    bad = b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"v" * 1000 + b"\r\n\r\n"
    for data, fine in ((ok, True), (bad, False)):
        c = range(len(data)) if cuts == "bytes" else cuts
        if fine:
            parse_requests(data, c, limits=limits)
        else:
            with pytest.raises(ProtocolError) as e:
                parse_requests(data, c, limits=limits)
            assert (e.value.status, e.value.code) == (431, "header_too_large")


def test_endless_header_value_is_cut_off():
    # httptools buffers an unfinished value where we cannot see it; feeds must still be bounded.
    p = RequestParser(Limits(max_header_bytes=4096))
    p.feed(b"GET / HTTP/1.1\r\nX: ")
    with pytest.raises(ProtocolError) as e:
        for _ in range(10):
            p.feed(b"a" * 1000)
    assert e.value.status == 431


def test_many_small_headers_in_one_large_feed():
    data = b"GET / HTTP/1.1\r\n" + b"A: b\r\n" * 50 + b"\r\n"
    with pytest.raises(ProtocolError) as e:
        parse_requests(data, limits=Limits(max_header_bytes=200, max_header_count=1000))
    assert e.value.status == 431


def test_endless_trailer_is_cut_off():
    p = RequestParser(Limits(max_header_bytes=4096))
    p.feed(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: ")
    with pytest.raises(ProtocolError) as e:
        for _ in range(10):
            p.feed(b"a" * 1000)
    assert e.value.status == 431


def test_content_length_over_body_limit_is_refused_at_head_time():
    with pytest.raises(ProtocolError) as e:
        parse_requests(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n", limits=Limits(max_body_bytes=10))
    assert (e.value.status, e.value.code) == (413, "body_too_large")
    assert e.value.events == []
    [m] = messages(
        parse_requests(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789", limits=Limits(max_body_bytes=10))
    )
    assert m.body == b"0123456789"


def test_chunked_total_over_body_limit():
    p = RequestParser(Limits(max_body_bytes=10))
    [head, body] = p.feed(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n")
    assert head.chunked and body == Body(b"abcdef")
    with pytest.raises(ProtocolError) as e:
        p.feed(b"5\r\nghijk\r\n0\r\n\r\n")
    assert (e.value.status, e.value.code) == (413, "body_too_large")
    assert e.value.events == []  # nothing more of the refused request


def test_error_is_sticky():
    p = RequestParser()
    with pytest.raises(ProtocolError) as first:
        p.feed(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n")
    with pytest.raises(ProtocolError) as again:
        p.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert again.value is first.value
    p.feed_eof()  # already dead: nothing more to say


def test_multiple_spaces_in_request_line_are_normalised():
    # llhttp accepts them (RFC 9112 §3 allows it); they cannot travel past request_head_bytes.
    [head, _] = parse_requests(b"GET  /a  HTTP/1.1\r\nHost: h\r\n\r\n")
    assert request_head_bytes(head) == b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
