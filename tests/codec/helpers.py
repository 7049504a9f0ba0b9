"""Feed helpers for the HTTP/1 codec tests: fragmenting input and folding events into messages."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from proxy.codec.http1 import (
    Body,
    EndOfMessage,
    Limits,
    RequestHead,
    RequestParser,
    ResponseHead,
    ResponseParser,
    Upgraded,
)


def pieces(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """`data` cut at the given offsets (any order, duplicates and out-of-range ignored)."""
    points = sorted({c for c in cuts if 0 < c < len(data)})
    out, start = [], 0
    for p in points:
        out.append(data[start:p])
        start = p
    out.append(data[start:])
    return out


def feed_all(parser: RequestParser | ResponseParser, chunks: Sequence[bytes]) -> list:
    events: list = []
    for c in chunks:
        events.extend(parser.feed(c))
    return events


def parse_requests(data: bytes, cuts: Iterable[int] = (), limits: Limits = Limits(), eof: bool = False) -> list:
    parser = RequestParser(limits)
    events = feed_all(parser, pieces(data, cuts))
    if eof:
        parser.feed_eof()
    return events


@dataclass
class Message:
    head: RequestHead | ResponseHead
    body: bytes = b""
    trailers: list = field(default_factory=list)
    complete: bool = False
    upgraded: bytes | None = None


def messages(events: list) -> list[Message]:
    """Fold an event list into messages, checking the event grammar on the way."""
    out: list[Message] = []
    for ev in events:
        if isinstance(ev, (RequestHead, ResponseHead)):
            # A 1xx interim head is followed directly by the next head.
            assert not out or out[-1].complete or _interim(out[-1].head), f"head inside a message: {events}"
            out.append(Message(ev))
        elif isinstance(ev, Body):
            assert out and not out[-1].complete and ev.data, events
            out[-1].body += ev.data
        elif isinstance(ev, EndOfMessage):
            assert out and not out[-1].complete, events
            out[-1].trailers = list(ev.trailers)
            out[-1].complete = True
        elif isinstance(ev, Upgraded):
            assert out and out[-1].upgraded is None, events
            out[-1].upgraded = ev.leftover
        else:  # pragma: no cover
            raise AssertionError(ev)
    return out


def _interim(head: RequestHead | ResponseHead) -> bool:
    return isinstance(head, ResponseHead) and 100 <= head.status < 200 and head.status != 101


def parse_response(data: bytes, method: bytes = b"GET", cuts: Iterable[int] = (), eof: bool = False,
                   limits: Limits = Limits()) -> list:
    parser = ResponseParser(limits)
    parser.start(method)
    events = feed_all(parser, pieces(data, cuts))
    if eof:
        events.extend(parser.feed_eof())
    return events
