"""gRPC's share of the router, protocol-neutral: shaped local replies, grpc-timeout, %grpc_status%.
Unit tests of proxy.http.grpc, then calls through a real `proxy run` on the test RPC codec."""

from __future__ import annotations

import pytest
import trio

from proxy.http import grpc
from proxy.http import stream_info as flags
from tests.integration.harness import running_proxy
from tests.stream.test_rpc_codec import ENV, RpcClient, request_frame, rpc_config, upstreams  # noqa: F401 - a fixture

GRPC = ("content-type", "application/grpc")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(b"1S", 1.0), (b"200m", 0.2), (b"5M", 300.0), (b"2H", 7200.0), (b"100u", 1e-4), (b"99999999n", 0.099999999)],
)
def test_grpc_timeout_units(value, seconds):
    assert grpc.parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [b"", b"S", b"1", b"1s", b"123456789S", b"-1S", b"1.5S", b"abS"])
def test_a_malformed_grpc_timeout_is_ignored(value):
    assert grpc.parse_timeout(value) is None


def test_local_status_by_flag_then_by_http_status():
    assert grpc.local_status(503, flags.NO_HEALTHY_UPSTREAM) == grpc.UNAVAILABLE
    assert grpc.local_status(502, flags.UPSTREAM_CONNECT_FAILURE) == grpc.UNAVAILABLE
    assert grpc.local_status(504, flags.UPSTREAM_TIMEOUT) == grpc.DEADLINE_EXCEEDED
    assert grpc.local_status(503, flags.UPSTREAM_OVERFLOW) == grpc.RESOURCE_EXHAUSTED
    assert grpc.local_status(429, flags.RATE_LIMITED) == grpc.RESOURCE_EXHAUSTED
    assert grpc.local_status(404, flags.NO_ROUTE) == grpc.UNIMPLEMENTED
    assert grpc.local_status(403, None) == grpc.PERMISSION_DENIED
    assert grpc.local_status(200, None) == grpc.OK
    assert grpc.local_status(418, None) == grpc.UNKNOWN


def test_grpc_message_is_percent_encoded():
    headers = dict(grpc.reply_headers(14, "no upstream: 100% down\n é".encode()))
    assert headers[b"grpc-status"] == b"14"
    assert headers[b"grpc-message"] == b"no upstream: 100%25 down%0A %C3%A9"


async def test_grpc_calls_get_grpc_shaped_local_replies_and_their_deadline(tmp_path, upstreams):  # noqa: F811
    a, b = upstreams
    log = tmp_path / "access.log"
    config = rpc_config(a.address, "127.0.0.1:1", access_log=[{"path": str(log), "format": "%request_uri% %response_code% %response_flags% %grpc_status%"}])
    config["clusters"][1]["connect_timeout"] = "200ms"
    async with running_proxy(config, tmp_path, env=ENV) as proxy:
        client = await RpcClient.open(proxy.address("rpc"))
        start = trio.current_time()
        await client.send(
            request_frame(1, "POST", "/pkg.Svc/NoRoute", [GRPC, ("x-service", "nobody")])
            + request_frame(3, "POST", "/pkg.Svc/Down", [GRPC, ("x-service", "b")])  # nothing listens: connect refused
            + request_frame(5, "POST", "/slow/3000", [GRPC, ("x-service", "a"), ("grpc-timeout", "300m")])
            + request_frame(7, "POST", "/slow/3000", [("x-service", "a"), ("grpc-timeout", "300m")])  # not gRPC: ignored
        )
        await client.wait(1, 3, 5)
        elapsed = trio.current_time() - start
        s = client.streams
        for sid, status in ((1, "12"), (3, "14"), (5, "4")):
            assert s[sid]["status"] == 200, s[sid]
            assert s[sid]["headers"]["content-type"] == "application/grpc"
            assert s[sid]["headers"]["grpc-status"] == status
            assert s[sid]["body"] == b""
        assert "grpc-message" in s[1]["headers"]
        assert elapsed < 2.5  # the grpc-timeout, not the upstream's 3 s
        await client.wait(7)
        assert s[7]["status"] == 200 and s[7]["body"] == b"slow"
        with trio.fail_after(5):
            while log.read_text().count("\n") < 4:
                await trio.sleep(0.02)
        lines = sorted(log.read_text().splitlines())
    assert lines == [
        "/pkg.Svc/Down 200 UF 14",
        "/pkg.Svc/NoRoute 200 NR 12",
        "/slow/3000 200 - -",
        "/slow/3000 200 UT 4",
    ]
