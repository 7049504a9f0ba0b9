"""Filters that leave heads in loose types (lists for tuples, str or bytearray for bytes, a
None reason) still get their request proxied and their response sent: the filter chain
hands the codec canonical heads, which the compiled codec (scripts/build-native) requires."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from proxy.config.loader import load_text
from proxy.http.filter import LocalReply, Stream, StreamFilter, canonical_headers
from tests.http.test_migration import manager
from tests.integration.harness import read_all
from tests.integration.http_upstream import HttpUpstream, http_config


class SloppyFilter(StreamFilter):
    async def on_request(self, stream: Stream) -> LocalReply | None:
        head = stream.request
        if head.target == b"/local":
            return LocalReply(200, "here", [["x-list", bytearray(b"1")], ("x-str", "two")])  # type: ignore[list-item]
        head.headers.append([b"x-from-filter", bytearray(b"yes")])  # type: ignore[arg-type]
        head.headers.append(("x-str", "text"))  # type: ignore[arg-type]
        head.target = bytearray(head.target)  # type: ignore[assignment]
        return None

    async def on_response(self, stream: Stream) -> None:
        response = stream.response
        assert response is not None
        response.headers.append(["x-seen", "1"])  # type: ignore[arg-type]
        response.reason = None  # type: ignore[assignment]


@pytest.fixture
async def upstream(nursery):
    up = HttpUpstream("a")
    await up.start(nursery)
    return up


async def _exchange(address: tuple[str, int], raw: bytes) -> bytes:
    """One Connection: close request; everything the proxy sends until it closes."""
    async with await trio.open_tcp_stream(*address) as stream:
        await stream.send_all(raw)
        return await read_all(stream, 5)


async def test_loose_types_from_a_filter_are_made_canonical(nursery, upstream):
    from proxy.network.listener import accept_loop, bind

    routes: list[dict[str, Any]] = [{"match": {"prefix": "/"}, "cluster": "up"}]
    config = load_text(
        json.dumps(http_config([upstream.address], routes, filters=[{"type": "tests.http.test_filter_types:SloppyFilter"}])),
        fmt="json",
    )
    cm = manager(config, nursery)
    sock = bind(config.listeners[0].address, 16)
    nursery.start_soon(accept_loop, "http", sock, cm.handle, nursery, cm.stats)
    address = sock.getsockname()

    got = await _exchange(address, b"GET /echo/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head  # the standard reason for None
    assert b"\r\nx-seen: 1" in head
    seen = {name.lower(): value for name, value in json.loads(body)["headers"]}
    assert seen["x-from-filter"] == "yes" and seen["x-str"] == "text"

    got = await _exchange(address, b"GET /local HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nx-list: 1" in got and b"\r\nx-str: two" in got
    assert got.endswith(b"here")
    assert cm.stats.downstream_cx_error == 0


def test_canonical_headers_keeps_a_canonical_list_as_is():
    headers = [(b"a", b"1"), (b"b", b"2")]
    assert canonical_headers(headers) is headers
    assert canonical_headers(((b"a", b"1"),)) == [(b"a", b"1")]
    assert canonical_headers([[b"a", memoryview(b"1")], ("b", "é")]) == [(b"a", b"1"), (b"b", "é".encode("latin-1"))]
