"""Virtual host selection: MOSN's priority, ports, case, IPv6, wildcards, the default."""

from __future__ import annotations

import pytest

from proxy.router import route_table
from tests.router.helpers import compile_table

ROUTE = [{"match": {"prefix": "/"}, "cluster": "c"}]


def table(*vhosts: tuple[str, list[str]]):  # type: ignore[no-untyped-def]
    return compile_table({"virtual_hosts": [{"name": name, "domains": domains, "routes": ROUTE} for name, domains in vhosts]})


PRIORITY = table(
    ("default", ["*"]),
    ("wild", ["*.example.com"]),
    ("wild-long", ["*.api.example.com"]),
    ("wild-port", ["*.example.com:8443"]),
    ("exact", ["api.example.com", "Other.Example.com"]),
    ("exact-port", ["api.example.com:8080"]),
    ("dash", ["*-bar.example.com"]),
    ("prefix", ["www.example.*"]),
    ("v6", ["[::1]", "[2001:db8::1]:8080"]),
    ("any-port-wild", ["*:9000"]),
)


@pytest.mark.parametrize(
    ("host", "vhost"),
    [
        # 1. exact host + port
        ("api.example.com:8080", "exact-port"),
        # 2. exact host, any port (port stripped)
        ("api.example.com", "exact"),
        ("api.example.com:9999", "exact"),
        ("API.EXAMPLE.COM:8080", "exact-port"),
        ("other.example.COM", "exact"),
        ("api.example.com.", "exact"),  # trailing dot
        # 3. wildcard + the request's port beats a wildcard without one
        ("x.api.example.com:8443", "wild-port"),
        # 4. wildcard, longest suffix first; '*' stands for at least one character
        ("x.api.example.com", "wild-long"),
        ("x.api.example.com:80", "wild-long"),
        ("y.example.com", "wild"),
        ("deep.y.example.com", "wild"),
        ("foo-bar.example.com", "dash"),
        ("-bar.example.com", "wild"),
        ("www.example.org", "prefix"),
        ("www.example.", "default"),  # the wildcard stands for at least one character
        # 5. default
        ("example.com", "default"),
        ("", "default"),
        ("unknown.org:80", "default"),
        ("unknown.org:9000", "any-port-wild"),
        # IPv6 literals
        ("[::1]", "v6"),
        ("[::1]:80", "v6"),
        ("[2001:db8::1]:8080", "v6"),
        ("[2001:DB8::1]:8080", "v6"),
        ("[2001:db8::1]:8081", "default"),
        ("[2001:db8::1]", "default"),
        ("::1", "default"),  # unbracketed: not a literal we know
    ],
)
def test_priority(host: str, vhost: str) -> None:
    found = PRIORITY.select_virtual_host(host.encode())
    assert found is not None and found.name == vhost
    assert PRIORITY.select_virtual_host(host).name == vhost  # type: ignore[union-attr]  # str works too
    assert PRIORITY.select_virtual_host(host.encode()) is found  # and again, from the cache


def test_no_default_means_no_virtual_host() -> None:
    t = table(("a", ["a.com"]), ("w", ["*.b.com"]))
    assert t.select_virtual_host(b"c.com") is None
    assert t.select_virtual_host(b"b.com") is None
    assert t.match(b"GET", b"c.com", b"/", b"", []) is None
    assert t.select_virtual_host(b"x.b.com").name == "w"  # type: ignore[union-attr]


def test_only_a_default_ignores_the_host() -> None:
    t = table(("only", ["*"]))
    assert t.select_virtual_host(b"anything:1").name == "only"  # type: ignore[union-attr]
    assert t._cache == {}  # not even looked up


def test_first_virtual_host_wins_a_duplicate_domain() -> None:
    # check_routes refuses this config; compiled anyway, the first one wins
    t = table(("a", ["x.com"]), ("b", ["X.com"]))
    assert t.select_virtual_host(b"x.com").name == "a"  # type: ignore[union-attr]


def test_host_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(route_table, "HOST_CACHE_SIZE", 8)
    t = table(("a", ["a.com"]), ("d", ["*"]))
    for i in range(20):
        assert t.select_virtual_host(f"h{i}.com".encode()).name == "d"  # type: ignore[union-attr]
        assert len(t._cache) <= 8
    assert t.select_virtual_host(b"A.com").name == "a"  # type: ignore[union-attr]
