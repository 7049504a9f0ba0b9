"""ResponseParser: bodies by Content-Length, chunked and close, HEAD/1xx/101/204/304, CONNECT,
keep-alive reuse, and refusing bytes the upstream should not have sent."""

from __future__ import annotations

import pytest

from proxy.codec.http1 import (
    Body,
    EndOfMessage,
    Limits,
    ProtocolError,
    ResponseHead,
    ResponseParser,
    Upgraded,
)
from tests.codec.helpers import messages, parse_response


def test_content_length_response():
    events = parse_response(b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 5\r\n\r\nhello")
    assert events == [
        ResponseHead(200, b"OK", b"1.1", [(b"Server", b"x"), (b"Content-Length", b"5")], True, False, 5),
        Body(b"hello"),
        EndOfMessage(),
    ]


def test_chunked_response_with_trailers():
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\ngrpc-status: 0\r\n\r\n"
    for cuts in ([], range(len(raw))):
        [m] = messages(parse_response(raw, cuts=cuts))
        assert m.head.chunked and m.body == b"abcde" and m.trailers == [(b"grpc-status", b"0")]


def test_reason_phrase_kept_or_empty():
    [head, *_] = parse_response(b"HTTP/1.1 404 Not  Found Here\r\nContent-Length: 0\r\n\r\n")
    assert head.reason == b"Not  Found Here"
    [head, *_] = parse_response(b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n")
    assert head.reason == b""
    [head, *_] = parse_response(b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n")
    assert head.reason == b""


def test_reason_split_across_feeds():
    raw = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
    [head, _] = parse_response(raw, cuts=range(len(raw)))
    assert head.reason == b"Service Unavailable"


# --- close-delimited --------------------------------------------------------------------------


def test_close_delimited_body():
    p = ResponseParser()
    p.start(b"GET")
    [head, body] = p.feed(b"HTTP/1.1 200 OK\r\n\r\nabc")
    assert head.keep_alive is False and head.content_length is None and not head.chunked
    assert body == Body(b"abc")
    assert p.feed(b"def") == [Body(b"def")]
    assert p.feed_eof() == [EndOfMessage()]
    assert p.feed_eof() == []


def test_http10_response_without_length_is_close_delimited():
    events = parse_response(b"HTTP/1.0 200 OK\r\n\r\nold", eof=True)
    [m] = messages(events)
    assert m.head.http_version == b"1.0" and not m.head.keep_alive and m.body == b"old" and m.complete


def test_close_delimited_empty_body():
    assert parse_response(b"HTTP/1.1 200 OK\r\n\r\n", eof=True)[1:] == [EndOfMessage()]


@pytest.mark.parametrize(
    "partial",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
        b"HTTP/1.1 200 OK\r\nContent-",
        b"HTTP/1.1 200 OK\r\n",
    ],
)
def test_eof_mid_response(partial):
    p = ResponseParser()
    p.start(b"GET")
    p.feed(partial)
    with pytest.raises(ProtocolError) as e:
        p.feed_eof()
    assert (e.value.status, e.value.code) == (502, "incomplete")


def test_eof_before_any_response_byte():
    p = ResponseParser()
    p.start(b"GET")
    assert p.feed_eof() == []  # no message in progress: the caller knows it got no head


# --- keep-alive reuse -------------------------------------------------------------------------


def test_reuse_across_keep_alive_responses():
    p = ResponseParser()
    for i, method in enumerate([b"GET", b"HEAD", b"POST", b"GET", b"HEAD", b"GET"]):
        p.start(method)
        body = b"x" * i
        raw = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
        if method != b"HEAD":
            raw += body
        [m] = messages(p.feed(raw))
        assert m.complete and m.head.keep_alive
        assert m.body == (b"" if method == b"HEAD" else body)


def test_start_while_response_outstanding():
    p = ResponseParser()
    p.start(b"GET")
    p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
    with pytest.raises(RuntimeError):
        p.start(b"GET")


def test_connection_close_response_then_new_parser_state():
    p = ResponseParser()
    p.start(b"GET")
    [head, _body, _eom] = p.feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx")
    assert head.keep_alive is False


# --- no body: HEAD, 204, 304 ------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [b"Content-Length: 1234\r\n", b"Transfer-Encoding: chunked\r\n", b"", b"Content-Length: 0\r\n"],
)
def test_head_response_has_no_body(headers):
    raw = b"HTTP/1.1 200 OK\r\n" + headers + b"\r\n"
    events = parse_response(raw, method=b"HEAD")
    assert [type(e) for e in events] == [ResponseHead, EndOfMessage]
    assert events[0].keep_alive is True  # no body to delimit by close
    if headers.startswith(b"Content-Length: 1234"):
        assert events[0].content_length == 1234  # describes the GET representation


def test_head_response_then_next_response_on_same_parser():
    p = ResponseParser()
    p.start(b"HEAD")
    assert len(p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")) == 2
    p.start(b"GET")
    [m] = messages(p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    assert m.body == b"ok" and m.complete


def test_head_response_http10_keep_alive():
    [head, _] = parse_response(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 9\r\n\r\n", method=b"HEAD")
    assert head.keep_alive
    [head, _] = parse_response(b"HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\n", method=b"HEAD")
    assert not head.keep_alive
    [head, _] = parse_response(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", method=b"HEAD")
    assert not head.keep_alive


@pytest.mark.parametrize("status", [204, 304])
def test_204_304_have_no_body(status):
    p = ResponseParser()
    p.start(b"GET")
    raw = b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status
    events = p.feed(raw)
    assert [type(e) for e in events] == [ResponseHead, EndOfMessage]
    assert events[0].keep_alive
    p.start(b"GET")
    assert len(p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")) == 2


# --- 1xx and 101 ------------------------------------------------------------------------------


def test_interim_responses_then_final():
    raw = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 102 Processing\r\n\r\n"
        b"HTTP/1.1 150 Custom\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    for cuts in ([], range(len(raw))):
        events = parse_response(raw, cuts=cuts)
        heads = [e for e in events if isinstance(e, ResponseHead)]
        assert [h.status for h in heads] == [100, 103, 102, 150, 200]
        assert heads[1].headers == [(b"Link", b"</a.css>; rel=preload")]
        assert sum(isinstance(e, EndOfMessage) for e in events) == 1
        final = messages(events)[-1]
        assert final.head.status == 200 and final.body == b"ok" and final.complete


def test_interim_then_eof_is_not_mid_message():
    p = ResponseParser()
    p.start(b"POST")
    [interim] = p.feed(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert interim.status == 100
    assert p.feed_eof() == []


def test_101_switching_protocols():
    p = ResponseParser()
    p.start(b"GET")
    head, up = p.feed(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x02hi")
    assert head.status == 101 and up == Upgraded(b"\x81\x02hi")
    assert p.feed(b"more") == [Upgraded(b"more")]
    assert p.feed_eof() == []


def test_101_after_100():
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
    events = parse_response(raw)
    assert [type(e) for e in events] == [ResponseHead, ResponseHead, Upgraded]
    assert events[-1] == Upgraded(b"")


# --- CONNECT ----------------------------------------------------------------------------------


def test_connect_2xx_is_a_tunnel():
    p = ResponseParser()
    p.start(b"CONNECT")
    head, up = p.feed(b"HTTP/1.1 200 Connection Established\r\n\r\n\x16\x03\x03")
    assert head.status == 200 and not head.keep_alive and up == Upgraded(b"\x16\x03\x03")
    assert p.feed(b"x") == [Upgraded(b"x")]


def test_connect_2xx_head_alone():
    p = ResponseParser()
    p.start(b"CONNECT")
    assert p.feed(b"HTTP/1.1 200 OK\r\n") == []
    head, up = p.feed(b"\r\n")
    assert up == Upgraded(b"")


def test_connect_refused_is_a_normal_response():
    [m] = messages(parse_response(b"HTTP/1.1 407 Auth\r\nContent-Length: 2\r\n\r\nno", method=b"CONNECT"))
    assert m.head.status == 407 and m.body == b"no" and m.complete and m.upgraded is None


# --- bytes the upstream should not have sent --------------------------------------------------


def test_data_before_start():
    p = ResponseParser()
    with pytest.raises(ProtocolError) as e:
        p.feed(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    assert (e.value.status, e.value.code) == (502, "data_after_response")


def test_extra_response_after_the_awaited_one_keeps_the_good_one():
    p = ResponseParser()
    p.start(b"GET")
    with pytest.raises(ProtocolError) as e:
        p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert e.value.code == "data_after_response"
    [m] = messages(e.value.events)
    assert m.body == b"ok" and m.complete


@pytest.mark.parametrize(
    "headers",
    [b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n", b""],
)
def test_body_after_head_response_is_refused(headers):
    p = ResponseParser()
    p.start(b"HEAD")
    body = b"3\r\nabc\r\n0\r\n\r\n" if b"chunked" in headers else b"abc"
    with pytest.raises(ProtocolError) as e:
        p.feed(b"HTTP/1.1 200 OK\r\n" + headers + b"\r\n" + body)
    assert e.value.code == "data_after_response"
    assert [type(ev) for ev in e.value.events] == [ResponseHead, EndOfMessage]


def test_empty_chunked_body_after_head_response_is_refused():
    p = ResponseParser()
    p.start(b"HEAD")
    with pytest.raises(ProtocolError):
        p.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")


def test_body_after_head_response_in_a_later_feed():
    p = ResponseParser()
    p.start(b"HEAD")
    assert len(p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n")) == 2
    with pytest.raises(ProtocolError) as e:
        p.feed(b"abc")
    assert e.value.events == []


# --- limits -----------------------------------------------------------------------------------


def test_response_limits_map_to_502():
    with pytest.raises(ProtocolError) as e:
        parse_response(b"HTTP/1.1 200 OK\r\nX: " + b"v" * 200 + b"\r\n\r\n", limits=Limits(max_header_bytes=100))
    assert (e.value.status, e.value.code) == (502, "header_too_large")
    with pytest.raises(ProtocolError) as e:
        parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n", limits=Limits(max_body_bytes=10))
    assert (e.value.status, e.value.code) == (502, "body_too_large")
    with pytest.raises(ProtocolError) as e:
        parse_response(b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 11, limits=Limits(max_body_bytes=10))
    assert (e.value.status, e.value.code) == (502, "body_too_large")
    with pytest.raises(ProtocolError) as e:
        parse_response(b"HTTP/1.1 200 " + b"r" * 200, limits=Limits(max_header_bytes=100))
    assert (e.value.status, e.value.code) == (502, "header_too_large")
