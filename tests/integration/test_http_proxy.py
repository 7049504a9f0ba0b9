"""The HTTP/1.1 proxy through a real `proxy run`, with curl, raw sockets and an h11 upstream."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess

import h11
import pytest
import trio

from tests.integration.harness import admin_get, connect, dead_address, running_proxy
from tests.integration.http_upstream import PATTERN, HttpUpstream, http_config


class Client:
    """A client on one TCP connection to the proxy: exact bytes out; responses parsed by h11
    (a fresh h11 state per response, so raw and pipelined requests parse too)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def open(cls, address) -> Client:
        return cls(await connect(address))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def response(self, method: str = "GET", timeout: float = 10) -> tuple[h11.Response, bytes]:
        """Read one response (head + body) to a request with `method`."""
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=1 << 20)
        conn.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
        if self.buffer:  # (receive_data(b"") would mean EOF to h11)
            conn.receive_data(self.buffer)
        body = bytearray()
        head = None
        with trio.fail_after(timeout):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await self.stream.receive_some(65536))
                    continue
                if isinstance(event, h11.InformationalResponse):
                    continue
                if isinstance(event, h11.Response):
                    head = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    self.buffer = conn.trailing_data[0]
                    return head, bytes(body)
                elif isinstance(event, h11.ConnectionClosed):
                    raise EOFError("connection closed before a response")

    async def request(self, method: str, target: str, headers=(), body: bytes = b"") -> tuple[h11.Response, bytes]:
        lines = [f"{method} {target} HTTP/1.1", "host: example.com", *(f"{k}: {v}" for k, v in headers)]
        if body:
            lines.append(f"content-length: {len(body)}")
        await self.stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        return await self.response(method)

    async def closed(self, timeout: float = 5) -> bool:
        with trio.fail_after(timeout):
            try:
                while await self.stream.receive_some():
                    pass
            except trio.BrokenResourceError:
                pass
        return True


def header(response: h11.Response, name: str) -> str | None:
    for k, v in response.headers:
        if k.decode().lower() == name:
            return v.decode()
    return None


async def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(["curl", "-sS", "--max-time", "20", *args], capture_stdout=True, capture_stderr=True, check=False)


def url(proxy, path: str = "/") -> str:
    host, port = proxy.address("http")
    return f"http://{host}:{port}{path}"


@pytest.fixture
async def upstream(nursery):
    up = HttpUpstream("a")
    await up.start(nursery)
    return up


# ---------------------------------------------------------------- the bundled config


async def test_default_config_answers_direct_response(tmp_path):
    import yaml

    config = yaml.safe_load(open("config/proxy.yaml"))
    for listener in config["listeners"]:
        listener["address"] = "127.0.0.1:0"
    async with running_proxy(config, tmp_path) as proxy:
        result = await curl("-i", url(proxy))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(b"HTTP/1.1 200 OK\r\n")
        assert result.stdout.endswith(b"\r\n\r\nproxy is up\n")
        assert '"GET / HTTP/1.1" 200' in await proxy.wait_log('"GET / HTTP/1.1" 200')  # the access log line, on stdout


# ---------------------------------------------------------------- forwarding


async def test_get_is_forwarded_with_proxy_headers_and_without_hop_by_hop(tmp_path, upstream):
    async with running_proxy(http_config([upstream.address], http={"via": "1.1 proxy"}), tmp_path) as proxy:
        client = await Client.open(proxy.address("http"))
        response, body = await client.request(
            "GET",
            "/echo?x=1",
            headers=[
                ("connection", "keep-alive, x-private"),
                ("x-private", "secret"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("proxy-connection", "keep-alive"),
                ("x-forwarded-for", "10.1.1.1"),
                ("x-custom", "kept"),
            ],
        )
        assert response.status_code == 200 and response.reason == b"OK"
        seen = json.loads(body)
        names = {k.lower(): v for k, v in seen["headers"]}
        assert seen["target"] == "/echo?x=1"
        assert names["host"] == "example.com"
        assert names["x-custom"] == "kept"
        for hop in ("x-private", "keep-alive", "te", "proxy-connection"):
            assert hop not in names, hop
        assert names["x-forwarded-for"] == "10.1.1.1, 127.0.0.1"
        assert names["x-forwarded-proto"] == "http"
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", names["x-request-id"])
        assert names["via"] == "1.1 proxy"
        assert header(response, "via") == "1.1 proxy"
        assert header(response, "x-upstream") == "a"


async def test_x_forwarded_host_added_once_kept_if_sent_and_dropped_if_hop_by_hop(tmp_path, upstream):
    async with running_proxy(http_config([upstream.address]), tmp_path) as proxy:
        client = await Client.open(proxy.address("http"))

        async def forwarded_hosts(headers) -> list[str]:
            response, body = await client.request("GET", "/echo", headers=headers)
            assert response.status_code == 200
            return [v for k, v in json.loads(body)["headers"] if k.lower() == "x-forwarded-host"]

        assert await forwarded_hosts([]) == ["example.com"]  # the Host header
        assert await forwarded_hosts([("X-Forwarded-Host", "front.example")]) == ["front.example"]
        # Named in Connection, the client's is hop-by-hop: dropped, and ours added instead.
        assert await forwarded_hosts([("connection", "x-forwarded-host"), ("x-forwarded-host", "front.example")]) == ["example.com"]


async def test_keep_alive_reuses_both_connections_and_pipelining_keeps_order(tmp_path, upstream):
    async with running_proxy(http_config([upstream.address]), tmp_path) as proxy:
        client = await Client.open(proxy.address("http"))
        conns = set()
        for i in range(5):
            response, body = await client.request("GET", f"/echo/{i}")
            assert json.loads(body)["target"] == f"/echo/{i}"
            conns.add(header(response, "x-conn"))
        assert len(conns) == 1, "the pooled upstream connection is reused"
        # three pipelined requests in one write: answered in order
        raw = b"".join(b"GET /echo/p%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(3))
        await client.send_raw(raw)
        for i in range(3):
            response, body = await client.response()
            assert json.loads(body)["target"] == f"/echo/p{i}"
        assert upstream.connections == 1


async def test_every_pipelined_response_arrives_before_the_proxy_closes(tmp_path, upstream):
    """A client that pipelines and then shuts its side, or ends with `Connection: close`, gets
    every response, proxied and local, before the proxy closes (end to end; the queued-send
    flush before close is pinned in tests/http/test_send_coalescing.py, where every send is
    queued)."""
    routes = [
        {"match": {"path": "/local"}, "direct_response": {"status": 200, "body": "here"}},
        {"match": {"prefix": "/"}, "cluster": "up"},
    ]
    async with running_proxy(http_config([upstream.address], routes), tmp_path) as proxy:
        for targets, last in (
            (["/echo/a", "/echo/b", "/echo/c"], b""),
            (["/local", "/echo/d", "/local"], b""),
            (["/echo/e", "/local"], b"Connection: close\r\n"),
            (["/local", "/echo/f"], b"Connection: close\r\n"),
        ):
            client = await Client.open(proxy.address("http"))
            heads = [b"GET %s HTTP/1.1\r\nHost: x\r\n" % t.encode() for t in targets]
            heads[-1] += last
            await client.send_raw(b"\r\n".join(heads) + b"\r\n")
            if not last:
                await client.stream.send_eof()
            for target in targets:
                response, body = await client.response()
                assert response.status_code == 200
                assert body == b"here" if target == "/local" else json.loads(body)["target"] == target
            assert await client.closed()


async def test_post_bodies_content_length_and_chunked_both_ways(tmp_path, upstream):
    async with running_proxy(http_config([upstream.address]), tmp_path) as proxy:
        client = await Client.open(proxy.address("http"))
        payload = PATTERN * 3
        response, body = await client.request("POST", "/sink", body=payload)
        seen = json.loads(body)
        assert (seen["body_length"], seen["body_sha256"]) == (len(payload), hashlib.sha256(payload).hexdigest())
        # chunked upload, raw bytes
        await client.send_raw(
            b"POST /sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        response, body = await client.response()
        assert json.loads(body)["body_length"] == 11
        assert ["Transfer-Encoding", "chunked"] in json.loads(body)["headers"] or [
            "transfer-encoding",
            "chunked",
        ] in json.loads(body)["headers"]
        # chunked download passes through
        response, body = await client.request("GET", "/chunked/200000")
        assert header(response, "transfer-encoding") == "chunked"
        assert body == (PATTERN * 4)[:200000]


async def test_head_204_304_have_no_body_and_reason_phrases(tmp_path, upstream):
    async with running_proxy(http_config([upstream.address]), tmp_path) as proxy:
        client = await Client.open(proxy.address("http"))
        response, body = await client.request("HEAD", "/echo")
        assert response.status_code == 200 and body == b"" and int(header(response, "content-length")) > 0
        for status, reason in ((204, b"No Content"), (304, b"Not Modified")):
            response, body = await client.request("GET", f"/status/{status}")
            assert (response.status_code, response.reason, body) == (status, reason, b"")
        response, _ = await client.request("GET", "/echo")
        assert response.status_code == 200  # the connection is still in sync


async def test_curl_expect_100_continue_upload(tmp_path, upstream):
    async with running_proxy(http_config([upstream.address]), tmp_path) as proxy:
        payload = tmp_path / "payload"
        payload.write_bytes(PATTERN * 16)  # 1 MiB: curl sends Expect: 100-continue
        result = await curl("-H", "Expect: 100-continue", "--data-binary", f"@{payload}", url(proxy, "/sink"))
        assert result.returncode == 0, result.stderr
        seen = json.loads(result.stdout)
        assert seen["body_length"] == len(PATTERN) * 16
        assert seen["body_sha256"] == hashlib.sha256(PATTERN * 16).hexdigest()
        assert all(k.lower() != "expect" for k, _ in seen["headers"])


# ---------------------------------------------------------------- routing


async def test_routes_direct_response_redirect_rewrite_headers_and_no_route(tmp_path, upstream):
    routes = [
        {"match": {"path": "/healthz"}, "direct_response": {"status": 200, "body": "ok"}},
        {"match": {"prefix": "/old/"}, "redirect": {"path": "/new", "code": 302}},
        {
            "match": {"prefix": "/api/", "headers": [{"name": "x-canary", "exact": "1"}]},
            "cluster": "up",
            "prefix_rewrite": "/echo/canary/",
            "request_headers_to_add": [{"name": "x-upstream-host", "value": "%upstream_host%"}],
            "response_headers_to_add": [{"name": "x-route", "value": "canary"}],
            "response_headers_to_remove": ["x-conn"],
        },
        {"match": {"prefix": "/api/"}, "cluster": "up", "prefix_rewrite": "/echo/"},
    ]
    async with running_proxy(http_config([upstream.address], routes=routes), tmp_path) as proxy:
        client = await Client.open(proxy.address("http"))
        response, body = await client.request("GET", "/healthz")
        assert (response.status_code, body) == (200, b"ok")
        response, _ = await client.request("GET", "/old/x")
        assert response.status_code == 302 and header(response, "location") == "http://example.com/new"
        response, body = await client.request("GET", "/api/v1?q=2", headers=[("x-canary", "1")])
        seen = json.loads(body)
        assert seen["target"] == "/echo/canary/v1?q=2"
        assert dict((k.lower(), v) for k, v in seen["headers"])["x-upstream-host"] == upstream.address
        assert header(response, "x-route") == "canary" and header(response, "x-conn") is None
        response, body = await client.request("GET", "/api/v1")
        assert json.loads(body)["target"] == "/echo/v1"
        response, body = await client.request("GET", "/nowhere")
        assert response.status_code == 404  # (its NR flag is checked by the access log test)


# ---------------------------------------------------------------- bad requests never reach the upstream


SMUGGLING = [
    b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"POST /sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
    b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Bad : a\r\n\r\n",
    b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n",
]


@pytest.mark.parametrize("raw", SMUGGLING, ids=["cl+te", "two-cl", "bad-chunk", "obs-fold", "space-colon", "nul"])
async def test_malformed_requests_get_400_and_never_reach_upstream(tmp_path, upstream, raw):
    async with running_proxy(http_config([upstream.address]), tmp_path) as proxy:
        client = await Client.open(proxy.address("http"))
        await client.send_raw(raw)
        response, _ = await client.response()
        assert response.status_code == 400
        assert header(response, "connection") == "close"
        assert await client.closed()
        assert upstream.requests == 0


async def test_limits_431_414_413_and_header_timeout_408(tmp_path, upstream):
    http = {"max_header_count": 20, "max_request_line": 1024, "max_body_bytes": 1000, "request_header_timeout": "500ms"}
    async with running_proxy(http_config([upstream.address], http=http), tmp_path) as proxy:
        cases = [
            (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(30)) + b"\r\n", 431),
            (b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
            (b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n", 413),
        ]
        for raw, status in cases:
            client = await Client.open(proxy.address("http"))
            await client.send_raw(raw)
            response, _ = await client.response()
            assert response.status_code == status, raw[:40]
        client = await Client.open(proxy.address("http"))
        await client.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished
        start = trio.current_time()
        response, _ = await client.response()
        assert response.status_code == 408
        assert 0.4 < trio.current_time() - start < 3
        assert upstream.requests == 0


# ---------------------------------------------------------------- upstream failures


async def test_connect_failure_502_timeout_504_reset_502_overflow_503(tmp_path, nursery):
    slow = HttpUpstream("slow")
    await slow.start(nursery)
    config = http_config([slow.address], cluster={"max_connections": 1, "max_pending_requests": 1})
    config["clusters"].append({"name": "dead", "hosts": [{"address": dead_address()}]})
    routes = config["routes"]["main"]["virtual_hosts"][0]["routes"]
    routes[:0] = [
        {"match": {"prefix": "/dead"}, "cluster": "dead"},
        {"match": {"path": "/slow/2000"}, "cluster": "up", "timeout": "300ms"},
    ]
    async with running_proxy(config, tmp_path) as proxy:
        client = await Client.open(proxy.address("http"))
        response, _ = await client.request("GET", "/dead")
        assert response.status_code == 502
        response, _ = await client.request("GET", "/slow/2000")
        assert response.status_code == 504
        # the request was read in full: the 504 keeps the connection, as Envoy does
        assert dict(response.headers).get(b"connection") != b"close"
        response, _ = await client.request("GET", "/dead")
        assert response.status_code == 502
        client = await Client.open(proxy.address("http"))
        response, _ = await client.request("GET", "/reset")
        assert response.status_code == 502
        # one connection allowed, one request may wait: the third concurrent one overflows
        statuses = []

        async def one(path):
            c = await Client.open(proxy.address("http"))
            r, _ = await c.request("GET", path)
            statuses.append(r.status_code)

        async with trio.open_nursery() as n:
            n.start_soon(one, "/slow/250")
            await trio.sleep(0.05)
            n.start_soon(one, "/slow/250")
            await trio.sleep(0.05)
            n.start_soon(one, "/slow/250")
        assert sorted(statuses) == [200, 200, 503]


async def test_retry_on_5xx_succeeds_and_mid_body_close_cuts_the_client(tmp_path, upstream):
    routes = [
        {"match": {"prefix": "/flaky/"}, "cluster": "up", "retry": {"on": ["5xx"], "attempts": 2}},
        {"match": {"prefix": "/"}, "cluster": "up"},
    ]
    async with running_proxy(http_config([upstream.address], routes=routes), tmp_path) as proxy:
        client = await Client.open(proxy.address("http"))
        response, _ = await client.request("GET", "/flaky/2")
        assert response.status_code == 200
        assert upstream.flaky_served == 2
        client = await Client.open(proxy.address("http"))
        with pytest.raises((h11.RemoteProtocolError, EOFError, trio.BrokenResourceError)):
            await client.request("GET", "/close-mid-body")


# ---------------------------------------------------------------- big transfers, bounded memory


def _rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def test_1gib_upload_and_download_with_bounded_memory(tmp_path, upstream):
    gib = 1 << 30
    async with running_proxy(http_config([upstream.address]), tmp_path) as proxy:
        peak = 0
        done = trio.Event()

        async def watch():
            nonlocal peak
            while not done.is_set():
                peak = max(peak, _rss_kb(proxy.pid))
                await trio.sleep(0.05)

        async with trio.open_nursery() as n:
            n.start_soon(watch)
            result = await curl("-o", "/dev/null", "-w", "%{size_download}", url(proxy, f"/bytes/{gib}"))
            assert result.returncode == 0, result.stderr
            assert int(result.stdout) == gib
            big = tmp_path / "big"
            with open(big, "wb") as f:
                f.truncate(gib)  # sparse 1 GiB of zeros
            result = await curl("-T", str(big), "-H", "Expect:", url(proxy, "/sink"))
            assert result.returncode == 0, result.stderr
            assert json.loads(result.stdout)["body_length"] == gib
            done.set()
        assert peak < 150_000, f"proxy RSS peaked at {peak} kB"


# ---------------------------------------------------------------- WebSocket


async def websocket_echo(request) -> None:
    """A trio-websocket handler: every message back to its sender."""
    from trio_websocket import ConnectionClosed

    ws = await request.accept()
    try:
        while True:
            await ws.send_message(await ws.get_message())
    except ConnectionClosed:
        pass


async def test_websocket_echo_through_the_proxy(tmp_path, nursery):
    from trio_websocket import open_websocket_url, serve_websocket

    server = await nursery.start(serve_websocket, websocket_echo, "127.0.0.1", 0, None)
    ws_address = f"127.0.0.1:{server.port}"
    async with running_proxy(http_config([ws_address]), tmp_path) as proxy:
        host, port = proxy.address("http")
        async with open_websocket_url(f"ws://{host}:{port}/ws") as ws:
            for i in range(200):
                await ws.send_message(f"message {i}")
            for i in range(200):
                assert await ws.get_message() == f"message {i}"


# ---------------------------------------------------------------- access log and load


async def test_access_log_file_has_flags_and_wrk_runs_clean(tmp_path, upstream):
    log_path = tmp_path / "access.log"
    config = http_config([upstream.address], access_log=[{"path": str(log_path)}])
    config["routes"]["main"]["virtual_hosts"][0]["routes"].insert(0, {"match": {"path": "/nothing"}, "direct_response": {"status": 204}})
    config["routes"]["main"]["virtual_hosts"][0]["domains"] = ["example.com"]
    async with running_proxy(config, tmp_path) as proxy:
        client = await Client.open(proxy.address("http"))
        await client.request("GET", "/echo", headers=[("user-agent", "test-agent")])
        await client.request("GET", "/nothing")
        client2 = await Client.open(proxy.address("http"))
        await client2.send_raw(b"GET /x HTTP/1.1\r\nHost: other.test\r\n\r\n")
        response, _ = await client2.response()
        assert response.status_code == 404
        await trio.sleep(0.2)
        lines = log_path.read_text().splitlines()
        assert '"GET /echo HTTP/1.1" 200 -' in lines[0] and '"test-agent"' in lines[0] and upstream.address in lines[0]
        assert '"GET /nothing HTTP/1.1" 204' in lines[1]
        assert '"GET /x HTTP/1.1" 404 NR' in lines[2]
        host, port = proxy.address("http")
        result = await trio.run_process(
            ["wrk", "-t1", "-c10", "-d1s", "-H", "Host: example.com", f"http://{host}:{port}/echo"], capture_stdout=True, check=False
        )
        out = result.stdout.decode()
        assert result.returncode == 0, out
        assert "Socket errors" not in out and "Non-2xx" not in out, out


async def test_access_log_bytes_count_bodies_as_envoy_does(tmp_path, upstream):
    """%bytes_received% and %bytes_sent% are body bytes (Envoy's BYTES_RECEIVED/BYTES_SENT),
    not the bytes of the heads on the wire: a 12-byte body logs 12."""
    log_path = tmp_path / "access.log"
    config = http_config([upstream.address], access_log=[{"path": str(log_path), "format": "%method% %response_code% %bytes_received% %bytes_sent%"}])
    routes = config["routes"]["main"]["virtual_hosts"][0]["routes"]
    routes.insert(0, {"match": {"path": "/direct"}, "direct_response": {"status": 200, "body": "twelve bytes"}})
    async with running_proxy(config, tmp_path) as proxy:
        client = await Client.open(proxy.address("http"))
        _, body = await client.request("GET", "/direct")
        assert body == b"twelve bytes"
        _, echoed = await client.request("POST", "/echo", body=b"hello")  # the upstream echoes a JSON description
        await client.send_raw(b"POST /echo HTTP/1.1\r\nhost: example.com\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n")
        _, chunked = await client.response("POST")
        await trio.sleep(0.2)
        lines = log_path.read_text().splitlines()
        assert lines[0] == "GET 200 0 12"
        assert lines[1] == f"POST 200 5 {len(echoed)}"
        assert lines[2] == f"POST 200 8 {len(chunked)}"


# ---------------------------------------------------------------- more of the contract


async def test_h2c_upgrade_is_never_forwarded_and_connection_goes_on(tmp_path, upstream):
    async with running_proxy(http_config([upstream.address]), tmp_path) as proxy:
        client = await Client.open(proxy.address("http"))
        await client.send_raw(
            b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        )
        response, body = await client.response()
        assert response.status_code == 200
        names = {k.lower() for k, _ in json.loads(body)["headers"]}
        assert not names & {"upgrade", "http2-settings", "connection"}
        response, body = await client.request("GET", "/echo/after")  # still HTTP/1.1
        assert json.loads(body)["target"] == "/echo/after"


async def test_connect_refused_unless_the_route_allows_it(tmp_path, upstream):
    async with running_proxy(http_config([upstream.address]), tmp_path) as proxy:
        client = await Client.open(proxy.address("http"))
        await client.send_raw(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        response, _ = await client.response()
        assert response.status_code == 403
        assert upstream.requests == 0


async def test_max_requests_per_connection_closes_after_the_last(tmp_path, upstream):
    async with running_proxy(http_config([upstream.address], http={"max_requests_per_connection": 2}), tmp_path) as proxy:
        client = await Client.open(proxy.address("http"))
        response, _ = await client.request("GET", "/echo")
        assert header(response, "connection") is None
        response, _ = await client.request("GET", "/echo")
        assert header(response, "connection") == "close"
        assert await client.closed()


async def test_filters_custom_dotted_path_fault_and_rate_limit(tmp_path, upstream):
    filters = [
        {"type": "examples.filters.add_header:AddHeader", "config": {"name": "x-powered-by", "value": "proxy"}},
        {"type": "fault", "config": {"header_control": True}},
        {"type": "local_rate_limit", "config": {"max_tokens": 2, "tokens_per_fill": 2, "fill_interval": "1h"}},
    ]
    async with running_proxy(http_config([upstream.address], filters=filters), tmp_path) as proxy:
        client = await Client.open(proxy.address("http"))
        response, _ = await client.request("GET", "/echo")
        assert response.status_code == 200 and header(response, "x-powered-by") == "proxy"
        response, body = await client.request("GET", "/echo", headers=[("x-fault-abort", "503")])
        assert response.status_code == 503 and header(response, "x-powered-by") == "proxy"
        response, _ = await client.request("GET", "/echo")  # the second token (the abort came first)
        assert response.status_code == 200
        response, _ = await client.request("GET", "/echo")
        assert response.status_code == 429 and header(response, "retry-after")
        assert upstream.requests == 2  # the aborted and the limited never reached it


async def test_per_try_timeout_retries_then_504(tmp_path, upstream):
    routes = [{"match": {"prefix": "/"}, "cluster": "up", "timeout": "2s", "retry": {"on": ["5xx"], "attempts": 2, "per_try_timeout": "200ms"}}]
    async with running_proxy(http_config([upstream.address], routes=routes), tmp_path) as proxy:
        client = await Client.open(proxy.address("http"))
        start = trio.current_time()
        response, _ = await client.request("GET", "/slow/1000")
        assert response.status_code == 504
        assert 0.5 < trio.current_time() - start < 1.9  # three tries of 200 ms, not the 2 s route timeout
        assert upstream.requests == 3


async def test_route_timeout_counts_from_the_end_of_a_streamed_request(tmp_path, upstream):
    """As Envoy's: an upload that keeps moving may take longer than the route timeout; one that
    stalls for the route timeout gets a 504."""
    routes = [{"match": {"prefix": "/"}, "cluster": "up", "timeout": "400ms"}]
    async with running_proxy(http_config([upstream.address], routes=routes), tmp_path) as proxy:
        client = await Client.open(proxy.address("http"))
        await client.send_raw(b"POST /sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(6):  # 1.2 s of upload in all, 200 ms between chunks
            await client.send_raw(b"5\r\nhello\r\n")
            await trio.sleep(0.2)
        await client.send_raw(b"0\r\n\r\n")
        response, body = await client.response("POST")
        assert response.status_code == 200 and json.loads(body)["body_length"] == 30

        stalled = await Client.open(proxy.address("http"))
        start = trio.current_time()
        await stalled.send_raw(b"POST /sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        response, _ = await stalled.response("POST")
        assert response.status_code == 504
        assert 0.35 < trio.current_time() - start < 2.0


async def test_sigusr1_reopens_the_access_log(tmp_path, upstream):
    import signal as _signal

    log_path = tmp_path / "access.log"
    async with running_proxy(http_config([upstream.address], access_log=[{"path": str(log_path)}]), tmp_path) as proxy:
        client = await Client.open(proxy.address("http"))
        await client.request("GET", "/echo/one")
        log_path.rename(tmp_path / "access.log.1")
        proxy.signal(_signal.SIGUSR1)
        await trio.sleep(0.3)
        await client.request("GET", "/echo/two")
        await trio.sleep(0.2)
        assert "/echo/one" in (tmp_path / "access.log.1").read_text()
        assert "/echo/two" in log_path.read_text()


async def test_upstream_pool_max_requests_and_idle_timeout(tmp_path, upstream):
    config = http_config([upstream.address], cluster={"max_requests_per_connection": 2, "idle_timeout": "300ms"})
    async with running_proxy(config, tmp_path) as proxy:
        client = await Client.open(proxy.address("http"))
        conns = []
        for _ in range(4):
            response, _ = await client.request("GET", "/echo")
            conns.append(header(response, "x-conn"))
        assert conns[0] == conns[1] != conns[2] == conns[3]  # retired after 2 requests
        await trio.sleep(1.6)  # idle past 300 ms: the sweeper closed it
        response, _ = await client.request("GET", "/echo")
        assert header(response, "x-conn") not in conns
        assert upstream.connections == 3


async def test_sigterm_closes_idle_keep_alive_and_finishes_in_flight_with_close(tmp_path, upstream):
    import signal as _signal

    config = http_config([upstream.address])
    config["runtime"]["drain_timeout"] = "20s"
    async with running_proxy(config, tmp_path) as proxy:
        idle = await Client.open(proxy.address("http"))
        await idle.request("GET", "/echo")  # now idle in keep-alive
        busy = await Client.open(proxy.address("http"))
        await busy.send_raw(b"GET /slow/800 HTTP/1.1\r\nHost: x\r\n\r\n")
        await trio.sleep(0.2)
        start = trio.current_time()
        proxy.signal(_signal.SIGTERM)
        assert await idle.closed()  # closed at once, not after drain_timeout
        response, body = await busy.response()
        assert (response.status_code, body) == (200, b"slow")
        assert header(response, "connection") == "close"
        assert await proxy.wait(timeout=5) == 0
        assert trio.current_time() - start < 3


async def test_an_http10_client_gets_a_chunked_upstream_body_close_delimited(tmp_path, upstream):
    """HTTP/1.0 knows no chunked coding (RFC 9112 §7): a chunked upstream response goes to an
    HTTP/1.0 client as a body that ends at the close, whole."""
    async with running_proxy(http_config([upstream.address]), tmp_path) as proxy:
        stream = await connect(proxy.address("http"))
        await stream.send_all(b"GET /chunked/200000 HTTP/1.0\r\nHost: example.com\r\n\r\n")
        data = b""
        with trio.fail_after(10):
            while True:
                piece = await stream.receive_some(65536)
                if not piece:
                    break
                data += piece
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        lower = head.lower()
        assert b"transfer-encoding" not in lower and b"connection: close" in lower
        assert len(body) == 200000


async def test_idle_keep_alive_connections_park_wake_and_time_out(tmp_path, upstream):
    """An idle keep-alive connection parks (no task; counted in downstream_cx_parked) and its
    next request, pipelined ones included, is served on the same connection; a parked one
    still closes at its idle timeout, and a SIGTERM drain closes parked ones at once."""
    admin = str(tmp_path / "admin.sock")
    config = http_config([upstream.address], http={"idle_timeout": "2s"})
    config["admin"] = {"socket": admin}
    async with running_proxy(config, tmp_path) as proxy:

        async def gauges() -> tuple[int, int]:
            counters = json.loads(await admin_get(admin, "/stats"))
            return counters["listener.http.downstream_cx_parked"], counters["listener.http.downstream_cx_active"]

        clients = [await Client.open(proxy.address("http")) for _ in range(3)]
        for i, client in enumerate(clients):
            response, body = await client.request("GET", f"/echo/{i}")
            assert response.status_code == 200
        idle_from = trio.current_time()
        await trio.sleep(0.6)
        assert await gauges() == (3, 3)
        response, body = await clients[0].request("GET", "/echo/woken")
        assert json.loads(body)["target"] == "/echo/woken"
        assert await gauges() == (2, 3)
        await trio.sleep(0.6)  # parks again; now two pipelined requests in one write wake it
        assert (await gauges())[0] == 3
        await clients[0].send_raw(b"GET /echo/p0 HTTP/1.1\r\nHost: x\r\n\r\nGET /echo/p1 HTTP/1.1\r\nHost: x\r\n\r\n")
        for i in range(2):
            response, body = await clients[0].response()
            assert json.loads(body)["target"] == f"/echo/p{i}"
        assert await clients[1].closed(timeout=5)  # the idle timeout, parked all along
        assert 1.9 <= trio.current_time() - idle_from < 3.0
        assert await clients[2].closed(timeout=5)
        await trio.sleep(0.6)
        parked, active = await gauges()
        assert active == 1 + 0 and parked == 1  # clients[0], parked again (the admin's own is not here)
        proxy.signal(signal.SIGTERM)  # a drain closes parked connections at once
        assert await clients[0].closed(timeout=3)
        assert await proxy.wait(10) == 0


async def test_out_of_fds_for_an_upstream_socket_is_a_503_uo(tmp_path, upstream):
    """A request whose upstream socket finds no fd (the worker's RLIMIT_NOFILE used up by
    idle clients) waits for one within the connect timeout, then gets 503 with flag UO; the
    upstream never sees it; once fds come back the same connection is served again."""
    log_path = tmp_path / "access.log"
    config = http_config([upstream.address], cluster={"max_requests_per_connection": 1}, access_log=[{"path": str(log_path)}])
    async with running_proxy(config, tmp_path, nofile=60) as proxy:
        client = await Client.open(proxy.address("http"))
        response, _ = await client.request("GET", "/echo/first")
        assert response.status_code == 200
        idle = []
        for _ in range(70):  # more than there are fds: the rest wait in the backlog
            idle.append(await connect(proxy.address("http")))
        await trio.sleep(0.5)
        before = upstream.connections
        response, body = await client.request("GET", "/echo/starved")
        assert response.status_code == 503 and b"out of file descriptors" in body
        assert upstream.connections == before
        for stream in idle:
            await stream.aclose()
        await trio.sleep(0.3)
        response, _ = await client.request("GET", "/echo/after")
        assert response.status_code == 200
        with trio.fail_after(5):
            while "/echo/after" not in log_path.read_text():
                await trio.sleep(0.05)
        starved = [line for line in log_path.read_text().splitlines() if "/echo/starved" in line]
        assert len(starved) == 1 and " 503 " in starved[0] and " UO " in starved[0], starved
        assert "Traceback" not in proxy.log() and "worker.out_of_fds" in proxy.log()
