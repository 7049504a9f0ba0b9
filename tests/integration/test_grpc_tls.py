"""gRPC over TLS through a real `proxy run`: a grpcio client with TLS credentials (a trustme CA)
to a TLS listener (`http2`, or `http` choosing HTTP/2 by ALPN), the proxy forwarding to a
grpcio server in plaintext h2c, or over TLS (clusters[].tls, ALPN h2, the name verified)."""

from __future__ import annotations

from concurrent import futures
from pathlib import Path

import grpc
import pytest
import trio
import trustme

from tests.integration.harness import running_proxy
from tests.integration.test_grpc import SERVICE, _Echo, _identity, config

LISTENER_NAME = "grpc.example.test"
UPSTREAM_NAME = "echo.internal.test"


class Pki:
    def __init__(self, dir: Path) -> None:
        self.ca = trustme.CA()
        self.ca_pem = self.ca.cert_pem.bytes()
        self.ca_path = str(dir / "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_path)
        self.files: dict[str, tuple[str, str]] = {}
        self.pems: dict[str, tuple[bytes, bytes]] = {}
        for name in (LISTENER_NAME, UPSTREAM_NAME):
            cert = self.ca.issue_cert(name)
            chain = b"".join(p.bytes() for p in cert.cert_chain_pems)
            key = cert.private_key_pem.bytes()
            (dir / f"{name}.pem").write_bytes(chain)
            (dir / f"{name}.key").write_bytes(key)
            self.files[name] = (str(dir / f"{name}.pem"), str(dir / f"{name}.key"))
            self.pems[name] = (chain, key)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    (tmp_path / "pki").mkdir()
    return Pki(tmp_path / "pki")


def _server(credentials: grpc.ServerCredentials | None):
    echo = _Echo()
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(echo.unary, _identity, _identity),
        "ServerStream": grpc.unary_stream_rpc_method_handler(echo.server_stream, _identity, _identity),
        "Bidi": grpc.stream_stream_rpc_method_handler(echo.bidi, _identity, _identity),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, f"127.0.0.1:{port}"


def _tls_calls(target: str, ca_pem: bytes) -> dict:
    out: dict = {}
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    options = [("grpc.ssl_target_name_override", LISTENER_NAME)]  # the name the listener's certificate has
    with grpc.secure_channel(target, credentials, options) as channel:
        unary = channel.unary_unary(f"/{SERVICE}/Unary", _identity, _identity)
        response, call = unary.with_call(b"hello", timeout=10)
        out["unary"] = response
        out["trailers"] = dict(call.trailing_metadata())
        try:
            unary(b"fail", timeout=10)
        except grpc.RpcError as err:
            out["fail"] = (err.code(), err.details())
        out["server_stream"] = list(channel.unary_stream(f"/{SERVICE}/ServerStream", _identity, _identity)(b"5", timeout=10))
        out["bidi"] = list(channel.stream_stream(f"/{SERVICE}/Bidi", _identity, _identity)(iter([b"x", b"y"]), timeout=10))
    return out


def _untrusting_call(target: str) -> grpc.StatusCode:
    """A client that does not trust the proxy's CA gets no call through."""
    credentials = grpc.ssl_channel_credentials(root_certificates=trustme.CA().cert_pem.bytes())
    with grpc.secure_channel(target, credentials, [("grpc.ssl_target_name_override", LISTENER_NAME)]) as channel:
        try:
            channel.unary_unary(f"/{SERVICE}/Unary", _identity, _identity)(b"hello", timeout=5)
        except grpc.RpcError as err:
            return err.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("listener_protocol", ["http2", "http"])
@pytest.mark.parametrize("upstream", ["h2c", "tls", "tls-auto"])
async def test_grpc_over_tls_through_the_proxy(tmp_path, pki, listener_protocol, upstream):
    """`tls-auto`: the cluster's protocol is auto, and grpcio's ALPN pick (h2) decides."""
    upstream_tls = upstream != "h2c"
    if upstream_tls:
        chain, key = pki.pems[UPSTREAM_NAME]
        server, address = _server(grpc.ssl_server_credentials([(key, chain)]))
    else:
        server, address = _server(None)
    try:
        cfg = config(address)
        listener = cfg["listeners"][0]
        listener["protocol"] = listener_protocol
        cert, key_path = pki.files[LISTENER_NAME]
        listener["tls"] = {"certificates": [{"cert": cert, "key": key_path}]}
        if upstream_tls:
            cfg["clusters"][0]["tls"] = {"ca": pki.ca_path, "server_name": UPSTREAM_NAME}
        if upstream == "tls-auto":
            cfg["clusters"][0]["protocol"] = "auto"
        async with running_proxy(cfg, tmp_path) as proxy:
            host, port = proxy.address("grpc")
            out = await trio.to_thread.run_sync(_tls_calls, f"{host}:{port}", pki.ca_pem)
            assert await trio.to_thread.run_sync(_untrusting_call, f"{host}:{port}") == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0)
    assert out["unary"] == b"echo:hello"
    assert out["trailers"].get("x-trailer") == "kept"
    assert out["fail"] == (grpc.StatusCode.INVALID_ARGUMENT, "told to fail")
    assert out["server_stream"] == [b"part %d" % i for i in range(5)]
    assert out["bidi"] == [b"X", b"Y"]


async def test_grpc_to_an_upstream_whose_name_does_not_verify_is_unavailable(tmp_path, pki):
    chain, key = pki.pems[UPSTREAM_NAME]
    server, address = _server(grpc.ssl_server_credentials([(key, chain)]))
    try:
        cfg = config(address)
        cert, key_path = pki.files[LISTENER_NAME]
        cfg["listeners"][0]["tls"] = {"certificates": [{"cert": cert, "key": key_path}]}
        cfg["clusters"][0]["tls"] = {"ca": pki.ca_path, "server_name": "someone-else.internal.test"}
        async with running_proxy(cfg, tmp_path) as proxy:
            host, port = proxy.address("grpc")

            def call() -> tuple[grpc.StatusCode, str]:
                credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca_pem)
                with grpc.secure_channel(f"{host}:{port}", credentials, [("grpc.ssl_target_name_override", LISTENER_NAME)]) as channel:
                    try:
                        channel.unary_unary(f"/{SERVICE}/Unary", _identity, _identity)(b"hello", timeout=10)
                    except grpc.RpcError as err:
                        return err.code(), err.details()
                return grpc.StatusCode.OK, ""

            code, details = await trio.to_thread.run_sync(call)
    finally:
        server.stop(0)
    assert code == grpc.StatusCode.UNAVAILABLE  # a connect failure, gRPC-shaped
    assert "hostname mismatch" in details, details
