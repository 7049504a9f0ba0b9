"""Random frame sequences, valid and broken, at both codecs: events of our own types or an
Http2Error with a GOAWAY queued, never another exception, and what is held stays bounded."""

from __future__ import annotations

import random

from proxy.codec.http1 import ResponseHead
from proxy.codec.http2 import ClientConnection, Http2Error, RequestReceived, ResponseReceived, ServerConnection
from tests.codec.h2frames import PREFACE, REQUEST, Frames, goaway, parse, raw

RESPONSE = [(b":status", b"200"), (b"content-type", b"text/plain")]


def _frame(rng: random.Random, f: Frames, sid: int, fields: list) -> bytes:
    choice = rng.randrange(14)
    if choice < 3:
        return f.headers(sid, fields, end_stream=rng.random() < 0.5)
    if choice < 5:
        return f.data(sid, b"x" * rng.choice([0, 1, 100, 5000]), end_stream=rng.random() < 0.3, pad=rng.choice([None, 0, 7]))
    if choice == 5:
        return f.rst(sid, rng.randrange(14))
    if choice == 6:
        return f.window_update(rng.choice([0, sid]), rng.randint(1, 70000))
    if choice == 7:
        return f.ping(ack=rng.random() < 0.3)
    if choice == 8:
        return f.settings(ack=rng.random() < 0.3, initial_window_size=rng.randint(0, 1 << 20))
    if choice == 9:
        return f.priority(sid, depends_on=rng.choice([0, sid, sid + 2]))
    if choice == 10:
        block = f.block(fields)
        cut = rng.randint(0, len(block))
        return f.headers_block(sid, block[:cut], end_headers=False) + f.continuation(sid, block[cut:], end_headers=True)
    if choice == 11:
        return f.goaway(rng.randrange(sid + 3), rng.randrange(3))
    if choice == 12:
        return raw(rng.randrange(12), rng.randrange(256), rng.choice([0, sid, sid + 1]), bytes(rng.randrange(256) for _ in range(rng.randrange(20))))
    frame = bytearray(f.headers(sid, fields))
    frame[rng.randrange(len(frame))] = rng.randrange(256)  # a corrupted frame
    return bytes(frame)


def _check(events: list) -> None:
    for event in events:
        assert type(event).__module__.startswith("proxy."), event


def test_server_survives_random_frames() -> None:
    rng = random.Random(2024)
    outcomes = {"error": 0, "ok": 0}
    for _ in range(300):
        server = ServerConnection()
        server.initiate()
        server.data_to_send()
        f = Frames()
        wire = [PREFACE + f.settings()]
        sid = 1
        for _ in range(rng.randint(1, 25)):
            if rng.random() < 0.3:
                sid += 2
            wire.append(_frame(rng, f, sid, REQUEST if rng.random() < 0.8 else [(b":method", b"GET")]))
        data = b"".join(wire)
        try:
            pos = 0
            while pos < len(data):
                step = rng.choice([1, 7, 100, 10**6])
                events = server.receive(data[pos : pos + step], 1.0)
                _check(events)
                for event in events:
                    if type(event) is RequestReceived and rng.random() < 0.5:
                        server.send_response(event.stream_id, ResponseHead(200, b"", b"1.1", [], True, False, None), False)
                        server.send_data(event.stream_id, b"answer", rng.random() < 0.5)
                pos += step
            outcomes["ok"] += 1
        except Http2Error:
            outcomes["error"] += 1
            assert goaway(parse(server.data_to_send())) is not None
        assert server.buffered_size() < 200_000
    assert outcomes["error"] > 30 and outcomes["ok"] > 30


def test_client_survives_random_frames() -> None:
    rng = random.Random(77)
    for _ in range(200):
        client = ClientConnection()
        client.initiate()
        client.data_to_send()
        from proxy.codec.http1 import RequestHead

        sids = [client.send_request(RequestHead(b"GET", b"/", b"1.1", [(b"host", b"a")], True, False, None, False, None), b"http", rng.random() < 0.5) for _ in range(3)]
        client.data_to_send()
        f = Frames()
        wire = [f.settings()]
        for _ in range(rng.randint(1, 20)):
            wire.append(_frame(rng, f, rng.choice(sids), RESPONSE if rng.random() < 0.8 else [(b":status", b"1x")]))
        try:
            events = client.receive(b"".join(wire), 1.0)
            _check(events)
            for event in events:
                if type(event) is ResponseReceived:
                    client.acknowledge(event.stream_id, 0)
        except Http2Error:
            assert goaway(parse(client.data_to_send())) is not None
