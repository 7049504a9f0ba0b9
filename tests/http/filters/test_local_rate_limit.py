import pytest
import trio

from proxy.http.filter import LocalReply
from proxy.http.filters.local_rate_limit import LocalRateLimitFilter
from proxy.http.stream_info import RATE_LIMITED

from tests.http.filters import make_stream


def test_config_good():
    f = LocalRateLimitFilter({"max_tokens": 10, "tokens_per_fill": 2, "fill_interval": "500ms", "key_header": "X-Api-Key", "max_keys": 5, "status": 503})
    assert (f.max_tokens, f.tokens_per_fill, f.fill_interval, f.key_header, f.max_keys, f.status) == (10, 2, 0.5, b"x-api-key", 5, 503)
    f = LocalRateLimitFilter({"max_tokens": 1, "fill_interval": "1s"})
    assert (f.tokens_per_fill, f.status, f.key_header) == (1, 429, None)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"fill_interval": "1s"}, "missing required key 'max_tokens'"),
        ({"max_tokens": 5}, "missing required key 'fill_interval'"),
        ({"max_tokens": 0, "fill_interval": "1s"}, "max_tokens: must be at least 1"),
        ({"max_tokens": "5", "fill_interval": "1s"}, "max_tokens: expected an integer"),
        ({"max_tokens": 5, "fill_interval": "1s", "tokens_per_fill": 0}, "tokens_per_fill: must be at least 1"),
        ({"max_tokens": 5, "fill_interval": 1}, "fill_interval: duration 1 needs a unit"),
        ({"max_tokens": 5, "fill_interval": "0ms"}, "fill_interval: must be greater than zero"),
        ({"max_tokens": 5, "fill_interval": "1s", "status": 200}, "status: must be at least 400"),
        ({"max_tokens": 5, "fill_interval": "1s", "status": 600}, "status: must be at most 599"),
        ({"max_tokens": 5, "fill_interval": "1s", "key_header": "bad header"}, "key_header: 'bad header' is not a valid header name"),
        ({"max_tokens": 5, "fill_interval": "1s", "key_header": 5}, "key_header: 5 is not a valid header name"),
        ({"max_tokens": 5, "fill_interval": "1s", "max_keys": 10}, "max_keys: only meaningful with key_header"),
        ({"max_tokens": 5, "fill_interval": "1s", "key_header": "x-k", "max_keys": 0}, "max_keys: must be at least 1"),
        ({"max_tokens": 5, "fill_interval": "1s", "burst": 3}, "unknown key 'burst'"),
    ],
)
def test_config_bad(config, message):
    with pytest.raises(ValueError, match=message):
        LocalRateLimitFilter(config)


async def allowed(f, n, **kwargs):
    """How many of n requests pass."""
    return sum([await f.on_request(make_stream(**kwargs)) is None for _ in range(n)])


async def test_bucket_starts_full_then_refuses():
    f = LocalRateLimitFilter({"max_tokens": 3, "fill_interval": "1s"})
    assert await allowed(f, 3) == 3
    reply = await f.on_request(make_stream())
    assert isinstance(reply, LocalReply)
    assert (reply.status, reply.body, reply.flag) == (429, b"rate limited", RATE_LIMITED)
    assert reply.headers == [(b"retry-after", b"1")]


async def test_refill_over_time(autojump_clock):
    f = LocalRateLimitFilter({"max_tokens": 5, "tokens_per_fill": 2, "fill_interval": "10s"})
    assert await allowed(f, 10) == 5
    await trio.sleep(9.9)
    assert await allowed(f, 1) == 0
    await trio.sleep(0.1)  # one fill: 2 tokens
    assert await allowed(f, 10) == 2
    await trio.sleep(25)  # two more fills (the cadence holds), 4 tokens
    assert await allowed(f, 10) == 4
    await trio.sleep(1000)  # capped at max_tokens
    assert await allowed(f, 10) == 5


async def test_retry_after_counts_down(autojump_clock):
    f = LocalRateLimitFilter({"max_tokens": 1, "fill_interval": "30s", "status": 503})
    assert await allowed(f, 1) == 1
    await trio.sleep(5)
    reply = await f.on_request(make_stream())
    assert reply.status == 503
    assert dict(reply.headers)[b"retry-after"] == b"25"
    await trio.sleep(24.5)
    assert dict((await f.on_request(make_stream())).headers)[b"retry-after"] == b"1"
    await trio.sleep(0.5)
    assert await allowed(f, 1) == 1


async def test_per_key_buckets(autojump_clock):
    f = LocalRateLimitFilter({"max_tokens": 2, "fill_interval": "1s", "key_header": "x-api-key"})
    assert await allowed(f, 5, headers=[(b"X-API-Key", b"alice")]) == 2
    assert await allowed(f, 5, headers=[(b"x-api-key", b"bob")]) == 2
    assert await allowed(f, 5) == 2  # no header: one shared bucket
    assert await allowed(f, 5, headers=[(b"x-other", b"carol")]) == 0  # same "no key" bucket
    await trio.sleep(1)
    assert await allowed(f, 5, headers=[(b"x-api-key", b"alice")]) == 1


async def test_key_buckets_bounded_lru():
    f = LocalRateLimitFilter({"max_tokens": 1, "fill_interval": "1h", "key_header": "k", "max_keys": 2})
    a, b, c = ([(b"k", v)] for v in (b"a", b"b", b"c"))
    assert await allowed(f, 1, headers=a) == 1
    assert await allowed(f, 1, headers=b) == 1
    assert await allowed(f, 1, headers=a) == 0  # a is now most recently used
    assert await allowed(f, 1, headers=c) == 1  # evicts b, the least recently used
    assert len(f._buckets) == 2
    assert await allowed(f, 1, headers=a) == 0  # a kept its (empty) bucket
    assert await allowed(f, 1, headers=b) == 1  # b starts again with a full bucket


async def test_long_keys_are_digested():
    f = LocalRateLimitFilter({"max_tokens": 1, "fill_interval": "1h", "key_header": "k"})
    long_a, long_b = b"a" * 10_000, b"a" * 9_999 + b"b"
    assert await allowed(f, 2, headers=[(b"k", long_a)]) == 1
    assert await allowed(f, 2, headers=[(b"k", long_b)]) == 1
    assert all(len(key) <= 64 for key in f._buckets)
