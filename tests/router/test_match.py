"""Route matching inside a virtual host: path kinds, case, headers, query, methods, order."""

from __future__ import annotations

from typing import Any

import pytest

from tests.router.helpers import one_vhost


def first(match: dict[str, Any]):  # type: ignore[no-untyped-def]
    """A table whose first route has `match` (cluster "hit"), then a catch-all (cluster "miss")."""
    return one_vhost({"match": match, "cluster": "hit"}, {"match": {"prefix": "/"}, "cluster": "miss"})


def hit(match: dict[str, Any], path: bytes = b"/", method: bytes = b"GET", query: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None) -> bool:
    result = first(match).match(method, b"h", path, query, headers or [])
    assert result is not None
    return result.route.cluster == "hit"


@pytest.mark.parametrize(
    ("match", "path", "expected"),
    [
        ({"prefix": "/api"}, b"/api", True),
        ({"prefix": "/api"}, b"/api/v1", True),
        ({"prefix": "/api"}, b"/apix", True),  # a prefix is a prefix, as in Envoy
        ({"prefix": "/api/"}, b"/api", False),
        ({"prefix": "/api"}, b"/API", False),
        ({"prefix": "/api", "case_sensitive": False}, b"/API/x", True),
        ({"prefix": "/Api", "case_sensitive": False}, b"/aPI", True),
        ({"path": "/a"}, b"/a", True),
        ({"path": "/a"}, b"/a/", False),
        ({"path": "/a"}, b"/A", False),
        ({"path": "/A", "case_sensitive": False}, b"/a", True),
        ({"regex": "/v[0-9]+/.*"}, b"/v12/users", True),
        ({"regex": "/v[0-9]+"}, b"/v12/users", False),  # a full match
        ({"regex": "/v[0-9]+/.*"}, b"/V1/x", False),
        ({"regex": "/v[0-9]+/.*", "case_sensitive": False}, b"/V1/x", True),
    ],
)
def test_path_kinds(match: dict[str, Any], path: bytes, expected: bool) -> None:
    assert hit(match, path) is expected


def test_methods() -> None:
    m = {"prefix": "/", "methods": ["GET", "HEAD"]}
    assert hit(m, method=b"GET") and hit(m, method=b"HEAD")
    assert not hit(m, method=b"POST")
    assert not hit(m, method=b"get")  # methods are case-sensitive


H = [(b"X-Canary", b"1"), (b"user-agent", b"curl/8.0"), (b"x-multi", b"a"), (b"X-Multi", b"b"), (b"x-empty", b"")]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ({"name": "x-canary", "exact": "1"}, True),
        ({"name": "X-CANARY", "exact": "1"}, True),  # names are case-insensitive
        ({"name": "x-canary", "exact": "2"}, False),
        ({"name": "x-missing", "exact": ""}, False),
        ({"name": "x-empty", "exact": ""}, True),
        ({"name": "user-agent", "prefix": "curl/"}, True),
        ({"name": "user-agent", "prefix": "Curl/"}, False),  # values are case-sensitive
        ({"name": "user-agent", "suffix": "/8.0"}, True),
        ({"name": "user-agent", "suffix": "/7.0"}, False),
        ({"name": "user-agent", "regex": "curl/[0-9.]+"}, True),
        ({"name": "user-agent", "regex": "curl"}, False),  # a full match
        ({"name": "x-canary", "present": True}, True),
        ({"name": "x-missing", "present": True}, False),
        ({"name": "x-missing", "present": False}, True),
        ({"name": "x-canary", "present": False}, False),
        ({"name": "x-multi", "exact": "a,b"}, True),  # repeated headers are joined with ','
        ({"name": "x-canary", "exact": "1", "invert": True}, False),
        ({"name": "x-canary", "exact": "2", "invert": True}, True),
        ({"name": "x-missing", "exact": "1", "invert": True}, True),
        ({"name": "x-canary", "present": True, "invert": True}, False),
        ({"name": "x-missing", "present": True, "invert": True}, True),
    ],
)
def test_headers(header: dict[str, Any], expected: bool) -> None:
    assert hit({"prefix": "/", "headers": [header]}, headers=H) is expected


def test_all_headers_must_match() -> None:
    both = [{"name": "x-canary", "exact": "1"}, {"name": "user-agent", "prefix": "curl"}]
    assert hit({"prefix": "/", "headers": both}, headers=H)
    assert not hit({"prefix": "/", "headers": [*both, {"name": "x-missing", "present": True}]}, headers=H)


@pytest.mark.parametrize(
    ("param", "query", "expected"),
    [
        ({"name": "debug", "exact": "1"}, b"debug=1", True),
        ({"name": "debug", "exact": "1"}, b"a=2&debug=1&b", True),
        ({"name": "debug", "exact": "1"}, b"debug=1&debug=2", True),  # the first value counts
        ({"name": "debug", "exact": "1"}, b"debug=2&debug=1", False),
        ({"name": "debug", "exact": "1"}, b"", False),
        ({"name": "debug", "exact": "1"}, b"debugx=1", False),
        ({"name": "name", "exact": "a b/ü"}, b"name=a%20b%2F%C3%BC", True),  # percent-decoded
        ({"name": "a b", "exact": "1"}, b"a%20b=1", True),
        ({"name": "q", "exact": "a+b"}, b"q=a+b", True),  # '+' is not a space (Envoy)
        ({"name": "debug", "regex": "[0-9]+"}, b"debug=123", True),
        ({"name": "debug", "regex": "[0-9]+"}, b"debug=12a", False),
        ({"name": "debug", "present": True}, b"debug", True),
        ({"name": "debug", "present": True}, b"debug=", True),
        ({"name": "debug", "present": True}, b"x=debug", False),
        ({"name": "debug", "present": False}, b"x=debug", True),
        ({"name": "debug", "exact": ""}, b"debug", True),
    ],
)
def test_query_parameters(param: dict[str, Any], query: bytes, expected: bool) -> None:
    assert hit({"prefix": "/", "query_parameters": [param]}, query=query) is expected


def test_first_match_wins_in_config_order() -> None:
    t = one_vhost(
        {"match": {"path": "/a"}, "cluster": "exact"},
        {"match": {"prefix": "/a", "headers": [{"name": "x", "present": True}]}, "cluster": "with-header"},
        {"match": {"prefix": "/a"}, "cluster": "prefix-a"},
        {"match": {"prefix": "/a/b"}, "cluster": "never"},  # shadowed by /a
        {"match": {"prefix": "/"}, "cluster": "all"},
    )

    def cluster(path: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> str | None:
        m = t.match(b"GET", b"h", path, b"", headers or [])
        assert m is not None
        return m.route.cluster

    assert cluster(b"/a") == "exact"
    assert cluster(b"/a", [(b"x", b"1")]) == "exact"
    assert cluster(b"/a/b", [(b"x", b"1")]) == "with-header"
    assert cluster(b"/a/b") == "prefix-a"
    assert cluster(b"/b") == "all"


def test_no_route_matches() -> None:
    t = one_vhost({"match": {"prefix": "/api"}, "cluster": "api"})
    assert t.match(b"GET", b"h", b"/web", b"", []) is None


def test_match_result_names_route_and_virtual_host() -> None:
    t = one_vhost({"name": "r0", "match": {"path": "/x"}, "cluster": "a"}, {"match": {"prefix": "/"}, "cluster": "b"})
    m = t.match(b"GET", b"h", b"/y", b"", [])
    assert m is not None
    assert (m.route.index, m.route.name, m.virtual_host.name) == (1, "", "vh")
    m = t.match(b"GET", b"h", b"/x", b"", [])
    assert m is not None and m.route.name == "r0"
    assert t.match(b"GET", b"h", b"/x", b"", []) is m  # prebuilt: no allocation per request


def test_variable_matchers_render_per_request_and_need_info():
    from types import SimpleNamespace

    from proxy.config.values import decode_hook
    import msgspec
    from proxy.config.routes import RouteTable
    from proxy.router.route_table import CompiledRouteTable

    table = CompiledRouteTable(
        msgspec.convert(
            {
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": [
                            {"match": {"prefix": "/", "variables": [{"variable": "%downstream_remote_ip%", "prefix": "10."}]}, "cluster": "internal"},
                            {"match": {"prefix": "/", "variables": [{"variable": "%request_header(x-user)%", "present": True, "invert": True}]}, "cluster": "anonymous"},
                            {"match": {"prefix": "/"}, "cluster": "users"},
                        ],
                    }
                ]
            },
            RouteTable,
            dec_hook=decode_hook,
        )
    )
    head = SimpleNamespace(method=b"GET", target=b"/", http_version=b"1.1", headers=[(b"x-user", b"ann")])

    def info(ip, headers):
        return SimpleNamespace(request=SimpleNamespace(**{**vars(head), "headers": headers}), downstream_remote_address=f"{ip}:5000")

    def cluster(ip, headers, with_info=True):
        m = table.match(b"GET", b"h", b"/", b"", headers, info(ip, headers) if with_info else None)
        return m.route.cluster

    assert cluster("10.1.2.3", [(b"x-user", b"ann")]) == "internal"
    assert cluster("192.168.1.1", []) == "anonymous"
    assert cluster("192.168.1.1", [(b"x-user", b"ann")]) == "users"
    assert cluster("10.1.2.3", [(b"x-user", b"ann")], with_info=False) == "users"  # no info: never matches
