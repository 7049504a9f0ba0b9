"""Tunnels through a real `proxy run`: WebSocket and CONNECT, to HTTP/2 upstreams and onwards.

WebSocket to an HTTP/2 upstream: the upstream hop is an extended
CONNECT (RFC 8441) on a stream of a shared h2c connection, to Hypercorn (a real ASGI server that
speaks WebSocket over HTTP/2). An HTTP/1.1 client's Upgrade becomes the extended CONNECT and the
upstream's 200 becomes its 101 (with the Sec-WebSocket-Accept its key asks for); an HTTP/2
client's extended CONNECT goes up as one. Messages larger than the stream windows cross both
ways, and other requests share the upstream connection meanwhile. CONNECT (below) goes to a
forward proxy upstream, over HTTP/1.1 or as a CONNECT stream of an h2c connection."""

from __future__ import annotations

import functools

import pytest
import trio

from tests.integration.harness import connect, running_proxy
from tests.integration.test_http2 import received_text
from tests.integration.test_http2_upstream import config, free_port, serving


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


# ---------------------------------------------------------------- CONNECT, proxied onwards
#
# A route with allow_connect forwards a CONNECT to its cluster, which is then a forward proxy
# (proxy chaining; Envoy's CONNECT without connect_config). The peers are real: tinyproxy as an
# HTTP/1.1 forward proxy, and nghttpx in HTTP/2 proxy mode in front of it for an http2 cluster.
# The tunnel ends at a TCP echo server this test runs.


@pytest.fixture
def tinyproxy(tmp_path):
    port = free_port()
    conf = tmp_path / "tinyproxy.conf"
    conf.write_text(f"Port {port}\nListen 127.0.0.1\nTimeout 30\nAllow 127.0.0.1\nMaxClients 50\nLogLevel Error\nUser nobody\nGroup nogroup\n")
    with serving(["tinyproxy", "-d", "-c", str(conf)], port):
        yield f"127.0.0.1:{port}"


@pytest.fixture
def nghttpx(tmp_path, tinyproxy):
    """nghttpx --http2-proxy: h2c in front (prior knowledge), tinyproxy behind it."""
    port = free_port()
    host, _, backend = tinyproxy.rpartition(":")
    argv = ["nghttpx", "--http2-proxy", f"--frontend=127.0.0.1,{port};no-tls", f"--backend={host},{backend}", "--workers=1",
            f"--pid-file={tmp_path / 'nghttpx.pid'}", f"--errorlog-file={tmp_path / 'nghttpx.log'}", "--accesslog-file=/dev/null"]
    with serving(argv, port):
        yield f"127.0.0.1:{port}"


@pytest.fixture
async def echo_port(nursery):
    async def echo(stream) -> None:
        async with stream:
            async for data in stream:
                await stream.send_all(data)

    listeners = await nursery.start(trio.serve_tcp, echo, 0)
    return listeners[0].socket.getsockname()[1]


def _connect_config(upstream: str, cluster_protocol: str) -> dict:
    cfg = config(upstream, cluster_protocol)
    cfg["routes"]["main"]["virtual_hosts"][0]["routes"][0]["allow_connect"] = True
    return cfg


async def _http1_connect_echo(proxy, target: str) -> None:
    client = await connect(proxy.address("h1"))
    await client.send_all(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in head:
            head += await client.receive_some(4096)
    status_line, _, rest = head.partition(b"\r\n")
    assert status_line.split()[1] == b"200", head
    tunnel = rest.partition(b"\r\n\r\n")[2]
    payload = b"through the tunnel " * 20_000  # 380 kB: past every window on the way
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, payload)
        with trio.fail_after(10):
            while len(tunnel) < len(payload):
                data = await client.receive_some(65536)
                assert data, "the tunnel closed early"
                tunnel += data
    assert tunnel == payload
    await client.aclose()


@pytest.mark.parametrize("cluster_protocol", ["http1", "http2"])
async def test_an_http1_connect_is_tunnelled_through_a_forward_proxy_upstream(tmp_path, tinyproxy, nghttpx, echo_port, cluster_protocol):
    upstream = tinyproxy if cluster_protocol == "http1" else nghttpx  # http2: a stream of an h2c connection
    async with running_proxy(_connect_config(upstream, cluster_protocol), tmp_path) as proxy:
        await _http1_connect_echo(proxy, f"127.0.0.1:{echo_port}")
        await _http1_connect_echo(proxy, f"127.0.0.1:{echo_port}")  # again, on the same upstream connection (http2)


async def test_an_http2_connect_goes_up_as_a_connect_stream(tmp_path, nghttpx, echo_port):
    import h2.config
    import h2.connection
    import h2.events

    async with running_proxy(_connect_config(nghttpx, "http2"), tmp_path) as proxy:
        sock = await connect(proxy.address("h2"))
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        client.initiate_connection()
        client.send_headers(1, [(b":method", b"CONNECT"), (b":authority", f"127.0.0.1:{echo_port}".encode())])
        client.send_data(1, b"ping over HTTP/2 both ways")
        await sock.send_all(client.data_to_send())
        status = None
        echoed = b""
        with trio.fail_after(10):
            while len(echoed) < 26:
                data = await sock.receive_some(65536)
                assert data, "the proxy closed the connection"
                for event in client.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        status = dict(event.headers)[b":status"]
                    elif isinstance(event, h2.events.DataReceived):
                        echoed += event.data
                        client.acknowledge_received_data(event.flow_controlled_length, 1)
                    elif isinstance(event, h2.events.StreamReset):
                        raise AssertionError(f"reset: {event}")
                await sock.send_all(client.data_to_send())
        assert status == b"200" and echoed == b"ping over HTTP/2 both ways"
