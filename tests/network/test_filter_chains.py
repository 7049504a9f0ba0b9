"""Filter chain matching (Envoy's filter_chain_match order, no backtracking) and the config
checks of filter chains, every error with its path."""

from __future__ import annotations

import json

import pytest

from proxy.config.errors import ConfigError
from proxy.config.loader import load_text
from proxy.network.filter_chains import PLAINTEXT, TLS, ChainMatcher


def matcher(*chains: tuple[list[str], list[str], str | None]) -> ChainMatcher:
    return ChainMatcher(list(chains))


def test_exact_name_then_the_longest_wildcard_then_chains_without_names() -> None:
    m = matcher((["a.example.com"], [], None), (["*.example.com"], [], None), (["*.b.example.com"], [], None), ([], [], None))
    assert m.match("a.example.com", TLS, ()) == 0
    assert m.match("x.example.com", TLS, ()) == 1
    assert m.match("x.y.example.com", TLS, ()) == 1  # any depth
    assert m.match("x.b.example.com", TLS, ()) == 2  # the longer wildcard
    assert m.match("example.com", TLS, ()) == 3  # a wildcard does not cover its own domain
    assert m.match(None, TLS, ()) == 3
    assert m.match(None, PLAINTEXT, ()) == 3


def test_transport_then_alpn_in_the_clients_order() -> None:
    m = matcher(([], [], "plaintext"), ([], ["h2"], "tls"), ([], ["http/1.1"], "tls"), ([], [], "tls"))
    assert m.match(None, PLAINTEXT, ()) == 0
    assert m.match("a", TLS, ("http/1.1", "h2")) == 2
    assert m.match("a", TLS, ("h2", "http/1.1")) == 1
    assert m.match("a", TLS, ("spdy/3",)) == 3
    assert m.match("a", TLS, ()) == 3


def test_no_backtracking_once_a_name_matched() -> None:
    m = matcher((["a.example.com"], ["h2"], None), ([], [], None))
    assert m.match("a.example.com", TLS, ("http/1.1",)) is None  # as Envoy: no fall back to the unnamed chain
    assert m.match("b.example.com", TLS, ("http/1.1",)) == 1
    m = matcher(([], [], "tls"))
    assert m.match(None, PLAINTEXT, ()) is None


def test_an_empty_match_needs_no_inspection() -> None:
    assert not matcher(([], [], None)).needs_inspection
    assert matcher(([], [], "tls")).needs_inspection


def _config(chains: list[dict], protocol: str = "tcp", **listener: object) -> str:
    return json.dumps(
        {
            "listeners": [{"name": "l", "address": "127.0.0.1:0", "protocol": protocol, "filter_chains": chains, **listener}],
            "clusters": [{"name": "c", "hosts": [{"address": "127.0.0.1:1"}]}],
            "routes": {"r": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "cluster": "c"}]}]}},
        }
    )


def _errors(text: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_text(text, fmt="json")
    return str(err.value)


def test_chains_without_a_listener_cluster_or_route_load() -> None:
    config = load_text(_config([{"match": {"server_names": ["a.example.com"]}, "cluster": "c"}]), fmt="json")
    assert config.listeners[0].chain_names() == ["chain0"]
    config = load_text(_config([{"name": "x", "match": {"transport": "plaintext"}, "route": "r"}], protocol="http1"), fmt="json")
    assert config.listeners[0].chain_names() == ["x"]


def test_every_chain_error_with_its_path() -> None:
    text = _errors(
        _config(
            [
                {"name": "a", "match": {"server_names": ["a.example.com", "*.w.example.com"], "alpn": ["h2"]}, "cluster": "c"},
                {"match": {"server_names": ["A.example.com."], "alpn": ["h2", "x"]}, "cluster": "c"},  # overlaps chain a
                {"match": {"server_names": ["w*.example.com", "*"]}, "cluster": "nope", "route": "r"},
                {"match": {"transport": "plaintext", "alpn": ["h2"]}},  # no cluster to inherit; never met
                {"name": "a", "match": {"transport": "tls"}, "cluster": "c"},
            ]
        )
    )
    assert "listeners[0].filter_chains[1].match: the same match as listeners[0].filter_chains[0]" in text
    assert "listeners[0].filter_chains[2].match.server_names[0]: 'w*.example.com' is not a server name" in text
    assert "listeners[0].filter_chains[2].match.server_names[1]" in text
    assert "listeners[0].filter_chains[2].cluster: unknown cluster 'nope'" in text
    assert "listeners[0].filter_chains[2].route: a filter chain of a tcp listener names a 'cluster', not a 'route'" in text
    assert "listeners[0].filter_chains[3]: this filter chain needs a 'cluster'" in text
    assert "listeners[0].filter_chains[3].match: a plaintext connection has no server name or ALPN" in text
    assert "listeners[0].filter_chains[4].name: duplicate filter chain name 'a'" in text
    http = _errors(_config([{"match": {"transport": "tls"}, "cluster": "c", "route": "missing"}], protocol="http"))
    assert "listeners[0].filter_chains[0].cluster: a filter chain of an HTTP listener names a 'route', not a 'cluster'" in http
    assert "listeners[0].filter_chains[0].route: unknown route table 'missing'" in http
    empty_twice = _errors(_config([{"cluster": "c"}, {"name": "other", "cluster": "c"}]))
    assert "listeners[0].filter_chains[1].match: the same match as listeners[0].filter_chains[0] (any server name" in empty_twice


def test_an_http_chain_for_tls_connections_needs_tls_to_terminate() -> None:
    text = _errors(_config([{"match": {"server_names": ["a.example.com"]}, "route": "r"}], protocol="http1"))
    assert "listeners[0].filter_chains[0]: this chain of an HTTP listener matches TLS connections: it needs a 'tls'" in text
    load_text(_config([{"match": {"transport": "plaintext"}, "route": "r"}], protocol="http1"), fmt="json")  # fine: plaintext
