"""WebSocket to an HTTP/2 upstream, through a real `proxy run`: the upstream hop is an extended
CONNECT (RFC 8441) on a stream of a shared h2c connection, to Hypercorn (a real ASGI server that
speaks WebSocket over HTTP/2). An HTTP/1.1 client's Upgrade becomes the extended CONNECT and the
upstream's 200 becomes its 101 (with the Sec-WebSocket-Accept its key asks for); an HTTP/2
client's extended CONNECT goes up as one. Messages larger than the stream windows cross both
ways, and other requests share the upstream connection meanwhile."""

from __future__ import annotations

import functools

import pytest
import trio

from tests.integration.harness import connect, running_proxy
from tests.integration.test_http2 import received_text
from tests.integration.test_http2_upstream import config


async def _echo_app(scope, receive, send) -> None:
    """ASGI: a WebSocket echoes every message; GET answers with the HTTP version it came over."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept", "headers": [(b"x-seen-over", scope["http_version"].encode())]})
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"]})
            else:
                await send({"type": "websocket.send", "bytes": message["bytes"]})
    body = f"over HTTP/{scope['http_version']}\n".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def hypercorn(nursery):
    from hypercorn.config import Config
    from hypercorn.trio import serve

    cfg = Config()
    cfg.bind = ["127.0.0.1:0"]
    cfg.accesslog = cfg.errorlog = None
    cfg.h2_max_inbound_frame_size = 16384
    stop = trio.Event()
    binds = await nursery.start(functools.partial(serve, _echo_app, cfg, shutdown_trigger=stop.wait))
    yield binds[0].removeprefix("http://")
    stop.set()


async def test_an_http1_websocket_rides_an_extended_connect_to_an_http2_upstream(tmp_path, hypercorn):
    from trio_websocket import open_websocket_url

    async with running_proxy(config(hypercorn), tmp_path) as proxy:
        host, port = proxy.address("h1")
        async with open_websocket_url(f"ws://{host}:{port}/chat") as ws:
            assert dict(ws.handshake_headers).get(b"x-seen-over") == b"2"  # the upstream hop was HTTP/2
            big = "y" * 300_000  # > 4 x the 64 KiB stream windows, both ways
            for text in ("hello", big, "bye"):
                await ws.send_message(text)
                assert await ws.get_message() == text
            await ws.send_message(b"\x00binary\xff")
            assert await ws.get_message() == b"\x00binary\xff"
            # Plain requests share the upstream connection while the tunnel is open.
            result = await trio.run_process(["curl", "-sS", f"http://{host}:{port}/plain"], capture_stdout=True)
            assert result.stdout == b"over HTTP/2\n"


async def test_an_http2_extended_connect_goes_up_as_one(tmp_path, hypercorn):
    import h2.config
    import h2.connection
    import h2.events
    import h2.settings
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import CloseConnection, Message
    from wsproto.frame_protocol import CloseReason

    async with running_proxy(config(hypercorn), tmp_path) as proxy:
        sock = await connect(proxy.address("h2"))
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        client.initiate_connection()
        await sock.send_all(client.data_to_send())
        events: list = []

        async def until(kind):
            with trio.fail_after(10):
                while True:
                    for i, event in enumerate(events):
                        if isinstance(event, kind):
                            return events.pop(i)
                    data = await sock.receive_some(65536)
                    assert data, "the proxy closed the connection"
                    for event in client.receive_data(data):
                        if isinstance(event, h2.events.DataReceived):
                            client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                        events.append(event)
                    await sock.send_all(client.data_to_send())

        await until(h2.events.RemoteSettingsChanged)
        assert client.remote_settings[h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL] == 1
        client.send_headers(1, [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"http"), (b":path", b"/chat"),
                                (b":authority", b"x"), (b"sec-websocket-version", b"13")])
        await sock.send_all(client.data_to_send())
        response = await until(h2.events.ResponseReceived)
        fields = dict(response.headers)
        assert fields[b":status"] == b"200" and fields[b"x-seen-over"] == b"2", fields  # the upstream's 200, as it sent it

        ws = Connection(ConnectionType.CLIENT)
        big = "z" * 150_000  # past the 64 KiB windows of both HTTP/2 hops

        async def send(data: bytes) -> None:
            while data:
                room = min(client.local_flow_control_window(1), client.max_outbound_frame_size)
                if room <= 0:
                    await until(h2.events.WindowUpdated)
                    continue
                client.send_data(1, data[:room])
                data = data[room:]
                await sock.send_all(client.data_to_send())

        for text in ("hello", big):
            await send(ws.send(Message(data=text)))
            got = ""
            while True:
                ws.receive_data((await until(h2.events.DataReceived)).data)
                part, done = received_text(ws)
                got += part
                if done:
                    break
            assert got == text
        client.send_data(1, ws.send(CloseConnection(code=1000)), end_stream=True)  # the close and the end in one frame
        await sock.send_all(client.data_to_send())
        # Hypercorn answers the close but leaves its side of the stream open (until its idle
        # connection closes): the close frame is the end of the exchange here.
        closes: list = []
        while not closes:
            ws.receive_data((await until(h2.events.DataReceived)).data)
            closes = [e for e in ws.events() if isinstance(e, CloseConnection)]
        assert closes[0].code == CloseReason.NORMAL_CLOSURE
