"""Micro-benchmark of the HTTP/1 codec (not a test): µs per parse and per serialise.

    .venv/bin/python tests/codec/bench_http1.py
"""

from __future__ import annotations

import time

import httptools

from proxy.codec.http1 import RequestParser, ResponseParser, request_head_bytes, response_head_bytes

GET = (
    b"GET /api/v1/items?id=42&sort=desc HTTP/1.1\r\n"
    b"Host: api.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) bench/1.0\r\n"
    b"Accept: application/json, text/plain, */*\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: bench\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 13\r\n"
    b"\r\n"
    b'{"ok": true}\n'
)


def bench(name: str, fn, n: int) -> float:
    for _ in range(n // 10):
        fn()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - t0)
    us = best / n * 1e6
    print(f"{name:<52} {us:6.2f} µs")
    return us


class _Bare:
    """httptools with do-nothing callbacks: the floor any wrapper pays."""

    def on_url(self, url): pass
    def on_header(self, name, value): pass
    def on_headers_complete(self): pass
    def on_body(self, body): pass
    def on_message_complete(self): pass


def main(n: int = 100_000) -> None:
    req = RequestParser()  # one per connection: keep-alive requests reuse it
    resp = ResponseParser()

    def parse_get():
        req.feed(GET)

    def parse_response():
        resp.start(b"GET")
        resp.feed(RESPONSE)

    bare = httptools.HttpRequestParser(_Bare())
    head = RequestParser().feed(GET)[0]
    rhead = ResponseParser()
    rhead.start(b"GET")
    rhead = rhead.feed(RESPONSE)[0]

    bench("httptools alone, empty callbacks, 6-header GET", lambda: bare.feed_data(GET), n)
    bench("RequestParser.feed, 6-header GET (keep-alive)", parse_get, n)
    bench("RequestParser() + feed, 6-header GET (new conn)", lambda: RequestParser().feed(GET), n)
    bench("ResponseParser.start + feed, 200 + 13-byte body", parse_response, n)
    bench("request_head_bytes, 6 headers", lambda: request_head_bytes(head), n)
    bench("response_head_bytes, 4 headers", lambda: response_head_bytes(rhead), n)


if __name__ == "__main__":
    main()
