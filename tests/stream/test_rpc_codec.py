"""The stream layer takes a protocol it has never seen: the test-only RPC codec (rpc_codec.py),
multiplexed on one connection, through a real `proxy run`, the same router, filters,
clusters, timeouts and access log as HTTP/1.1."""

from __future__ import annotations

import json
import os
import struct
import sys

import pytest
import trio

from tests.integration.harness import connect, running_proxy
from tests.integration.http_upstream import HttpUpstream
from tests.stream.rpc_codec import DATA, END, RESET, RESPONSE, frame, parse_frames, request_frame

CODEC = "tests.stream.rpc_codec:RpcServerCodec"
ENV = {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # the worker imports the codec


class RpcClient:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.streams: dict[int, dict] = {}
        self.order: list[int] = []  # stream ids in the order their responses completed

    @classmethod
    async def open(cls, address) -> RpcClient:
        return cls(await connect(address))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def wait(self, *stream_ids: int, timeout: float = 10) -> None:
        with trio.fail_after(timeout):
            while not all(self.streams.get(s, {}).get("done") for s in stream_ids):
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError("proxy closed the connection")
                self.buffer += data
                for kind, sid, payload in parse_frames(self.buffer):
                    state = self.streams.setdefault(sid, {"body": b"", "done": False})
                    if kind == RESPONSE:
                        message = json.loads(payload)
                        state["status"] = message["status"]
                        state["headers"] = {n: v for n, v in message["headers"]}
                        if message["end"]:
                            state["done"] = True
                    elif kind == DATA:
                        state["body"] += payload
                    elif kind == END:
                        state["trailers"] = json.loads(payload) if payload else []
                        state["done"] = True
                    elif kind == RESET:
                        state["reset"] = struct.unpack("!I", payload)[0]
                        state["done"] = True
                    if state["done"] and sid not in self.order:
                        self.order.append(sid)


def rpc_config(a: str, b: str, **listener) -> dict:
    return {
        "logging": {"level": "info"},
        "runtime": {"drain_timeout": "5s"},
        "listeners": [{"name": "rpc", "address": "127.0.0.1:0", "protocol": CODEC, "route": "services", **listener}],
        "clusters": [
            {"name": "svc-a", "hosts": [{"address": a}]},
            {"name": "svc-b", "hosts": [{"address": b}]},
        ],
        "routes": {
            "services": {
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": [
                            {"match": {"prefix": "/", "headers": [{"name": "x-service", "exact": "a"}]}, "cluster": "svc-a"},
                            {"match": {"prefix": "/", "headers": [{"name": "x-service", "exact": "b"}]}, "cluster": "svc-b", "timeout": "300ms"},
                        ],
                    }
                ]
            }
        },
    }


@pytest.fixture
async def upstreams(nursery):
    a, b = HttpUpstream("a"), HttpUpstream("b")
    await a.start(nursery)
    await b.start(nursery)
    return a, b


async def test_requests_multiplex_on_one_connection_routed_by_header(tmp_path, upstreams):
    a, b = upstreams
    log = tmp_path / "access.log"
    config = rpc_config(a.address, b.address, access_log=[{"path": str(log), "format": "%protocol% %method% %request_uri% %response_code% %response_flags% %bytes_received% %upstream_host%"}])
    async with running_proxy(config, tmp_path, env=ENV) as proxy:
        client = await RpcClient.open(proxy.address("rpc"))
        # A slow call on stream 1 does not hold up a fast one on stream 3 of the same connection.
        await client.send(
            request_frame(1, "GET", "/slow/400", [("x-service", "a")])
            + request_frame(3, "GET", "/echo/fast", [("x-service", "b")])
            + request_frame(5, "POST", "/echo/upload", [("x-service", "a")], end=False)
            + frame(DATA, 5, b"hello ")
            + frame(DATA, 5, b"world")
            + frame(END, 5)
        )
        await client.wait(1, 3, 5)
        s1, s3, s5 = (client.streams[i] for i in (1, 3, 5))
        assert (s1["status"], s1["body"], s1["headers"]["x-upstream"]) == (200, b"slow", "a")
        assert s3["status"] == 200 and s3["headers"]["x-upstream"] == "b"
        assert json.loads(s3["body"])["target"] == "/echo/fast"
        echoed = json.loads(s5["body"])
        assert (echoed["method"], echoed["body_length"]) == ("POST", 11)
        assert client.order.index(3) < client.order.index(1)  # not head-of-line blocked
        assert a.connections >= 1 and b.requests == 1
        with trio.fail_after(5):
            while log.read_text().count("\n") < 3:
                await trio.sleep(0.02)
        lines = log.read_text().splitlines()
        assert f"TESTRPC/1 GET /echo/fast 200 - 0 {b.address}" in lines
        assert f"TESTRPC/1 POST /echo/upload 200 - 11 {a.address}" in lines


async def test_filters_local_replies_and_timeouts_apply_to_the_new_protocol(tmp_path, upstreams):
    a, b = upstreams
    filters = [
        {"type": "headers", "config": {"response_headers_to_add": [{"name": "x-via-filter", "value": "%listener%"}]}},
        {"type": "ip_access", "config": {"deny": ["127.0.0.2/32"]}},
    ]
    log = tmp_path / "access.log"
    config = rpc_config(a.address, b.address, filters=filters, access_log=[{"path": str(log), "format": "%request_uri% %response_code% %response_flags%"}])
    async with running_proxy(config, tmp_path, env=ENV) as proxy:
        client = await RpcClient.open(proxy.address("rpc"))
        await client.send(
            request_frame(1, "GET", "/echo", [("x-service", "a")])
            + request_frame(3, "GET", "/echo", [("x-service", "nobody")])  # no route: 404 NR
            + request_frame(5, "GET", "/slow/2000", [("x-service", "b")])  # route timeout 300ms: 504
            + request_frame(7, "GET", "/echo/after", [("x-service", "a")])
        )
        await client.wait(1, 3, 5, 7)
        s = client.streams
        assert s[1]["status"] == 200 and s[1]["headers"]["x-via-filter"] == "rpc"
        assert s[3]["status"] == 404 and s[3]["body"] == b"no route" and s[3]["headers"]["x-via-filter"] == "rpc"
        assert s[5]["status"] == 504 and s[5]["body"] == b"upstream request timeout"
        assert s[7]["status"] == 200
        with trio.fail_after(5):
            while log.read_text().count("\n") < 4:
                await trio.sleep(0.02)
        assert sorted(log.read_text().splitlines()) == ["/echo 200 -", "/echo 404 NR", "/echo/after 200 -", "/slow/2000 504 UT"]
    text = proxy.log()
    assert "stream.failed" not in text and "connection.failed" not in text


async def test_a_client_reset_cancels_only_its_stream(tmp_path, upstreams):
    a, b = upstreams
    async with running_proxy(rpc_config(a.address, b.address), tmp_path, env=ENV) as proxy:
        client = await RpcClient.open(proxy.address("rpc"))
        await client.send(request_frame(1, "GET", "/slow/1500", [("x-service", "a")]) + request_frame(3, "GET", "/slow/300", [("x-service", "a")]))
        await trio.sleep(0.2)
        await client.send(frame(RESET, 1, struct.pack("!I", 8)))
        await client.wait(3)
        assert client.streams[3]["status"] == 200
        assert 1 not in client.streams or "status" not in client.streams[1]
        # The connection serves on.
        await client.send(request_frame(5, "GET", "/echo", [("x-service", "b")]))
        await client.wait(5)
        assert client.streams[5]["status"] == 200


async def test_a_broken_frame_closes_that_connection_only(tmp_path, upstreams):
    a, b = upstreams
    async with running_proxy(rpc_config(a.address, b.address), tmp_path, env=ENV) as proxy:
        good = await RpcClient.open(proxy.address("rpc"))
        bad = await RpcClient.open(proxy.address("rpc"))
        await bad.send(struct.pack("!I", 1 << 30))  # a length no frame may have
        with trio.fail_after(5):
            assert await bad.stream.receive_some(100) == b""
        await good.send(request_frame(1, "GET", "/echo", [("x-service", "a")]))
        await good.wait(1)
        assert good.streams[1]["status"] == 200
    assert "connection.protocol_error" in proxy.log()


def test_an_unknown_codec_is_a_config_error(tmp_path):
    import subprocess

    import yaml

    config = rpc_config("127.0.0.1:1", "127.0.0.1:2")
    config["listeners"][0]["protocol"] = "tests.stream.rpc_codec:Nope"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "proxy", "check", "-c", str(path)], capture_output=True, text=True, env={**os.environ, **ENV})
    assert result.returncode == 1
    assert "listeners[0].protocol" in result.stdout + result.stderr and "has no Nope" in result.stdout + result.stderr
