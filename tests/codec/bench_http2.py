"""Micro-benchmark of the HTTP/2 codec (not a test): CPU µs per small GET, per side.

    .venv/bin/python tests/codec/bench_http2.py [requests] [rounds]

Server: receive the request's frames, send a response head and a 2-byte body, take the bytes.
Client: send the request, take the bytes, receive the response, acknowledge its data. Our client
and server talk to each other in memory; each side's calls are timed apart (process time, best
round). h2's H2Connection with its validation off is timed the same way for comparison.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import h2.config
import h2.connection
import h2.events

from proxy.codec.http1 import RequestHead, ResponseHead
from proxy.codec.http2 import ClientConnection, DataReceived, Http2Settings, ServerConnection

HEADERS = [(b"Host", b"example.com"), (b"User-Agent", b"bench/1.0"), (b"Accept", b"*/*")]
RESPONSE = [(b"Content-Type", b"text/plain"), (b"Content-Length", b"2")]
VARIED = [
    (b"Accept-Language", b"en-US,en;q=0.9"),
    (b"Accept-Encoding", b"gzip, deflate, br"),
    (b"Cookie", b"session=8f2a9c1e4b7d; theme=dark"),
    (b"Referer", b"https://example.com/app/dashboard"),
    (b"Sec-Fetch-Mode", b"cors"),
]


def ours(n: int, varied: bool = False, huffman: bool = True) -> tuple[float, float]:
    """`varied`: a browser-like request instead: 9 fields, a new path and request id each time
    (literals with indexing, a dynamic table that fills and evicts)."""
    settings = Http2Settings(huffman=huffman)
    client, server = ClientConnection(settings), ServerConnection(settings)
    client.initiate()
    server.initiate()
    for _ in range(2):
        server.receive(client.data_to_send(), 0.0)
        client.receive(server.data_to_send(), 0.0)
    clock = time.process_time
    tc = ts = 0.0
    for i in range(n):
        if varied:
            target = b"/api/v1/items/%d?page=%d" % (i, i % 7)
            fields = [*HEADERS, *VARIED, (b"x-request-id", b"%032x" % (i * 2654435761))]
        else:
            target = b"/index.html"
            fields = list(HEADERS)
        t0 = clock()
        sid = client.send_request(RequestHead(b"GET", target, b"1.1", fields, True, False, None, False, None), b"http", True)
        wire = client.data_to_send()
        t1 = clock()
        server.receive(wire, 1.0)
        server.send_response(sid, ResponseHead(200, b"OK", b"1.1", list(RESPONSE), True, False, 2), False)
        server.send_data(sid, b"ok", True)
        back = server.data_to_send()
        t2 = clock()
        for event in client.receive(back, 1.0):
            if type(event) is DataReceived:
                client.acknowledge(event.stream_id, event.flow_length)
        client.data_to_send()
        t3 = clock()
        tc += (t1 - t0) + (t3 - t2)
        ts += t2 - t1
    return ts / n * 1e6, tc / n * 1e6


def plain_h2(n: int) -> tuple[float, float]:
    def make(client_side: bool) -> h2.connection.H2Connection:
        config = h2.config.H2Configuration(
            client_side=client_side,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
        )
        conn = h2.connection.H2Connection(config)
        conn.initiate_connection()
        return conn

    client, server = make(True), make(False)
    for _ in range(2):
        server.receive_data(client.data_to_send())
        client.receive_data(server.data_to_send())
    request = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/index.html"), (b":authority", b"example.com"), (b"user-agent", b"bench/1.0"), (b"accept", b"*/*")]
    response = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"content-length", b"2")]
    clock = time.process_time
    tc = ts = 0.0
    for _ in range(n):
        t0 = clock()
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, request, end_stream=True)
        wire = client.data_to_send()
        t1 = clock()
        server.receive_data(wire)
        server.send_headers(sid, response)
        server.send_data(sid, b"ok", end_stream=True)
        back = server.data_to_send()
        t2 = clock()
        for event in client.receive_data(back):
            if isinstance(event, h2.events.DataReceived):
                client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        client.data_to_send()
        t3 = clock()
        tc += (t1 - t0) + (t3 - t2)
        ts += t2 - t1
    return ts / n * 1e6, tc / n * 1e6


def best(run: Callable[[int], tuple[float, float]], n: int, rounds: int) -> tuple[float, float]:
    results = [run(n) for _ in range(rounds)]
    return min(r[0] for r in results), min(r[1] for r in results)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    runs = (
        ("proxy.codec.http2", ours),
        ("  browser-like request", lambda n: ours(n, True)),
        ("  the same, huffman=False", lambda n: ours(n, True, False)),
        ("h2 alone, validation off", plain_h2),
    )
    for name, run in runs:
        server, client = best(run, n, rounds)
        print(f"{name:28} server {server:6.1f} µs  client {client:6.1f} µs  both {server + client:6.1f} µs per GET")


if __name__ == "__main__":
    main()
