"""Route config: decoding, structural errors (the loader's walker) and check_routes, with paths."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from proxy.config.routes import Domain, RouteTable, parse_domain
from proxy.config.values import Duration
from tests.router.helpers import config, decode, issue_list, raw_issues, yaml_issues

FULL = """\
clusters:
  - {name: api, hosts: [{address: "10.0.0.1:80"}]}
  - {name: a, hosts: [{address: "10.0.0.2:80"}]}
  - {name: b, hosts: [{address: "10.0.0.3:80"}]}
listeners:
  - {name: web, address: "127.0.0.1:8080", protocol: http1, route: main}
routes:
  main:
    request_headers_to_add: [{name: x-table, value: "1"}]
    response_headers_to_remove: [x-powered-by]
    virtual_hosts:
      - name: api
        domains: ["api.example.com", "api.example.com:8080", "*.example.com", "*"]
        request_headers_to_add: [{name: x-vh, value: "%listener%", append: true}]
        routes:
          - match:
              prefix: /v1/
              case_sensitive: false
              headers:
                - {name: x-canary, exact: "1"}
                - {name: x-debug, present: true, invert: true}
              query_parameters:
                - {name: debug, exact: "1"}
              methods: [GET, POST]
            cluster: api
            prefix_rewrite: /api/
            host_rewrite: backend.internal
            timeout: 5s
            retry:
              "on": [5xx, gateway-error, connect-failure, reset, retriable-status-codes]
              retriable_status_codes: [409]
              attempts: 2
              per_try_timeout: 1s
              backoff: {base_interval: 25ms, max_interval: 250ms}
            allow_upgrades: [websocket]
            request_headers_to_add: [{name: x-upstream-host, value: "%upstream_host%"}]
            request_headers_to_remove: [x-internal]
            response_headers_to_add: [{name: x-served-by, value: proxy}]
            response_headers_to_remove: [server]
          - match: {regex: "^/old/.*$"}
            weighted_clusters: [{name: a, weight: 90}, {name: b, weight: 10}, {name: api, weight: 0}]
            regex_rewrite: {pattern: "^/old/(.*)$", substitution: "/new/\\\\1"}
          - match: {path: /by-header}
            cluster_header: x-cluster
          - match: {path: /healthz}
            direct_response: {status: 200, body: "ok", headers: [{name: content-type, value: text/plain}]}
          - match: {prefix: /moved/}
            redirect: {scheme: https, host: new.example.com, port: 443, prefix_rewrite: /x/, code: 308, strip_query: true}
"""


def test_full_example_has_no_issues_and_decodes() -> None:
    assert yaml_issues(FULL) == []
    raw = yaml.safe_load(FULL.replace('"on"', "'on'"))
    table = decode(raw["routes"]["main"])
    assert isinstance(table, RouteTable)
    route = table.virtual_hosts[0].routes[0]
    assert route.timeout == Duration(5.0)
    assert route.match.case_sensitive is False
    assert route.match.methods == ["GET", "POST"]
    assert route.retry is not None
    assert route.retry.on == ["5xx", "gateway-error", "connect-failure", "reset", "retriable-status-codes"]
    assert route.retry.attempts == 2
    assert route.retry.per_try_timeout == Duration(1.0)
    assert route.retry.backoff.max_interval == pytest.approx(0.25)
    assert table.virtual_hosts[0].request_headers_to_add[0].append is True
    assert table.virtual_hosts[0].routes[1].regex_rewrite.substitution == "/new/\\1"  # type: ignore[union-attr]
    assert table.virtual_hosts[0].routes[4].redirect.code == 308  # type: ignore[union-attr]


def test_defaults() -> None:
    table = decode({"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "cluster": "c", "retry": {"on": ["reset"]}}]}]})
    route = table.virtual_hosts[0].routes[0]
    assert route.timeout == Duration(15.0)
    assert route.allow_upgrades == ["websocket"]
    assert route.allow_connect is False
    assert route.match.case_sensitive is True
    assert route.match.methods is None
    assert route.retry.attempts == 1  # type: ignore[union-attr]
    assert route.retry.backoff.base_interval == pytest.approx(0.025)  # type: ignore[union-attr]
    assert route.retry.backoff.max_interval is None  # type: ignore[union-attr]
    assert route.retry.per_try_timeout is None  # type: ignore[union-attr]


def route_issues(route: dict[str, Any], **vhost: Any) -> list[tuple[str, str]]:
    raw = config(route)
    raw["routes"]["main"]["virtual_hosts"][0].update(vhost)
    return issue_list(raw)


R = "routes.main.virtual_hosts[0].routes[0]"
OK = {"match": {"prefix": "/"}, "cluster": "api"}


@pytest.mark.parametrize(
    ("change", "path", "start"),
    [
        ({"clustr": "api"}, f"{R}.clustr", "unknown key 'clustr'; did you mean 'cluster'?"),
        ({"timeout": 5}, f"{R}.timeout", "duration 5 needs a unit"),
        ({"timeout": "soon"}, f"{R}.timeout", "invalid duration 'soon'"),
        ({"retry": {"on": ["5xx", "5xxx"]}}, f"{R}.retry.on[1]", "expected one of"),
        ({"retry": {"on": []}}, f"{R}.retry.on", "needs at least 1 item, got none"),
        ({"retry": {"attempts": 2}}, f"{R}.retry", "missing required key 'on'"),
        ({"retry": {"on": ["reset"], "attempts": 11}}, f"{R}.retry.attempts", "expected an integer from 0 to 10"),
        ({"retry": {"on": ["reset"], "per_try_timeout": 1}}, f"{R}.retry.per_try_timeout", "duration 1 needs a unit"),
        ({"retry": {"on": ["reset"], "backoff": {"base": "1s"}}}, f"{R}.retry.backoff.base", "unknown key 'base'"),
        ({"match": {"prefix": "/", "methods": ["get"]}}, f"{R}.match.methods[0]", "invalid value 'get': must match the pattern"),
        ({"match": {"prefix": "/", "methods": []}}, f"{R}.match.methods", "needs at least 1 item"),
        ({"match": {"prefix": "/", "case_sensitive": "no"}}, f"{R}.match.case_sensitive", "expected true or false"),
        ({"match": {"prefix": "/", "headers": [{"name": "x a", "exact": "1"}]}}, f"{R}.match.headers[0].name", "invalid value 'x a'"),
        ({"match": {"prefix": "/", "headers": [{"exact": "1"}]}}, f"{R}.match.headers[0]", "missing required key 'name'"),
        ({"match": {"prefix": "/", "query_parameters": [{"name": "a", "suffix": "1"}]}}, f"{R}.match.query_parameters[0].suffix", "unknown key 'suffix'"),
        ({"match": {"prefix": 5}}, f"{R}.match.prefix", "expected a string, got 5"),
        ({"redirect": {"code": 300, "path": "/x"}, "cluster": None}, f"{R}.redirect.code", "expected one of 301, 302, 303, 307, 308"),
        ({"redirect": {"port": 0, "path": "/x"}, "cluster": None}, f"{R}.redirect.port", "expected an integer from 1 to 65535"),
        ({"redirect": {"scheme": "ftp"}, "cluster": None}, f"{R}.redirect.scheme", "expected one of"),
        ({"direct_response": {"status": 99}, "cluster": None}, f"{R}.direct_response.status", "expected an integer from 100 to 599"),
        ({"direct_response": {"body": "x"}, "cluster": None}, f"{R}.direct_response", "missing required key 'status'"),
        ({"weighted_clusters": [{"name": "api", "weight": -1}], "cluster": None}, f"{R}.weighted_clusters[0].weight", "expected an integer from 0 to 1000000"),
        ({"weighted_clusters": [], "cluster": None}, f"{R}.weighted_clusters", "needs at least 1 item"),
        ({"request_headers_to_add": [{"name": "x-a"}]}, f"{R}.request_headers_to_add[0]", "missing required key 'value'"),
        ({"request_headers_to_add": [{"name": "x-a", "value": "1", "append": "yes"}]}, f"{R}.request_headers_to_add[0].append", "expected true or false"),
        ({"response_headers_to_remove": ["bad header"]}, f"{R}.response_headers_to_remove[0]", "invalid value 'bad header'"),
        ({"allow_upgrades": "websocket"}, f"{R}.allow_upgrades", "expected a list"),
        ({"cluster": "bad name!"}, f"{R}.cluster", "invalid value 'bad name!'"),
    ],
)
def test_structural_errors(change: dict[str, Any], path: str, start: str) -> None:
    route = {k: v for k, v in {**OK, **change}.items() if v is not None}
    issues = route_issues(route)
    assert len(issues) == 1, issues
    assert issues[0][0] == path
    assert issues[0][1].startswith(start), issues[0][1]


def test_structural_errors_in_tables_and_virtual_hosts() -> None:
    raw = {"clusters": [], "routes": {"main": {"virtual_hosts": [{"name": "v", "routes": []}, {"domains": ["a"], "colour": 1}]}, "empty": {}}}
    assert issue_list(raw) == [
        ("routes.empty", "missing required key 'virtual_hosts'"),
        ("routes.main.virtual_hosts[0]", "missing required key 'domains'"),
        ("routes.main.virtual_hosts[1]", "missing required key 'name'"),
        ("routes.main.virtual_hosts[1].colour", "unknown key 'colour'; expected one of: name, domains, routes, request_headers_to_add, request_headers_to_remove, response_headers_to_add, response_headers_to_remove"),
    ]


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        ({"match": {"prefix": "/"}, "cluster": "apo"}, [(f"{R}.cluster", "unknown cluster 'apo'; defined clusters: api, web, canary (did you mean 'api'?)")]),
        ({"match": {"prefix": "/"}}, [(R, "a route needs an action: one of 'cluster', 'weighted_clusters', 'cluster_header', 'direct_response' or 'redirect'")]),
        (
            {"match": {"prefix": "/"}, "cluster": "api", "redirect": {"path": "/x"}},
            [(R, "a route takes exactly one action, got 'cluster' and 'redirect'")],
        ),
        (
            {"match": {"prefix": "/"}, "cluster": "api", "cluster_header": "x-c", "direct_response": {"status": 200}},
            [(R, "a route takes exactly one action, got 'cluster', 'cluster_header' and 'direct_response'")],
        ),
        ({"match": {}, "cluster": "api"}, [(f"{R}.match", "a match needs one of 'prefix', 'path' or 'regex'")]),
        ({"match": {"prefix": "/", "path": "/a"}, "cluster": "api"}, [(f"{R}.match", "a match takes one of 'prefix', 'path' or 'regex', got 'prefix' and 'path'")]),
        ({"match": {"prefix": "v1/"}, "cluster": "api"}, [(f"{R}.match.prefix", "prefix 'v1/' must start with '/'")]),
        ({"match": {"path": "x"}, "cluster": "api"}, [(f"{R}.match.path", "path 'x' must start with '/'")]),
        ({"match": {"regex": "/a(["}, "cluster": "api"}, [(f"{R}.match.regex", "invalid regex '/a([': unterminated character set at position 3")]),
        (
            {"match": {"prefix": "/", "headers": [{"name": "x", "regex": "*"}]}, "cluster": "api"},
            [(f"{R}.match.headers[0].regex", "invalid regex '*': nothing to repeat at position 0")],
        ),
        (
            {"match": {"prefix": "/", "headers": [{"name": "x"}]}, "cluster": "api"},
            [(f"{R}.match.headers[0]", "a header matcher needs one of 'exact', 'prefix', 'suffix', 'regex' or 'present'")],
        ),
        (
            {"match": {"prefix": "/", "headers": [{"name": "x", "exact": "1", "present": False}]}, "cluster": "api"},
            [(f"{R}.match.headers[0]", "a header matcher takes one of 'exact', 'prefix', 'suffix', 'regex' or 'present', got 'exact' and 'present'")],
        ),
        (
            {"match": {"prefix": "/", "query_parameters": [{"name": "q"}]}, "cluster": "api"},
            [(f"{R}.match.query_parameters[0]", "a query parameter matcher needs one of 'exact', 'regex' or 'present'")],
        ),
        (
            {"match": {"prefix": "/", "query_parameters": [{"name": "q", "regex": "("}]}, "cluster": "api"},
            [(f"{R}.match.query_parameters[0].regex", "invalid regex '(': missing ), unterminated subpattern at position 0")],
        ),
        (
            {"match": {"prefix": "/"}, "weighted_clusters": [{"name": "api", "weight": 0}, {"name": "wbe", "weight": 0}]},
            [
                (f"{R}.weighted_clusters", "the weights add up to 0; give at least one cluster a weight above 0"),
                (f"{R}.weighted_clusters[1].name", "unknown cluster 'wbe'; defined clusters: api, web, canary (did you mean 'web'?)"),
            ],
        ),
        (
            {"match": {"prefix": "/"}, "weighted_clusters": [{"name": "api", "weight": 1}, {"name": "api", "weight": 2}]},
            [(f"{R}.weighted_clusters[1].name", f"duplicate cluster 'api' (first at {R}.weighted_clusters[0].name)")],
        ),
        (
            {"match": {"path": "/a"}, "cluster": "api", "prefix_rewrite": "/b"},
            [(f"{R}.prefix_rewrite", "'prefix_rewrite' needs a 'prefix' match; use 'regex_rewrite' with a 'path' or 'regex' match")],
        ),
        (
            {"match": {"prefix": "/a"}, "cluster": "api", "prefix_rewrite": "/b", "regex_rewrite": {"pattern": "a", "substitution": "b"}},
            [(f"{R}.regex_rewrite", "'prefix_rewrite' and 'regex_rewrite' exclude each other")],
        ),
        (
            {"match": {"prefix": "/"}, "cluster": "api", "regex_rewrite": {"pattern": "^/(a)", "substitution": "/\\2"}},
            [(f"{R}.regex_rewrite.substitution", "invalid substitution '/\\\\2': invalid group reference 2 at position 2")],
        ),
        (
            {"match": {"prefix": "/"}, "cluster": "api", "regex_rewrite": {"pattern": "^/(a", "substitution": "/"}},
            [(f"{R}.regex_rewrite.pattern", "invalid regex '^/(a': missing ), unterminated subpattern at position 2")],
        ),
        (
            {"match": {"prefix": "/"}, "direct_response": {"status": 200}, "timeout": "1s", "retry": {"on": ["reset"]}, "host_rewrite": "x"},
            [
                (f"{R}.host_rewrite", "'host_rewrite' applies only to routes that forward to a cluster, not to a direct response"),
                (f"{R}.retry", "'retry' applies only to routes that forward to a cluster, not to a direct response"),
                (f"{R}.timeout", "'timeout' applies only to routes that forward to a cluster, not to a direct response"),
            ],
        ),
        (
            {"match": {"prefix": "/"}, "redirect": {"code": 302}, "prefix_rewrite": "/x"},
            [
                (f"{R}.prefix_rewrite", "'prefix_rewrite' applies only to routes that forward to a cluster, not to a redirect"),
                (f"{R}.redirect", "a redirect must change something: set 'scheme', 'host', 'port', 'path', 'prefix_rewrite' or 'strip_query'"),
            ],
        ),
        (
            {"match": {"prefix": "/"}, "redirect": {"strip_query": False}},
            [(f"{R}.redirect", "a redirect must change something: set 'scheme', 'host', 'port', 'path', 'prefix_rewrite' or 'strip_query'")],
        ),
        ({"match": {"prefix": "/"}, "redirect": {"strip_query": True}}, []),
        (
            {"match": {"regex": "/a"}, "redirect": {"path": "a", "prefix_rewrite": "/b"}},
            [
                (f"{R}.redirect.path", "path 'a' must start with '/'"),
                (f"{R}.redirect.prefix_rewrite", "'path' and 'prefix_rewrite' exclude each other"),
            ],
        ),
        ({"match": {"path": "/a"}, "redirect": {"prefix_rewrite": "/b"}}, [(f"{R}.redirect.prefix_rewrite", "'prefix_rewrite' needs a 'prefix' match")]),
        ({"match": {"path": "/a"}, "redirect": {"host": "a/b"}}, [(f"{R}.redirect.host", "invalid host 'a/b': expected a host name, optionally with ':port'")]),
        (
            {"match": {"prefix": "/"}, "cluster": "api", "retry": {"on": ["retriable-status-codes"]}},
            [(f"{R}.retry", "'on' has 'retriable-status-codes' but 'retriable_status_codes' lists none")],
        ),
        (
            {"match": {"prefix": "/"}, "cluster": "api", "retry": {"on": ["5xx"], "retriable_status_codes": [409]}},
            [(f"{R}.retry.retriable_status_codes", "has no effect unless 'on' includes 'retriable-status-codes'")],
        ),
        (
            {"match": {"prefix": "/"}, "cluster": "api", "retry": {"on": ["5xx"], "backoff": {"base_interval": "1s", "max_interval": "100ms"}}},
            [(f"{R}.retry.backoff.max_interval", "max_interval must not be less than base_interval")],
        ),
        (
            {"match": {"prefix": "/"}, "cluster": "api", "retry": {"on": ["5xx"], "backoff": {"max_interval": "10ms"}}},
            [(f"{R}.retry.backoff.max_interval", "max_interval must not be less than base_interval")],
        ),
        (
            {"match": {"prefix": "/"}, "cluster": "api", "request_headers_to_add": [{"name": "x-a", "value": "%nope%"}]},
            [(f"{R}.request_headers_to_add[0].value", "unknown variable %nope%; known variables: ")],
        ),
        (
            {"match": {"prefix": "/"}, "cluster": "api", "response_headers_to_add": [{"name": "x-a", "value": "50%"}]},
            [(f"{R}.response_headers_to_add[0].value", "unterminated variable at column 3 in '50%'; write '%%' for a literal '%'")],
        ),
        (
            {"match": {"prefix": "/"}, "cluster": "api", "request_headers_to_add": [{"name": "Host", "value": "x"}], "request_headers_to_remove": ["host"]},
            [
                (f"{R}.request_headers_to_add[0].name", "the Host header cannot be set here; use the route's 'host_rewrite'"),
                (f"{R}.request_headers_to_remove[0]", "the Host header cannot be removed"),
            ],
        ),
        ({"match": {"prefix": "/"}, "cluster_header": "x-cluster", "prefix_rewrite": "/x", "host_rewrite": "h"}, []),
    ],
)
def test_route_checks(route: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    issues = route_issues(route)
    assert len(issues) == len(expected), issues
    for (path, message), (want_path, want_message) in zip(issues, expected):
        assert path == want_path
        assert message.startswith(want_message), message


def test_unknown_variable_at_every_level() -> None:
    raw = config({**OK, "request_headers_to_add": [{"name": "a", "value": "%x%"}]}, request_headers_to_add=[{"name": "a", "value": "%y%"}])
    raw["routes"]["main"]["virtual_hosts"][0]["response_headers_to_add"] = [{"name": "a", "value": "%request_header(bad name)%"}]
    assert [(p, m.split(";")[0]) for p, m in issue_list(raw)] == [
        ("routes.main.request_headers_to_add[0].value", "unknown variable %y%"),
        ("routes.main.virtual_hosts[0].response_headers_to_add[0].value", "invalid variable %request_header(bad name)%: 'bad name' is not a header name"),
        (f"{R}.request_headers_to_add[0].value", "unknown variable %x%"),
    ]


def test_listener_route_must_exist() -> None:
    raw = config(OK)
    raw["listeners"] = [{"name": "a", "address": "127.0.0.1:1", "protocol": "http1", "route": "mian"}, {"name": "b", "route": "main"}]
    assert issue_list(raw) == [("listeners[0].route", "unknown route table 'mian'; defined route tables: main (did you mean 'main'?)")]
    raw.pop("routes")
    assert issue_list(raw) == [
        ("listeners[0].route", "unknown route table 'mian'; no route tables are defined"),
        ("listeners[1].route", "unknown route table 'main'; no route tables are defined"),
    ]


def vhosts(*hosts: tuple[str, list[str]]) -> dict[str, Any]:
    return {"clusters": [], "routes": {"t": {"virtual_hosts": [{"name": n, "domains": d} for n, d in hosts]}}}


def test_duplicate_virtual_host_names() -> None:
    assert issue_list(vhosts(("a", ["x"]), ("b", ["y"]), ("a", ["z"]))) == [
        ("routes.t.virtual_hosts[2].name", "duplicate virtual host name 'a' (first at routes.t.virtual_hosts[0].name)")
    ]


def test_a_domain_in_two_virtual_hosts() -> None:
    raw = vhosts(("a", ["x.com", "*.y.com", "*"]), ("b", ["X.com.", "*.Y.com", "z.com", "z.com:80"]), ("c", ["*", "z.com", "Z.COM"]))
    assert issue_list(raw) == [
        ("routes.t.virtual_hosts[1].domains[0]", "domain 'X.com.' is already in virtual host 'a' (routes.t.virtual_hosts[0].domains[0])"),
        ("routes.t.virtual_hosts[1].domains[1]", "domain '*.Y.com' is already in virtual host 'a' (routes.t.virtual_hosts[0].domains[1])"),
        ("routes.t.virtual_hosts[2].domains[0]", "domain '*' is already in virtual host 'a' (routes.t.virtual_hosts[0].domains[2])"),
        ("routes.t.virtual_hosts[2].domains[1]", "domain 'z.com' is already in virtual host 'b' (routes.t.virtual_hosts[1].domains[2])"),
        ("routes.t.virtual_hosts[2].domains[2]", "domain 'Z.COM' is already in virtual host 'b' (routes.t.virtual_hosts[1].domains[2])"),
    ]
    # the same domain twice in one virtual host; the same table name in another table is fine
    raw = vhosts(("a", ["x.com", "x.com"]))
    raw["routes"]["u"] = {"virtual_hosts": [{"name": "a", "domains": ["x.com"]}]}
    assert issue_list(raw) == [("routes.t.virtual_hosts[0].domains[1]", "duplicate domain 'x.com' (first at routes.t.virtual_hosts[0].domains[0])")]


@pytest.mark.parametrize(
    ("domain", "message"),
    [
        ("a*.b.com", "invalid domain 'a*.b.com': a wildcard '*' may only be the first or the last character"),
        ("*.b.*", "invalid domain '*.b.*': a wildcard '*' may only be the first or the last character"),
        ("x.com:http", "invalid domain 'x.com:http': the port must be a number"),
        ("x.com:70000", "invalid domain 'x.com:70000': port 70000 is out of range 1-65535"),
        ("::1", "invalid domain '::1': write IPv6 addresses in brackets"),
        ("[::1", "invalid domain '[::1': missing ']'"),
        ("a.com/x", "invalid domain 'a.com/x': expected a host name"),
        ("bücher.de", "domain 'bücher.de' is not ASCII"),
        (" ", "a domain must not be empty"),
    ],
)
def test_bad_domains(domain: str, message: str) -> None:
    issues = issue_list(vhosts(("a", [domain])))
    assert len(issues) == 1 and issues[0][0] == "routes.t.virtual_hosts[0].domains[0]"
    assert issues[0][1].startswith(message), issues[0][1]


def test_parse_domain() -> None:
    assert parse_domain("API.Example.com") == Domain("exact", b"api.example.com", None)
    assert parse_domain("api.example.com:8080") == Domain("exact", b"api.example.com", 8080)
    assert parse_domain("[::1]:80") == Domain("exact", b"[::1]", 80)
    assert parse_domain("[::1]") == Domain("exact", b"[::1]", None)
    assert parse_domain("*.example.com") == Domain("suffix", b".example.com", None)
    assert parse_domain("*-bar.example.com:81") == Domain("suffix", b"-bar.example.com", 81)
    assert parse_domain("www.example.*") == Domain("prefix", b"www.example.", None)
    assert parse_domain("*") == Domain("default", b"", None)
    assert parse_domain("*:8080") == Domain("suffix", b"", 8080)
    assert parse_domain("example.com.") == Domain("exact", b"example.com", None)


def test_yaml_issues_have_lines() -> None:
    text = """\
    clusters:
      - {name: api, hosts: [{address: "10.0.0.1:80"}]}
    routes:
      main:
        virtual_hosts:
          - name: v
            domains: ["*"]
            routes:
              - match: {prefix: /}
                cluster: apx
              - match:
                  regex: "(("
                direct_response: {status: 200}
                timeout: 1s
    """
    assert [(i.path, i.line) for i in yaml_issues(text)] == [
        ("routes.main.virtual_hosts[0].routes[0].cluster", 10),
        ("routes.main.virtual_hosts[0].routes[1].match.regex", 12),
        ("routes.main.virtual_hosts[0].routes[1].timeout", 14),
    ]


def test_checks_survive_garbage() -> None:
    # wrong shapes everywhere: the structural walk reports them; check_routes must not crash
    for raw in (
        {"routes": []},
        {"routes": {"m": None}},
        {"routes": {"m": {"virtual_hosts": {"a": 1}}}},
        {"routes": {"m": {"virtual_hosts": [None, {"name": 1, "domains": "x", "routes": {}}]}}},
        {"routes": {"m": {"virtual_hosts": [{"name": "a", "domains": [1], "routes": [None, {"match": [], "retry": []}]}]}}},
        {"routes": {"m": {"virtual_hosts": [{"name": "a", "domains": ["*"], "routes": [{"match": {"headers": {}}, "weighted_clusters": [1]}]}]}}},
        {"listeners": {"a": 1}, "clusters": "x"},
        [],
    ):
        raw_issues(raw)  # type: ignore[arg-type]


def test_a_misspelt_key_is_reported_once() -> None:
    # no "needs an action" / "needs one of": the unknown key already says what is wrong
    issues = route_issues({"match": {"prefx": "/", "headers": [{"name": "a", "exatc": "1"}]}, "clustr": "api"})
    assert issues == [
        (f"{R}.clustr", "unknown key 'clustr'; did you mean 'cluster'?"),
        (f"{R}.match.headers[0].exatc", "unknown key 'exatc'; did you mean 'exact'?"),
        (f"{R}.match.prefx", "unknown key 'prefx'; did you mean 'prefix'?"),
    ]
