"""HTTP/1.1 codec, sans-IO: the bytes of one connection in, message events out; heads back to bytes.

    RequestParser.feed(data)  -> [RequestHead, Body, ..., EndOfMessage, RequestHead, ...]
    ResponseParser.start(method); .feed(data) -> [ResponseHead(1xx), ..., ResponseHead, Body, ..., EndOfMessage]

Parsing is llhttp (through httptools) in its default strict mode. This module turns its callbacks
into a flat event list and adds the checks llhttp leaves to its caller. Framing is where request
smuggling lives, so whatever two parsers could read differently is refused, never guessed at.

llhttp itself refuses: Content-Length together with Transfer-Encoding; any second Content-Length,
identical or not (stricter than Envoy's merge; RFC 9112 §6.3 allows either); a Content-Length that
is not 1*DIGIT or overflows; a request Transfer-Encoding whose last coding is not chunked, and
"chunked" twice; bad chunk sizes, chunk extensions and CRLFs; obs-fold; whitespace before the
colon; CTLs, NUL, DEL, bare CR and bare LF in fields; unknown or lowercase methods; bad URL bytes;
versions other than 0.9, 1.0, 1.1 and 2.0; data after a `Connection: close` message.

We add: Transfer-Encoding must be exactly "chunked" (other codings ending in chunked -> 501, the
rest -> 400); no Transfer-Encoding in HTTP/1.0; HTTP/2.0 (505) and HTTP/0.9 (400); more than one
Host; a CONNECT with body framing; the Limits (414/431/413). Upstream (all 502): status codes
outside 100..599, CTLs in a reason phrase, 1xx responses with body framing, 101 without Upgrade,
body framing on a 2xx to CONNECT, and any byte after the response we were waiting for.

Kept on purpose: llhttp accepts several SP between the request-line parts and an `RTSP/1.0`
version. httptools exposes no byte offsets, so neither is visible here, and neither can travel:
request_head_bytes re-serialises the line with single SP and `HTTP/1.x`.

Two things llhttp decides that httptools will not let us change, and how we cope: a HEAD response's
body (none, whatever Content-Length says) is handled by finishing the message ourselves and starting
a fresh llhttp parser for the next response; an Upgrade request we decline (HTTP/1.0, or one that
carries a body) has already paused llhttp, so a fresh parser carries on from the bytes after the
head, fed a synthetic head first when the request's body is still to come.

Layout: _http1_events (events, ProtocolError, Limits), _http1_write (serialisers, hop-by-hop
helpers), this module (the two parsers); everything public is re-exported here.
"""

from __future__ import annotations

import re
from typing import ClassVar, NoReturn

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserInvalidMethodError,
    HttpParserInvalidURLError,
    HttpParserUpgrade,
    HttpRequestParser,
    HttpResponseParser,
)

from proxy.codec._http1_events import Body as Body
from proxy.codec._http1_events import EndOfMessage as EndOfMessage
from proxy.codec._http1_events import Event as Event
from proxy.codec._http1_events import Headers as Headers
from proxy.codec._http1_events import Limits as Limits
from proxy.codec._http1_events import ProtocolError as ProtocolError
from proxy.codec._http1_events import RequestHead as RequestHead
from proxy.codec._http1_events import ResponseHead as ResponseHead
from proxy.codec._http1_events import Upgraded as Upgraded
from proxy.codec._http1_write import HOP_BY_HOP as HOP_BY_HOP
from proxy.codec._http1_write import chunk as chunk
from proxy.codec._http1_write import header_value as header_value
from proxy.codec._http1_write import last_chunk as last_chunk
from proxy.codec._http1_write import request_head_bytes as request_head_bytes
from proxy.codec._http1_write import response_head_bytes as response_head_bytes
from proxy.codec._http1_write import response_head_bytes_11 as response_head_bytes_11
from proxy.codec._http1_write import strip_hop_by_hop as strip_hop_by_hop

__all__ = [
    "HOP_BY_HOP",
    "Body",
    "EndOfMessage",
    "Event",
    "Headers",
    "Limits",
    "ProtocolError",
    "RequestHead",
    "RequestParser",
    "ResponseHead",
    "ResponseParser",
    "Upgraded",
    "chunk",
    "header_value",
    "last_chunk",
    "request_head_bytes",
    "response_head_bytes",
    "response_head_bytes_11",
    "strip_hop_by_hop",
]

# The common end of a message, shared: events are values, and this one would be built per request.
_EOM = EndOfMessage()


# --- shared parser machinery ------------------------------------------------------------------

_VERSIONS = {"1.1": b"1.1", "1.0": b"1.0"}
_OWS = (0x20, 0x09)  # llhttp strips leading OWS from a value but keeps trailing OWS
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_REASON = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_REQUEST_SPECIAL = frozenset({b"host", b"content-length", b"transfer-encoding", b"expect", b"upgrade"})
_RESPONSE_SPECIAL = frozenset({b"content-length", b"transfer-encoding", b"connection"})


def _transfer_coding_error(te: bytes, status: int) -> ProtocolError | None:
    """None when Transfer-Encoding means exactly `chunked` (empty list elements allowed)."""
    if te.lower() == b"chunked":
        return None
    codings = [c.strip().lower() for c in te.split(b",")]
    codings = [c for c in codings if c]
    if codings == [b"chunked"]:
        return None
    if codings and codings[-1] == b"chunked" and all(_TOKEN.fullmatch(c) for c in codings):
        # Well-formed, but we would have to decode it to forward it without TE (hop-by-hop).
        if status == 400:
            status = 501
        return ProtocolError(f"unsupported transfer coding {te!r}", status, "unsupported_transfer_coding")
    return ProtocolError(f"bad Transfer-Encoding {te!r}", status, "smuggling")


def _translate(exc: HttpParserError, status: int) -> ProtocolError:
    reason = str(exc)
    low = reason.lower()
    code = "bad_request"
    if "content-length" in low or "transfer-encoding" in low:
        code = "smuggling"
    elif "chunk" in low:
        code = "bad_chunk"
    elif isinstance(exc, HttpParserInvalidMethodError) or "method" in low:
        code = "bad_method"
    elif isinstance(exc, HttpParserInvalidURLError):
        code = "bad_target"
    elif "pri/upgrade" in low:  # the HTTP/2 connection preface on an HTTP/1 connection
        code = "version_not_supported"
        status = 505 if status == 400 else status
    elif "invalid http version" in low or "expected http/" in low:
        code = "bad_version"
    side = "request" if status != 502 else "response"
    return ProtocolError(f"malformed HTTP/1 {side}: {reason}", status, code)


def _fields_size(fields: Headers) -> int:
    return sum(len(name) + len(value) + 4 for name, value in fields)


class _Parser:
    """Callback state shared by both directions; httptools calls the on_* methods.

    Size accounting is kept off the per-field path: httptools buffers a field until it is complete
    and only then reports it, so limits are checked when the head completes and at the end of every
    feed that leaves a message unfinished, exactly when a head spans feeds or a feed is larger than
    the limit, and from the feed lengths otherwise. That never over-counts, and bounds what a peer
    can make us hold to the limit plus one feed.
    """

    _special_names: ClassVar[frozenset[bytes]]  # per direction: the names on_header hands to _special

    __slots__ = (
        "_parser",
        "_events",
        "_error",
        "_blocked",
        "_max_line",
        "_max_head",
        "_max_count",
        "_max_body",
        "_headers",
        "_fields",
        "_feed_len",
        "_head_fed",
        "_idle",
        "_fresh",
        "_msg_index",
        "_in_message",
        "_in_head",
        "_body_len",
        "_cl",
        "_te",
        "_keep_alive",
        "_upgrading",
        "_upgraded",
    )

    _STATUS = 400  # what a malformed message from this side maps to

    def _setup(self, limits: Limits) -> None:
        self._events: list[Event] = []
        self._error: ProtocolError | None = None
        self._blocked = False  # error, upgrade or close: feed() leaves the fast path
        self._max_line = limits.max_request_line
        self._max_head = limits.max_header_bytes
        self._max_count = limits.max_header_count
        self._max_body = limits.max_body_bytes
        self._headers: Headers = []
        self._fields: Headers = self._headers  # where on_header appends: headers, then trailers
        self._feed_len = 0
        self._head_fed = 0
        self._idle = 0
        self._fresh = False  # a message began during the current feed
        self._msg_index = 0
        self._in_message = False
        self._in_head = False
        self._body_len = 0
        self._cl: bytes | None = None
        self._te: bytes | None = None
        self._keep_alive = True
        self._upgrading = False
        self._upgraded = False

    # Raising inside a callback makes llhttp stop; feed() finds the real error in self._error.
    def on_header(self, name: bytes, value: bytes) -> None:
        """llhttp callback, once per complete header line: keep the field; the few names that
        decide framing (`_special_names`, per direction) go to the subclass's `_special`."""
        if value and value[-1] in _OWS:
            value = value.rstrip(b" \t")
        self._fields.append((name, value))
        lname = name.lower()
        if lname in self._special_names:
            self._special(lname, value)

    def _special(self, lname: bytes, value: bytes) -> None:
        raise NotImplementedError

    def _fail(self, err: ProtocolError) -> NoReturn:
        self._error = err
        raise err

    def _fail_after(self, err: ProtocolError) -> NoReturn:
        # The message before this junk ended cleanly: keep its events.
        self._msg_index = len(self._events)
        self._fresh = True
        self._fail(err)

    def _limit_error(self, what: str, status: int, code: str) -> ProtocolError:
        return ProtocolError(f"{what} over the limit", status if self._STATUS == 400 else 502, code)

    def _dead(self, err: ProtocolError) -> ProtocolError:
        # Only the events of messages that ended before the bad one survive.
        err.events = self._events[: self._msg_index] if self._fresh else []
        self._error = err
        self._blocked = True
        return err

    def _failure(self, exc: HttpParserError) -> ProtocolError:
        err = self._error
        if err is None:
            if isinstance(exc, HttpParserCallbackError):
                raise exc  # a bug in a callback, not the peer's fault: keep its traceback
            err = _translate(exc, self._STATUS)
        return self._dead(err)

    def _head_size(self) -> int:
        raise NotImplementedError

    def _check_head(self) -> None:
        """At headers-complete, when the cheap test in on_headers_complete cannot rule it out."""
        if len(self._headers) > self._max_count:
            self._fail(self._limit_error("header field count", 431, "too_many_headers"))
        # A head that arrived within one feed no larger than the limit cannot exceed it.
        if (not self._fresh or self._feed_len > self._max_head) and self._head_size() > self._max_head:
            self._fail(self._limit_error("header section", 431, "header_too_large"))

    def _account(self, events: list[Event], fed: int) -> None:
        """After a feed that leaves a message unfinished (see the class docstring)."""
        if self._in_head:
            if self._fresh:  # only part of this feed is the new head: count what we can see
                self._head_fed = 0
                over = fed > self._max_head and self._head_size() > self._max_head
            else:  # all of this feed belongs to the head
                self._head_fed += fed
                over = self._head_fed > self._max_head
        elif events:
            self._idle = 0
            return
        else:  # no event: chunk framing, extensions or trailers, all meant to be small
            self._idle += fed
            over = self._idle > self._max_head
        if over:
            raise self._dead(self._limit_error("header section", 431, "header_too_large"))
        if len(self._fields) > self._max_count:
            raise self._dead(self._limit_error("header field count", 431, "too_many_headers"))

    def _end_message(self) -> None:
        trailers = self._fields
        if not trailers:
            self._events.append(_EOM)
            return
        if len(trailers) > self._max_count:
            self._fail(self._limit_error("trailer field count", 431, "too_many_headers"))
        self._events.append(EndOfMessage(trailers))


# --- downstream: requests ---------------------------------------------------------------------


class RequestParser(_Parser):
    """Server side of one client connection: keep-alive and pipelining, several requests per feed.

    Upgrades: after a RequestHead whose `upgrade` is set (CONNECT included) comes Upgraded(leftover)
    and no EndOfMessage; HTTP/1 parsing is over, and a later feed(data) just returns
    [Upgraded(data)]. If the upstream then declines the upgrade (no 101/2xx), the connection can
    carry on with a new RequestParser fed `leftover`, or simply be closed.
    Upgrade requests that we do not treat as upgrades, reported with upgrade=None and parsed on as
    plain requests: HTTP/1.0 ones (RFC 9110 §7.8) and ones with a body (Content-Length > 0 or
    chunked, e.g. curl's h2c upgrade of a POST): we do not switch protocols after a body. The
    Upgrade and Connection headers stay in `headers`; strip_hop_by_hop drops them.
    After a message with keep_alive False, further bytes are ignored (feed returns []).
    """

    _special_names = _REQUEST_SPECIAL

    __slots__ = (
        "_url",
        "_max_target",
        "_hosts",
        "_expect",
        "_upgrade_hdr",
        "_resume_head",
        "_synthetic",
        "_closed",
    )

    _STATUS = 400

    def __init__(self, limits: Limits = Limits()) -> None:
        self._setup(limits)
        self._url = b""
        # Below this the target cannot make the line too long whatever the method (longest is 15).
        self._max_target = limits.max_request_line - 32
        self._hosts = 0
        self._expect = False
        self._upgrade_hdr: bytes | None = None
        self._resume_head: bytes | None = None
        self._synthetic = False
        self._closed = False
        self._parser = HttpRequestParser(self)

    def feed(self, data: bytes) -> list[Event]:
        if self._blocked:
            if self._error is not None:
                raise self._error
            if self._upgraded:
                return [Upgraded(bytes(data))] if data else []
            return []  # after a Connection: close request
        events: list[Event] = []
        self._events = events
        self._fresh = False
        self._feed_len = len(data)
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade as up:
            return self._upgrade(data[up.args[0] :])
        except HttpParserError as exc:
            if self._closed:
                return events  # bytes after a Connection: close request are ignored
            raise self._failure(exc) from exc
        if self._in_message:
            self._account(events, len(data))
        return events

    @property
    def between_messages(self) -> bool:
        """No request is partly parsed and parsing can go on: a fresh parser fed the bytes still
        to come would read them the same (a connection's safe point for a hot upgrade)."""
        return not self._in_message and not self._blocked

    def feed_eof(self) -> None:
        if self._in_message and not self._blocked:
            raise self._dead(ProtocolError("connection closed in the middle of a request", 400, "incomplete"))

    def _upgrade(self, rest: bytes) -> list[Event]:
        events = self._events
        if self._upgrading:
            self._upgraded = self._blocked = True
            events.append(Upgraded(bytes(rest)))
            return events
        # llhttp paused for an upgrade we declined; a fresh parser reads on as plain HTTP/1.1,
        # primed with a head that frames the rest of this request's body the same way.
        self._parser = HttpRequestParser(self)
        if self._closed:
            return events
        resume_head = self._resume_head
        if resume_head is not None:
            self._synthetic = True
            self._parser.feed_data(resume_head)
            self._resume_head = None
        # Messages that ended before the declined request, should the rest fail inside its body.
        before = events[: self._msg_index] if self._fresh else []
        try:
            more = self.feed(rest)  # nests once per declined upgrade in this feed
        except ProtocolError as err:
            # The nested feed kept what it completed only if the bad message began in it.
            err.events = events + err.events if self._fresh else before
            raise
        events.extend(more)
        self._events = events
        return events

    # httptools callbacks, in the order llhttp makes them

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = self._fields = []
        self._cl = self._te = self._upgrade_hdr = None
        self._hosts = 0
        self._expect = False
        self._body_len = 0
        self._in_head = True
        if not self._synthetic:
            self._in_message = True
            self._fresh = True
            self._msg_index = len(self._events)

    def on_url(self, piece: bytes) -> None:
        url = self._url + piece
        if len(url) > self._max_target:
            # method SP target SP HTTP/1.x
            if len(self._parser.get_method()) + len(url) + 10 > self._max_line:
                self._fail(ProtocolError("request line too long", 414, "uri_too_long"))
        self._url = url

    def _special(self, lname: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a trailer: framing is settled
        if lname == b"host":
            self._hosts += 1
        elif lname == b"content-length":
            self._cl = value  # llhttp has refused duplicates and anything but digits
        elif lname == b"transfer-encoding":
            self._te = value if self._te is None else self._te + b"," + value
        elif lname == b"expect":
            if value.lower() == b"100-continue":
                self._expect = True
        elif lname == b"upgrade":
            self._upgrade_hdr = value if self._upgrade_hdr is None else self._upgrade_hdr + b", " + value

    def _head_size(self) -> int:
        return len(self._url) + _fields_size(self._headers)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._fields = []  # trailers, if any
        self._idle = 0
        if self._synthetic:
            self._synthetic = False
            return
        if len(self._headers) > self._max_count or not self._fresh or self._feed_len > self._max_head:
            self._check_head()
        p = self._parser
        version = _VERSIONS.get(p.get_http_version())
        if version is None:
            if p.get_http_version().startswith("2"):
                self._fail(ProtocolError("HTTP/2.0 request line on HTTP/1", 505, "version_not_supported"))
            self._fail(ProtocolError(f"unsupported version HTTP/{p.get_http_version()}", 400, "bad_version"))
        if self._hosts > 1:
            self._fail(ProtocolError("more than one Host header", 400, "bad_host"))
        chunked = False
        te = self._te
        if te is not None:
            if version == b"1.0":
                self._fail(ProtocolError("Transfer-Encoding in an HTTP/1.0 request", 400, "smuggling"))
            err = _transfer_coding_error(te, 400)
            if err is not None:
                self._fail(err)
            chunked = True
        content_length = None
        if self._cl is not None:
            content_length = int(self._cl)
            if self._max_body is not None and content_length > self._max_body:
                self._fail(ProtocolError(f"body over {self._max_body} bytes", 413, "body_too_large"))
        method = p.get_method()
        keep_alive = p.should_keep_alive()
        upgrade = None
        if p.should_upgrade():
            if method == b"CONNECT":
                if chunked or content_length:
                    # RFC 9110 §9.3.6: CONNECT has no content; what follows the head is the tunnel.
                    self._fail(ProtocolError("CONNECT with a body", 400, "smuggling"))
                upgrade = b"connect"
            elif version == b"1.1" and not chunked and not content_length and self._upgrade_hdr:
                upgrade = self._upgrade_hdr.lower()
            elif chunked or content_length:
                # Declined, body to come: see _upgrade.
                framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % (content_length or 0)
                close = b"" if keep_alive else b"Connection: close\r\n"
                self._resume_head = b"PUT / HTTP/1.1\r\n" + framing + b"\r\n" + close + b"\r\n"
        self._upgrading = upgrade is not None
        self._keep_alive = keep_alive
        self._events.append(
            RequestHead(
                method,
                self._url,
                version,
                self._headers,
                keep_alive,
                chunked,
                content_length,
                self._expect and version == b"1.1",
                upgrade,
            )
        )

    def on_body(self, data: bytes) -> None:
        if self._max_body is not None:
            total = self._body_len + len(data)
            if total > self._max_body:
                self._fail(ProtocolError(f"body over {self._max_body} bytes", 413, "body_too_large"))
            self._body_len = total
        self._events.append(Body(data))

    def on_message_complete(self) -> None:
        if self._upgrading or self._resume_head is not None:
            return  # Upgraded follows, or the resumed parser finishes this message
        self._in_message = False
        if self._fields:
            self._end_message()
        else:
            self._events.append(_EOM)
        if not self._keep_alive:
            self._closed = self._blocked = True


# --- upstream: responses ----------------------------------------------------------------------


class ResponseParser(_Parser):
    """Client side of one upstream connection, reused across keep-alive responses.

    Call start(method) before each response: HEAD means no body; CONNECT + 2xx means a tunnel
    (ResponseHead, then Upgraded(leftover)). 1xx other than 101 come as a ResponseHead with no
    EndOfMessage, then the final response. 101 -> ResponseHead, Upgraded(leftover). A response
    without Content-Length or chunked is close-delimited: feed_eof() ends it. After Upgraded,
    feed(data) returns [Upgraded(data)].
    We do not pipeline: a byte after the awaited response (or before start()) is a ProtocolError,
    because it means the upstream frames messages differently from us. Its `events` still carry the
    complete response, which may be served, but the connection must not be reused.
    """

    _special_names = _RESPONSE_SPECIAL

    __slots__ = (
        "_reason",
        "_connection",
        "_awaiting",
        "_head_method",
        "_connect",
        "_interim",
        "_divert",
        "_tunnel",
        "_leftover",
        "_close_delimited",
        "_head_may_complete",
        "_dirty",
    )

    _STATUS = 502

    def __init__(self, limits: Limits = Limits()) -> None:
        self._setup(limits)
        self._reason = b""
        self._connection: bytes | None = None
        self._awaiting = False
        self._head_method = False
        self._connect = False
        self._interim = False
        self._divert = False  # the response is over as far as we care; llhttp may disagree
        self._tunnel = False
        self._leftover: list[bytes] = []
        self._close_delimited = False
        self._head_may_complete = False
        self._dirty = False
        self._parser = HttpResponseParser(self)

    def start(self, method: bytes) -> None:
        if self._error is not None:
            raise self._error
        if self._awaiting or self._in_message or self._upgraded:
            raise RuntimeError("ResponseParser.start() while a response is still outstanding")
        if self._dirty:
            # llhttp still expects a body we decided is not there, or saw Connection: close.
            self._parser = HttpResponseParser(self)
            self._dirty = False
        self._awaiting = True
        self._head_method = method == b"HEAD"
        self._connect = method == b"CONNECT"
        self._divert = self._tunnel = False

    def feed(self, data: bytes) -> list[Event]:
        if self._blocked:
            if self._error is not None:
                raise self._error
            return [Upgraded(bytes(data))] if data else []
        events: list[Event] = []
        self._events = events
        self._fresh = False
        self._feed_len = len(data)
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade as up:  # 101 Switching Protocols
            self._upgraded = self._blocked = True
            events.append(Upgraded(bytes(data[up.args[0] :])))
            return events
        except HttpParserError as exc:
            raise self._failure(exc) from exc
        if self._tunnel:
            self._upgraded = self._blocked = True
            events.append(Upgraded(b"".join(self._leftover)))
            self._leftover = []
            return events
        if self._in_message:
            self._account(events, len(data))
        return events

    def feed_eof(self) -> list[Event]:
        if self._blocked:
            return []
        if self._in_message:
            if self._close_delimited and not self._in_head:
                self._in_message = self._awaiting = False
                self._dirty = True
                self._events = []
                self._end_message()
                return self._events
            raise self._dead(ProtocolError("upstream closed in the middle of a response", 502, "incomplete"))
        return []

    def on_message_begin(self) -> None:
        if not self._awaiting:
            err = ProtocolError("upstream sent data with no response outstanding", 502, "data_after_response")
            self._fail_after(err)
        self._reason = b""
        self._headers = self._fields = []
        self._cl = self._te = self._connection = None
        self._body_len = 0
        self._close_delimited = False
        self._in_head = True
        self._in_message = True
        self._fresh = True
        self._msg_index = len(self._events)

    def on_status(self, piece: bytes) -> None:
        reason = self._reason + piece
        if len(reason) > self._max_head:
            self._fail(self._limit_error("status line", 431, "header_too_large"))
        self._reason = reason

    def _special(self, lname: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a trailer: framing is settled
        if lname == b"content-length":
            self._cl = value  # llhttp has refused duplicates and anything but digits
        elif lname == b"transfer-encoding":
            self._te = value if self._te is None else self._te + b"," + value
        else:
            self._connection = value if self._connection is None else self._connection + b"," + value

    def _head_size(self) -> int:
        return len(self._reason) + _fields_size(self._headers)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._fields = []  # trailers, if any
        self._idle = 0
        if len(self._headers) > self._max_count or not self._fresh or self._feed_len > self._max_head:
            self._check_head()
        p = self._parser
        version = _VERSIONS.get(p.get_http_version())
        if version is None:
            self._fail(ProtocolError(f"unsupported version HTTP/{p.get_http_version()}", 502, "bad_version"))
        status = p.get_status_code()
        if not 100 <= status <= 599:
            self._fail(ProtocolError(f"status {status} outside 100..599", 502, "bad_status"))
        reason = self._reason
        if reason and _BAD_REASON.search(reason):
            self._fail(ProtocolError("control character in the reason phrase", 502, "bad_status"))
        chunked = False
        te = self._te
        if te is not None:
            if version == b"1.0":
                self._fail(ProtocolError("Transfer-Encoding in an HTTP/1.0 response", 502, "smuggling"))
            # A response may end a non-chunked coding by close (RFC 9112 §6.3) but we would forward
            # it without its TE (hop-by-hop) and corrupt it, so only chunked is accepted.
            err = _transfer_coding_error(te, 502)
            if err is not None:
                self._fail(err)
            chunked = True
        content_length = None if self._cl is None else int(self._cl)
        headers = self._headers
        events = self._events

        if status < 200:
            if status == 101:
                if not p.should_upgrade():
                    self._fail(ProtocolError("101 without Connection: upgrade and Upgrade", 502, "bad_upgrade"))
                self._upgrading = True
            elif chunked or content_length:
                # llhttp would read a body for 1xx other than 100/102/103; there is none.
                self._fail(ProtocolError(f"{status} response with body framing", 502, "smuggling"))
            else:
                self._interim = True
            events.append(ResponseHead(status, reason, version, headers, False, chunked, content_length))
            return

        if self._connect and status < 300:
            # RFC 9110 §9.3.6: the tunnel starts right after the head. llhttp reads what follows as
            # a close-delimited body, which on_body collects as the tunnel's first bytes.
            if chunked or content_length is not None:
                self._fail(ProtocolError("2xx to CONNECT with body framing", 502, "smuggling"))
            self._tunnel = self._divert = self._dirty = True
            self._leftover = []
            self._awaiting = False
            events.append(ResponseHead(status, reason, version, headers, False, False, None))
            return

        if self._head_method:
            # No body whatever the headers say; llhttp cannot be told, so the message ends here and
            # a byte llhttp then reads as body is junk (on_body, on_message_complete).
            keep_alive = _keep_alive(version, self._connection)
            self._head_may_complete = status == 204 or status == 304 or (content_length == 0 and not chunked)
            self._divert = self._dirty = True
            self._awaiting = self._in_message = False
            events.append(ResponseHead(status, reason, version, headers, keep_alive, chunked, content_length))
            events.append(_EOM)
            return

        if self._max_body is not None and content_length is not None and content_length > self._max_body:
            self._fail(ProtocolError(f"body over {self._max_body} bytes", 502, "body_too_large"))
        keep_alive = p.should_keep_alive()
        self._keep_alive = keep_alive
        self._close_delimited = not chunked and content_length is None and status != 204 and status != 304
        events.append(ResponseHead(status, reason, version, headers, keep_alive, chunked, content_length))

    def on_body(self, data: bytes) -> None:
        if self._divert:
            if self._tunnel:
                self._leftover.append(data)
                return
            self._fail_after(ProtocolError("body bytes after a response to HEAD", 502, "data_after_response"))
        if self._max_body is not None:
            total = self._body_len + len(data)
            if total > self._max_body:
                self._fail(ProtocolError(f"body over {self._max_body} bytes", 502, "body_too_large"))
            self._body_len = total
        self._events.append(Body(data))

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            self._in_message = False
            return
        if self._upgrading:
            return
        if self._divert:
            if self._tunnel or self._head_may_complete:
                self._head_may_complete = False
                return
            self._fail_after(ProtocolError("body after a response to HEAD", 502, "data_after_response"))
        self._in_message = self._awaiting = False
        self._end_message()
        if not self._keep_alive:
            self._dirty = True  # llhttp refuses anything after a Connection: close message


def _keep_alive(version: bytes, connection: bytes | None) -> bool:
    tokens = {t.strip().lower() for t in connection.split(b",")} if connection else set()
    if version == b"1.1":
        return b"close" not in tokens
    return b"keep-alive" in tokens
