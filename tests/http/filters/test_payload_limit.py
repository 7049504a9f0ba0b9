import pytest

from proxy.http.filter import LocalReply
from proxy.http.filters.payload_limit import PayloadLimitFilter
from proxy.http.stream_info import PAYLOAD_TOO_LARGE

from tests.http.filters import make_stream


def test_config_good():
    assert PayloadLimitFilter({"max_bytes": 1024}).max_bytes == 1024
    assert PayloadLimitFilter({"max_bytes": 0}).max_bytes == 0


@pytest.mark.parametrize(
    "config, message",
    [
        ({}, "missing required key 'max_bytes'"),
        ({"max_bytes": -1}, "max_bytes: must be at least 0"),
        ({"max_bytes": "1MB"}, "max_bytes: expected an integer"),
        ({"max_bytes": 1.5}, "max_bytes: expected an integer"),
        ({"max_bytes": 10, "limit": 5}, "unknown key 'limit'"),
    ],
)
def test_config_bad(config, message):
    with pytest.raises(ValueError, match=message):
        PayloadLimitFilter(config)


async def test_content_length_over_limit_refused_up_front():
    f = PayloadLimitFilter({"max_bytes": 100})
    reply = await f.on_request(make_stream(method=b"POST", content_length=101))
    assert isinstance(reply, LocalReply)
    assert (reply.status, reply.flag, reply.close) == (413, PAYLOAD_TOO_LARGE, True)


async def test_content_length_at_limit_passes():
    f = PayloadLimitFilter({"max_bytes": 100})
    stream = make_stream(method=b"POST", content_length=100)
    assert await f.on_request(stream) is None
    assert await f.on_request_body(stream, b"x" * 60, False) == b"x" * 60
    assert await f.on_request_body(stream, b"x" * 40, True) == b"x" * 40
    assert await f.on_request(make_stream()) is None  # no body at all


async def test_chunked_body_counted_as_it_streams():
    f = PayloadLimitFilter({"max_bytes": 10})
    stream = make_stream(method=b"POST", chunked=True)
    assert await f.on_request(stream) is None
    assert await f.on_request_body(stream, b"12345", False) == b"12345"
    assert await f.on_request_body(stream, b"12345", False) == b"12345"
    reply = await f.on_request_body(stream, b"1", False)
    assert isinstance(reply, LocalReply) and reply.status == 413 and reply.flag == PAYLOAD_TOO_LARGE


async def test_counts_are_per_stream():
    f = PayloadLimitFilter({"max_bytes": 10})
    a, b = make_stream(chunked=True), make_stream(chunked=True)
    assert await f.on_request_body(a, b"x" * 8, False) == b"x" * 8
    assert await f.on_request_body(b, b"x" * 8, False) == b"x" * 8
    assert isinstance(await f.on_request_body(a, b"xxx", True), LocalReply)
    assert await f.on_request_body(b, b"xx", True) == b"xx"


async def test_two_limits_in_one_chain_count_separately():
    small, big = PayloadLimitFilter({"max_bytes": 5}), PayloadLimitFilter({"max_bytes": 50})
    stream = make_stream(chunked=True)
    assert await big.on_request_body(stream, b"x" * 6, False) == b"x" * 6
    assert isinstance(await small.on_request_body(stream, b"x" * 6, False), LocalReply)
    assert await big.on_request_body(stream, b"x" * 6, False) == b"x" * 6


async def test_zero_allows_empty_body_only():
    f = PayloadLimitFilter({"max_bytes": 0})
    stream = make_stream(method=b"POST", content_length=0)
    assert await f.on_request(stream) is None
    assert await f.on_request_body(stream, b"", True) == b""
    assert isinstance(await f.on_request_body(make_stream(chunked=True), b"x", False), LocalReply)
