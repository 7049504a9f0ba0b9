"""Route actions: clusters (plain, weighted, from a header), direct responses, redirects,
rewrites, per-route settings and header mutations."""

from __future__ import annotations

import random
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest

from proxy.router.retry import RetryPolicy
from proxy.router.route_table import (
    CLUSTER,
    CLUSTER_HEADER,
    DIRECT_RESPONSE,
    REDIRECT,
    WEIGHTED_CLUSTERS,
    CompiledRoute,
    HeaderMutation,
    apply_header_mutations,
    choose_cluster,
    mutate_headers,
    redirect_location,
    rewrite_path,
)
from proxy.variables import Template, compile_template
from tests.router.helpers import compile_table, one_vhost


def route(**config: Any) -> CompiledRoute:
    config.setdefault("match", {"prefix": "/"})
    table = one_vhost(config)
    return table.virtual_hosts[0].routes[0]


def test_cluster() -> None:
    r = route(cluster="api")
    assert (r.action, r.forwards) == (CLUSTER, True)
    assert choose_cluster(r, [], random.Random(1)) == "api"


def test_weighted_clusters_follow_the_weights() -> None:
    r = route(weighted_clusters=[{"name": "a", "weight": 90}, {"name": "zero", "weight": 0}, {"name": "b", "weight": 10}])
    assert r.action == WEIGHTED_CLUSTERS
    rng = random.Random(42)
    counts = Counter(choose_cluster(r, [], rng) for _ in range(20_000))
    assert set(counts) == {"a", "b"}  # weight 0: never
    assert 0.88 < counts["a"] / 20_000 < 0.92
    # seeded: reproducible
    assert [choose_cluster(r, [], random.Random(7)) for _ in range(3)] == [choose_cluster(r, [], random.Random(7)) for _ in range(3)]


def test_weighted_pick_at_the_edges() -> None:
    r = route(weighted_clusters=[{"name": "a", "weight": 1}, {"name": "b", "weight": 1}])
    low, high = SimpleNamespace(random=lambda: 0.0), SimpleNamespace(random=lambda: 0.9999999999999999)
    assert choose_cluster(r, [], low) == "a"  # type: ignore[arg-type]
    assert choose_cluster(r, [], high) == "b"  # type: ignore[arg-type]


def test_cluster_header() -> None:
    r = route(cluster_header="X-Cluster")
    assert r.action == CLUSTER_HEADER
    rng = random.Random(0)
    assert choose_cluster(r, [(b"x-other", b"a"), (b"X-CLUSTER", b" blue ")], rng) == "blue"
    assert choose_cluster(r, [(b"x-cluster", b"")], rng) is None
    assert choose_cluster(r, [], rng) is None


def test_direct_response() -> None:
    r = route(direct_response={"status": 503, "body": "down", "headers": [{"name": "Content-Type", "value": "text/plain"}]})
    assert (r.action, r.forwards) == (DIRECT_RESPONSE, False)
    d = r.direct_response
    assert d is not None
    assert (d.status, d.body, d.headers) == (503, b"down", ((b"content-type", b"text/plain"),))
    assert choose_cluster(r, [], random.Random(0)) is None


def test_route_settings() -> None:
    r = route(
        cluster="api",
        timeout=None,
        host_rewrite="backend.internal",
        allow_upgrades=["WebSocket", "h2c"],
        allow_connect=True,
        retry={"on": ["reset"], "attempts": 3, "per_try_timeout": "500ms"},
    )
    assert r.timeout is None  # null: no timeout ("0s" is refused: tests/config/test_durations.py)
    assert r.host_rewrite == b"backend.internal"
    assert r.allow_upgrades == {b"websocket", b"h2c"}
    assert r.allow_connect is True
    assert isinstance(r.retry, RetryPolicy)
    assert (r.retry.attempts, r.retry.per_try_timeout) == (3, 0.5)
    d = route(cluster="api")
    assert (d.timeout, d.retry, d.allow_upgrades, d.allow_connect, d.host_rewrite) == (15.0, None, {b"websocket"}, False, None)


@pytest.mark.parametrize(
    ("config", "target", "expected"),
    [
        ({"match": {"prefix": "/api/"}, "prefix_rewrite": "/"}, b"/api/users?id=1", b"/users?id=1"),
        ({"match": {"prefix": "/api"}, "prefix_rewrite": "/v2"}, b"/api/users", b"/v2/users"),
        ({"match": {"prefix": "/api"}, "prefix_rewrite": ""}, b"/api?x", b"/?x"),
        ({"match": {"prefix": "/API", "case_sensitive": False}, "prefix_rewrite": "/b"}, b"/api/x", b"/b/x"),
        ({"match": {"prefix": "/"}, "regex_rewrite": {"pattern": "^/old/(.*)$", "substitution": "/new/\\1"}}, b"/old/a/b?q=/old/", b"/new/a/b?q=/old/"),
        ({"match": {"prefix": "/"}, "regex_rewrite": {"pattern": "o", "substitution": "0"}}, b"/foo/boo", b"/f00/b00"),  # every match
        ({"match": {"prefix": "/"}, "regex_rewrite": {"pattern": "^/old/(.*)$", "substitution": "/new/\\1"}}, b"/other", b"/other"),
        ({"match": {"prefix": "/"}}, b"/same?x=1", b"/same?x=1"),
    ],
)
def test_rewrite_path(config: dict[str, Any], target: bytes, expected: bytes) -> None:
    assert rewrite_path(route(cluster="api", **config), target) == expected


@pytest.mark.parametrize(
    ("redirect", "match", "req", "expected"),
    [
        ({"scheme": "https"}, None, (b"http", b"example.com", b"/a", b"q=1"), (301, b"https://example.com/a?q=1")),
        ({"scheme": "https"}, None, (b"http", b"example.com:80", b"/a", b""), (301, b"https://example.com/a")),
        ({"scheme": "https"}, None, (b"http", b"example.com:8080", b"/a", b""), (301, b"https://example.com:8080/a")),
        ({"scheme": "http"}, None, (b"https", b"example.com:443", b"/a", b""), (301, b"http://example.com/a")),
        ({"scheme": "https", "port": 8443}, None, (b"http", b"example.com:80", b"/", b""), (301, b"https://example.com:8443/")),
        ({"port": 443, "scheme": "https"}, None, (b"http", b"example.com", b"/", b""), (301, b"https://example.com/")),
        ({"host": "new.example.com", "code": 302}, None, (b"http", b"old.example.com:8080", b"/a", b"x"), (302, b"http://new.example.com/a?x")),
        ({"host": "new.example.com:9000"}, None, (b"http", b"old.example.com", b"/", b""), (301, b"http://new.example.com:9000/")),
        ({"host": "[::1]", "port": 81}, None, (b"http", b"old", b"/", b""), (301, b"http://[::1]:81/")),
        ({"path": "/new", "code": 308}, None, (b"http", b"h", b"/old", b"a=1"), (308, b"http://h/new?a=1")),
        ({"path": "/new?b=2"}, None, (b"http", b"h", b"/old", b"a=1"), (301, b"http://h/new?b=2")),
        ({"path": "/new", "strip_query": True}, None, (b"http", b"h", b"/old", b"a=1"), (301, b"http://h/new")),
        ({"strip_query": True}, None, (b"https", b"h", b"/p", b"a=1"), (301, b"https://h/p")),
        ({"prefix_rewrite": "/v2/"}, {"prefix": "/v1/"}, (b"http", b"h", b"/v1/users", b"id=3"), (301, b"http://h/v2/users?id=3")),
        ({"path": "/x"}, None, (b"http", b"", b"/old", b""), (301, b"/x")),  # no Host: a relative Location
    ],
)
def test_redirect_location(redirect: dict[str, Any], match: dict[str, Any] | None, req: tuple[bytes, ...], expected: tuple[int, bytes]) -> None:
    r = route(redirect=redirect, match=match or {"prefix": "/"})
    assert r.action == REDIRECT
    assert redirect_location(r, *req) == expected


def test_redirect_location_needs_a_redirect_route() -> None:
    with pytest.raises(ValueError):
        redirect_location(route(cluster="a"), b"http", b"h", b"/", b"")


# --- header mutations ---------------------------------------------------------------------------


def render_with(values: dict[str, str]):  # type: ignore[no-untyped-def]
    info = SimpleNamespace(**values)
    calls: list[str] = []

    def render(template: Template) -> bytes:
        calls.append(template.text)
        return template.render_bytes(info)

    return render, calls


def level(adds: list[tuple[str, str, bool]] = [], removes: list[str] = []) -> tuple[frozenset[bytes], tuple[tuple[bytes, Template, bool], ...]]:  # noqa: B006
    return frozenset(n.encode() for n in removes), tuple((n.encode(), compile_template(v), a) for n, v, a in adds)


def test_apply_header_mutations_replace_append_remove() -> None:
    render, calls = render_with({"upstream_host": "10.0.0.1:80"})
    headers = [(b"X-A", b"old"), (b"x-b", b"keep"), (b"x-a", b"old2"), (b"X-Gone", b"1"), (b"x-c", b"1")]
    removes, adds = level(
        adds=[("x-a", "new", False), ("x-c", "2", True), ("x-up", "%upstream_host%", False), ("x-none", "%cluster%", False), ("x-d", "1", False)],
        removes=["x-gone"],
    )
    out = apply_header_mutations(headers, removes, adds, render)
    assert out is headers  # in place
    assert headers == [(b"x-b", b"keep"), (b"x-c", b"1"), (b"x-a", b"new"), (b"x-c", b"2"), (b"x-up", b"10.0.0.1:80"), (b"x-d", b"1")]
    # constants never call render; a value that renders empty is not added
    assert calls == ["%upstream_host%", "%cluster%"]


def test_mutation_order_route_then_virtual_host_then_table() -> None:
    table = compile_table(
        {
            "request_headers_to_add": [{"name": "x-level", "value": "table"}, {"name": "x-all", "value": "table", "append": True}],
            "request_headers_to_remove": ["x-route-only"],
            "response_headers_to_add": [{"name": "x-served-by", "value": "table"}],
            "virtual_hosts": [
                {
                    "name": "vh",
                    "domains": ["*"],
                    "request_headers_to_add": [{"name": "x-level", "value": "vhost"}, {"name": "x-all", "value": "vhost", "append": True}],
                    "response_headers_to_remove": ["server"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "cluster": "c",
                            "request_headers_to_add": [
                                {"name": "x-level", "value": "route"},
                                {"name": "x-all", "value": "route", "append": True},
                                {"name": "x-route-only", "value": "1"},
                            ],
                            "response_headers_to_add": [{"name": "Server", "value": "route"}],
                        },
                        {"match": {"prefix": "/"}, "cluster": "c"},
                    ],
                }
            ],
        }
    )
    r = table.virtual_hosts[0].routes[0]
    assert len(r.request_mutations) == 3 and all(isinstance(m, HeaderMutation) for m in r.request_mutations)
    render, _ = render_with({})
    headers = [(b"x-all", b"client")]
    mutate_headers(headers, r.request_mutations, render)
    # replace: the least specific level wins (Envoy's default); append: every level adds, route first;
    # a table-level remove drops what the route added
    assert headers == [(b"x-all", b"client"), (b"x-all", b"route"), (b"x-all", b"vhost"), (b"x-level", b"table"), (b"x-all", b"table")]
    response = [(b"server", b"upstream"), (b"content-length", b"0")]
    mutate_headers(response, r.response_mutations, render)
    # the route sets Server, the virtual host removes it: most specific first
    assert response == [(b"content-length", b"0"), (b"x-served-by", b"table")]
    # a route with no mutations of its own still gets the virtual host's and the table's
    other = table.virtual_hosts[0].routes[1]
    assert len(other.request_mutations) == 2 and len(other.response_mutations) == 2


def test_no_mutations_anywhere() -> None:
    r = route(cluster="c")
    assert r.request_mutations == () and r.response_mutations == ()
