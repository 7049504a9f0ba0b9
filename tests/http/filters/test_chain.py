"""The built-ins in a FilterChain, and loading filters by name or dotted path."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from proxy.http.filter import BUILTINS, FilterChain, FilterLoadError, LocalReply, StreamFilter, build_chain, load_filter_class
from proxy.http.filters.fault import FaultFilter
from proxy.http.filters.headers import HeadersFilter
from proxy.http.filters.ip_access import IpAccessFilter
from proxy.http.filters.local_rate_limit import LocalRateLimitFilter
from proxy.http.filters.payload_limit import PayloadLimitFilter

from tests.http.filters import make_response, make_stream

REPO = Path(__file__).resolve().parents[3]


async def test_request_hooks_run_in_order_response_hooks_in_reverse():
    first = HeadersFilter(
        {
            "request_headers_to_add": [{"name": "x-order", "value": "first", "append": True}],
            "response_headers_to_add": [{"name": "x-order", "value": "first", "append": True}],
        }
    )
    second = HeadersFilter(
        {
            "request_headers_to_add": [{"name": "x-order", "value": "second", "append": True}],
            "response_headers_to_add": [{"name": "x-order", "value": "second", "append": True}],
        }
    )
    chain = FilterChain([first, second])
    stream = make_stream()
    assert await chain.run_request(stream) is None
    assert [v for _, v in stream.request.headers] == [b"first", b"second"]
    stream.response = make_response()
    await chain.run_response(stream)
    assert [v for _, v in stream.response.headers] == [b"second", b"first"]


async def test_local_reply_stops_the_chain():
    deny = IpAccessFilter({"deny": ["10.0.0.0/8"]})
    tag = HeadersFilter({"request_headers_to_add": [{"name": "x-seen", "value": "1"}]})
    chain = FilterChain([deny, tag])
    stream = make_stream("10.0.0.1")
    reply = await chain.run_request(stream)
    assert isinstance(reply, LocalReply) and reply.status == 403
    assert stream.request.headers == []  # the headers filter never ran
    stream = make_stream("11.0.0.1")
    assert await chain.run_request(stream) is None
    assert stream.request.headers == [(b"x-seen", b"1")]


async def test_chain_splits_hooks_per_filter():
    limit = PayloadLimitFilter({"max_bytes": 4})
    rate = LocalRateLimitFilter({"max_tokens": 1, "fill_interval": "1s"})
    chain = FilterChain([rate, limit])
    assert chain.request == [rate, limit]
    assert chain.request_body == [limit]
    assert chain.response == [] and chain.response_body == []
    stream = make_stream(chunked=True)
    assert await chain.run_request(stream) is None
    assert await chain.run_request_body(stream, b"abc", False) == b"abc"
    assert (await chain.run_request_body(stream, b"de", True)).status == 413
    assert (await chain.run_request(make_stream())).status == 429


@pytest.mark.parametrize(
    "name, cls",
    [
        ("fault", FaultFilter),
        ("ip_access", IpAccessFilter),
        ("payload_limit", PayloadLimitFilter),
        ("local_rate_limit", LocalRateLimitFilter),
        ("headers", HeadersFilter),
    ],
)
def test_load_builtins(name, cls):
    assert load_filter_class(name) is cls
    assert load_filter_class(BUILTINS[name]) is cls  # the dotted path works too


def test_build_chain_reports_bad_builtin_config():
    configs = [SimpleNamespace(type="payload_limit", config={"max_bytes": 1}), SimpleNamespace(type="fault", config={"abort": {"status": 1}})]
    with pytest.raises(FilterLoadError, match=r"filters\[1\] \(fault\): bad config: abort.status: must be at least 200"):
        build_chain(configs)


@pytest.fixture
def examples_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    yield
    for name in [m for m in sys.modules if m == "examples" or m.startswith("examples.")]:
        del sys.modules[name]


async def test_load_example_custom_filter_by_dotted_path(examples_on_path):
    cls = load_filter_class("examples.filters.add_header:AddHeader")
    assert issubclass(cls, StreamFilter)
    chain = build_chain([SimpleNamespace(type="examples.filters.add_header:AddHeader", config={"name": "x-powered-by", "value": "proxy"})])
    assert chain.request == [] and len(chain.response) == 1
    stream = make_stream()
    stream.response = make_response(headers=[(b"content-type", b"text/plain")])
    await chain.run_response(stream)
    assert stream.response.headers == [(b"content-type", b"text/plain"), (b"x-powered-by", b"proxy")]
    with pytest.raises(FilterLoadError, match="bad config: unknown keys: colour"):
        build_chain([SimpleNamespace(type="examples.filters.add_header:AddHeader", config={"colour": "red"})])


def test_load_errors(examples_on_path):
    with pytest.raises(FilterLoadError, match="unknown filter type 'nope'"):
        load_filter_class("nope")
    with pytest.raises(FilterLoadError, match="cannot import examples.filters.missing"):
        load_filter_class("examples.filters.missing:X")
    with pytest.raises(FilterLoadError, match="has no Missing"):
        load_filter_class("examples.filters.add_header:Missing")
    with pytest.raises(FilterLoadError, match="is not a StreamFilter subclass"):
        load_filter_class("examples.filters.add_header:Stream")
