"""HTTP/2 downstream through a real `proxy run`: prior-knowledge h2c (`protocol: http2`), and
HTTP/1.1 and HTTP/2 on one port (`protocol: http`), with curl, h2load and a raw-frame client,
in front of an HTTP/1.1 upstream (h11). The router, filters, access log and stats are the
same code as for HTTP/1.1."""

from __future__ import annotations

import json

import trio

from tests.codec.h2frames import Frames, goaway, parse
from tests.integration.harness import connect, running_proxy
from tests.integration.http_upstream import HttpUpstream, http_config
from tests.integration.test_http_proxy import curl, upstream, url, websocket_echo  # noqa: F401 - upstream is a fixture


def h2_config(upstream: HttpUpstream, protocol: str = "http2", **listener) -> dict:
    config = http_config([upstream.address], **listener)
    config["listeners"][0]["protocol"] = protocol
    return config


async def test_curl_prior_knowledge_get_and_post_reach_an_http1_upstream(tmp_path, upstream):
    log = tmp_path / "access.log"
    config = h2_config(upstream, access_log=[{"path": str(log), "format": "%protocol% %method% %request_uri% %response_code% %bytes_received% %bytes_sent%"}])
    async with running_proxy(config, tmp_path) as proxy:
        got = await curl("--http2-prior-knowledge", "-i", url(proxy, "/echo/a?b=1"), "-H", "Cookie: a=1", "-H", "Cookie: b=2")
        assert got.returncode == 0, got.stderr
        head, _, body = got.stdout.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/2 200")
        seen = json.loads(body)
        headers = {k.lower(): v for k, v in seen["headers"]}
        assert seen["target"] == "/echo/a?b=1" and seen["method"] == "GET"
        host, port = proxy.address("http")
        assert headers["host"] == f"{host}:{port}"  # :authority became Host
        assert headers["cookie"] == "a=1; b=2"  # cookie crumbs joined (RFC 9113 §8.2.3)
        assert headers["x-forwarded-proto"] == "http"
        posted = await curl("--http2-prior-knowledge", url(proxy, "/echo"), "--data-binary", "x" * 100_000)
        assert posted.returncode == 0, posted.stderr
        assert json.loads(posted.stdout)["body_length"] == 100_000
        with trio.fail_after(5):
            while log.read_text().count("\n") < 2:
                await trio.sleep(0.02)
        first, second = log.read_text().splitlines()
        assert first.startswith("HTTP/2 GET /echo/a?b=1 200 0 ")
        assert second.startswith("HTTP/2 POST /echo 200 100000 ")


async def test_one_port_serves_http1_and_http2(tmp_path, upstream):
    async with running_proxy(h2_config(upstream, protocol="http"), tmp_path) as proxy:
        h1 = await curl("-i", url(proxy, "/echo"))
        h2 = await curl("-i", "--http2-prior-knowledge", url(proxy, "/echo"))
        assert h1.stdout.startswith(b"HTTP/1.1 200"), h1.stdout[:100]
        assert h2.stdout.startswith(b"HTTP/2 200"), h2.stdout[:100]


async def test_h2load_multiplexed_streams_all_succeed(tmp_path, upstream):
    async with running_proxy(h2_config(upstream), tmp_path) as proxy:
        result = await trio.run_process(["h2load", "-n", "2000", "-c", "4", "-m", "10", url(proxy, "/echo")], capture_stdout=True, check=False)
        out = result.stdout.decode()
        assert result.returncode == 0, out
        assert "2000 succeeded, 0 failed, 0 errored, 0 timeout" in out, out
        assert "2000 2xx" in out, out


async def test_a_local_reply_and_a_dead_upstream_answer_on_their_stream(tmp_path, upstream):
    config = h2_config(upstream, routes=[{"match": {"path": "/direct"}, "direct_response": {"status": 201, "body": "made here"}}, {"match": {"prefix": "/"}, "cluster": "up"}])
    config["clusters"][0]["hosts"] = [{"address": "127.0.0.1:1"}]  # nothing listens
    async with running_proxy(config, tmp_path) as proxy:
        direct = await curl("--http2-prior-knowledge", "-i", url(proxy, "/direct"))
        assert direct.stdout.startswith(b"HTTP/2 201") and direct.stdout.endswith(b"made here")
        dead = await curl("--http2-prior-knowledge", "-i", url(proxy, "/x"))
        assert dead.stdout.startswith(b"HTTP/2 502"), dead.stdout[:200]


async def test_rapid_reset_gets_goaway_and_other_connections_serve_on(tmp_path, upstream):
    """CVE-2023-44487 through the whole proxy: a client that opens and resets streams as fast as
    it can gets GOAWAY(ENHANCE_YOUR_CALM) and is closed; a well-behaved client is not touched."""
    async with running_proxy(h2_config(upstream), tmp_path) as proxy:
        attacker = await connect(proxy.address("http"))
        f = Frames()
        wire = f.preface()
        request = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/slow/500"), (b":authority", b"x")]
        for sid in range(1, 2 * 1000, 2):
            wire += f.headers(sid, request, end_stream=True) + f.rst(sid, 8)
        await attacker.send_all(wire)
        received = b""
        with trio.fail_after(10):
            while True:
                data = await attacker.receive_some(65536)
                if not data:
                    break
                received += data
        seen = goaway(parse(received, client_preface=False))
        assert seen is not None and seen[1] == 0xB, seen  # ENHANCE_YOUR_CALM
        good = await curl("--http2-prior-knowledge", url(proxy, "/echo"))
        assert good.returncode == 0 and json.loads(good.stdout)["method"] == "GET"
    assert "connection.protocol_error" in proxy.log()


async def test_drain_sends_two_goaways_and_lets_the_stream_in_flight_finish(tmp_path, upstream):
    """SIGTERM on an HTTP/2 listener: GOAWAY(2^31-1) at once, GOAWAY(last stream id) about a
    round trip (1 s) later, and the request in flight still gets its whole response."""
    import signal

    async with running_proxy(h2_config(upstream), tmp_path) as proxy:
        client = await connect(proxy.address("http"))
        f = Frames()
        request = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/slow/1500"), (b":authority", b"x")]
        await client.send_all(f.preface() + f.settings(ack=True) + f.headers(1, request, end_stream=True))
        await trio.sleep(0.3)
        proxy.signal(signal.SIGTERM)
        received = b""
        goaways: list[tuple[float, int]] = []
        start = trio.current_time()
        with trio.fail_after(10):
            while True:
                data = await client.receive_some(65536)
                if not data:
                    break
                received += data
                frames = parse(received, client_preface=False)
                seen = [fr for fr in frames if type(fr).__name__ == "GoAwayFrame"]
                while len(goaways) < len(seen):
                    goaways.append((trio.current_time() - start, seen[len(goaways)].last_stream_id))
        frames = parse(received, client_preface=False)
        data_frames = [fr for fr in frames if type(fr).__name__ == "DataFrame" and fr.stream_id == 1]
        assert b"".join(fr.data for fr in data_frames) == b"slow"  # the stream in flight finished
        assert [last for _, last in goaways] == [2**31 - 1, 1], goaways
        assert goaways[1][0] - goaways[0][0] >= 0.9


async def test_h2_upload_with_expect_100_continue_and_a_large_body(tmp_path, upstream):
    """curl over h2c with `Expect: 100-continue` and 4 MiB: the proxy answers 100 on the
    stream, the body flows under flow control (windows opened as the upstream drains it) and
    arrives whole."""
    import hashlib

    from tests.integration.http_upstream import PATTERN

    payload = tmp_path / "payload.bin"
    payload.write_bytes(PATTERN * 64)  # 4 MiB: more than the stream and connection windows
    async with running_proxy(h2_config(upstream), tmp_path) as proxy:
        result = await curl("--http2-prior-knowledge", "-H", "Expect: 100-continue", "--data-binary", f"@{payload}", url(proxy, "/sink"))
        assert result.returncode == 0, result.stderr
        seen = json.loads(result.stdout)
        assert seen["body_length"] == 4 * 1024 * 1024, seen
        assert seen["body_sha256"] == hashlib.sha256(PATTERN * 64).hexdigest()


async def test_streams_after_a_timeout_and_a_reset_are_served_on_the_same_connection(tmp_path, upstream):
    """A stream worker that served a timed-out stream (504) or a reset one takes later streams
    with a fresh cancel scope: nothing of the cancel leaks into them."""
    import hpack

    routes = [
        {"match": {"prefix": "/slow"}, "cluster": "up", "timeout": "300ms"},
        {"match": {"prefix": "/"}, "cluster": "up"},
    ]
    async with running_proxy(h2_config(upstream, routes=routes), tmp_path) as proxy:
        client = await connect(proxy.address("http"))
        f = Frames()

        def request(path: str) -> list[tuple[bytes, bytes]]:
            return [(b":method", b"GET"), (b":scheme", b"http"), (b":path", path.encode()), (b":authority", b"x")]

        await client.send_all(f.preface() + f.settings(ack=True) + f.headers(1, request("/slow/3000"), end_stream=True) + f.headers(3, request("/slow/3000"), end_stream=True))
        await trio.sleep(0.1)
        await client.send_all(f.rst(3, 8))  # CANCEL from the client
        received = b""
        statuses: dict[int, bytes] = {}
        bodies: dict[int, bytes] = {}
        ended: set[int] = set()

        async def read_until(done) -> None:
            nonlocal received
            with trio.fail_after(10):
                while not done():
                    data = await client.receive_some(65536)
                    assert data, "the proxy closed the connection"
                    received += data
                    try:
                        frames = parse(received, client_preface=False)
                    except Exception:  # noqa: BLE001 - a frame cut by the read: wait for the rest
                        continue
                    statuses.clear()
                    bodies.clear()
                    ended.clear()
                    decoder = hpack.Decoder()  # the whole stream is parsed again: from the start
                    for fr in frames:
                        if type(fr).__name__ == "HeadersFrame":
                            fields = dict(decoder.decode(fr.data, raw=True))
                            if b":status" in fields:
                                statuses[fr.stream_id] = fields[b":status"]
                        elif type(fr).__name__ == "DataFrame":
                            bodies[fr.stream_id] = bodies.get(fr.stream_id, b"") + fr.data
                        if "END_STREAM" in getattr(fr, "flags", ()):
                            ended.add(fr.stream_id)

        await read_until(lambda: 1 in statuses)
        assert statuses[1] == b"504"
        sids = list(range(5, 5 + 2 * 20, 2))
        await client.send_all(b"".join(f.headers(sid, request(f"/echo/{sid}"), end_stream=True) for sid in sids))
        await read_until(lambda: ended.issuperset(sids))
        for sid in sids:
            assert statuses[sid] == b"200", (sid, statuses[sid])
            assert json.loads(bodies[sid])["target"] == f"/echo/{sid}"
        assert 3 not in statuses  # the reset stream got no answer
        assert goaway(parse(received, client_preface=False)) is None


async def test_websocket_over_http2_extended_connect_to_an_http1_server(tmp_path, nursery):
    """RFC 8441: an HTTP/2 client opens a WebSocket with an extended CONNECT; the proxy
    upgrades an HTTP/1.1 connection to a real WebSocket server (adding the Sec-WebSocket-Key
    HTTP/2 has no use for), answers 200, and carries the frames both ways in DATA; the client's
    16 KiB window makes the proxy wait for its WINDOW_UPDATEs to send a 50 kB echo."""
    import hpack
    from trio_websocket import serve_websocket
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import CloseConnection, Message
    from wsproto.frame_protocol import CloseReason

    server = await nursery.start(serve_websocket, websocket_echo, "127.0.0.1", 0, None)
    config = http_config([f"127.0.0.1:{server.port}"], http2={"initial_stream_window_size": 65535})
    config["listeners"][0]["protocol"] = "http2"
    async with running_proxy(config, tmp_path) as proxy:
        client = await connect(proxy.address("http"))
        f = Frames()
        await client.send_all(f.preface(initial_window_size=16384) + f.settings(ack=True))
        buffer = b""
        decoder = hpack.Decoder()
        every_frame: list = []

        async def frames_until(predicate):
            nonlocal buffer
            seen = []
            with trio.fail_after(10):
                while True:
                    while len(buffer) >= 9 and len(buffer) >= 9 + int.from_bytes(buffer[:3], "big"):
                        n = 9 + int.from_bytes(buffer[:3], "big")
                        (frame,) = parse(buffer[:n])
                        buffer = buffer[n:]
                        seen.append(frame)
                        every_frame.append(frame)
                        if predicate(frame):
                            return seen
                    data = await client.receive_some(65536)
                    assert data, "the proxy closed the connection"
                    buffer += data

        settings = await frames_until(lambda fr: type(fr).__name__ == "SettingsFrame" and "ACK" not in fr.flags)
        assert settings[-1].settings.get(8) == 1  # SETTINGS_ENABLE_CONNECT_PROTOCOL
        assert settings[-1].settings.get(4) == 65535  # the listener's http2.initial_stream_window_size
        request = [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"http"), (b":path", b"/chat"), (b":authority", b"x"), (b"sec-websocket-version", b"13")]
        await client.send_all(f.headers(1, request))
        head = (await frames_until(lambda fr: type(fr).__name__ == "HeadersFrame"))[-1]
        fields = dict(decoder.decode(head.data, raw=True))
        assert fields[b":status"] == b"200" and b"sec-websocket-accept" not in fields, fields
        assert "END_STREAM" not in head.flags

        ws = Connection(ConnectionType.CLIENT)
        big = "x" * 50_000  # (within the proxy's 64 KiB window: this client does not track it)
        for text in ("hello", big, "bye"):
            await client.send_all(b"".join(f.data(1, chunk) for chunk in _chunks(ws.send(Message(data=text)), 16384)))
            got = ""
            while True:
                frames = await frames_until(lambda fr: type(fr).__name__ == "DataFrame")
                data = b"".join(fr.data for fr in frames if type(fr).__name__ == "DataFrame")
                if data:
                    await client.send_all(f.window_update(1, len(data)) + f.window_update(0, len(data)))
                ws.receive_data(data)
                part, done = received_text(ws)
                got += part
                if done:
                    break
            assert got == text
        await client.send_all(f.data(1, ws.send(CloseConnection(code=CloseReason.NORMAL_CLOSURE)), end_stream=True))
        frames = await frames_until(lambda fr: "END_STREAM" in getattr(fr, "flags", ()) or type(fr).__name__ == "RstStreamFrame")
        assert type(frames[-1]).__name__ == "DataFrame", frames[-1]  # the server closed its side too
        assert goaway(every_frame) is None
    assert "stream.failed" not in proxy.log()


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def received_text(ws) -> tuple[str, bool]:
    """The text a wsproto connection decoded from the bytes fed to it so far, and whether a
    message ended there."""
    from wsproto.events import TextMessage

    got, done = "", False
    for event in ws.events():
        if isinstance(event, TextMessage):
            got += event.data
            done = event.message_finished
    return got, done
