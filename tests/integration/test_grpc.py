"""gRPC through a real `proxy run`, h2c on both sides, with grpcio as the client and the server:
the four call kinds with their trailers intact, an error status passed through, and
gRPC-shaped local replies when there is no upstream. Methods are generic handlers over raw
bytes, so no generated stubs are needed."""

from __future__ import annotations

from concurrent import futures

import grpc  # a test dependency (pyproject): a missing install must fail, not skip
import pytest
import trio

from tests.integration.harness import running_proxy

SERVICE = "test.Echo"


def _identity(data: bytes) -> bytes:
    return data


class _Echo:
    def unary(self, request: bytes, context) -> bytes:
        if request == b"fail":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "told to fail")
        context.set_trailing_metadata((("x-trailer", "kept"),))
        return b"echo:" + request

    def server_stream(self, request: bytes, context):
        for i in range(int(request)):
            yield b"part %d" % i

    def client_stream(self, requests, context) -> bytes:
        return b"|".join(requests)

    def bidi(self, requests, context):
        for r in requests:
            yield r.upper()


@pytest.fixture
def grpc_server():
    echo = _Echo()
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(echo.unary, _identity, _identity),
        "ServerStream": grpc.unary_stream_rpc_method_handler(echo.server_stream, _identity, _identity),
        "ClientStream": grpc.stream_unary_rpc_method_handler(echo.client_stream, _identity, _identity),
        "Bidi": grpc.stream_stream_rpc_method_handler(echo.bidi, _identity, _identity),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


def config(upstream: str) -> dict:
    return {
        "logging": {"level": "info"},
        "runtime": {"drain_timeout": "5s"},
        "listeners": [{"name": "grpc", "address": "127.0.0.1:0", "protocol": "http2", "route": "main"}],
        "clusters": [
            {"name": "echo", "protocol": "http2", "hosts": [{"address": upstream}]},
            {"name": "down", "protocol": "http2", "connect_timeout": "300ms", "hosts": [{"address": "127.0.0.1:1"}]},
        ],
        "routes": {
            "main": {
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": [
                            {"match": {"prefix": "/down."}, "cluster": "down"},
                            {"match": {"prefix": f"/{SERVICE}/"}, "cluster": "echo"},
                        ],
                    }
                ]
            }
        },
    }


def _calls(target: str) -> dict:
    """Every call kind through the proxy (grpcio is blocking: run in a thread)."""
    out: dict = {}
    with grpc.insecure_channel(target) as channel:
        unary = channel.unary_unary(f"/{SERVICE}/Unary", _identity, _identity)
        response, call = unary.with_call(b"hello", timeout=10)
        out["unary"] = response
        out["trailers"] = dict(call.trailing_metadata())
        try:
            unary(b"fail", timeout=10)
        except grpc.RpcError as err:
            out["fail"] = (err.code(), err.details())
        out["server_stream"] = list(channel.unary_stream(f"/{SERVICE}/ServerStream", _identity, _identity)(b"5", timeout=10))
        out["client_stream"] = channel.stream_unary(f"/{SERVICE}/ClientStream", _identity, _identity)(iter([b"a", b"b", b"c"]), timeout=10)
        out["bidi"] = list(channel.stream_stream(f"/{SERVICE}/Bidi", _identity, _identity)(iter([b"x", b"y"]), timeout=10))
        try:
            channel.unary_unary("/down.Svc/Call", _identity, _identity)(b"", timeout=10)
        except grpc.RpcError as err:
            out["down"] = err.code()
        try:
            channel.unary_unary("/nowhere.Svc/Call", _identity, _identity)(b"", timeout=10)
        except grpc.RpcError as err:
            out["no_route"] = err.code()
    return out


async def test_every_grpc_call_kind_through_the_proxy(tmp_path, grpc_server):
    async with running_proxy(config(grpc_server), tmp_path) as proxy:
        host, port = proxy.address("grpc")
        out = await trio.to_thread.run_sync(_calls, f"{host}:{port}")
    assert out["unary"] == b"echo:hello"
    assert out["trailers"].get("x-trailer") == "kept"  # trailers intact
    assert out["fail"] == (grpc.StatusCode.INVALID_ARGUMENT, "told to fail")
    assert out["server_stream"] == [b"part %d" % i for i in range(5)]
    assert out["client_stream"] == b"a|b|c"
    assert out["bidi"] == [b"X", b"Y"]
    assert out["down"] == grpc.StatusCode.UNAVAILABLE  # our local reply, gRPC-shaped
    assert out["no_route"] == grpc.StatusCode.UNIMPLEMENTED
