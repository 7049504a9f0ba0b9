"""Checks across the tree: names, cluster references, addresses, the admin socket."""

from __future__ import annotations

from proxy.config import load_text
from tests.config.helpers import issues_of, one_issue

TWO_CLUSTERS = """\
clusters:
  - name: a
    hosts: [{address: "10.0.0.1:80"}]
  - name: b
    hosts: [{address: "10.0.0.2:80"}]
"""


def listener(name: str, address: str, cluster: str | None = "a") -> str:
    text = f"  - name: {name}\n    address: '{address}'\n    protocol: tcp\n"
    return text + (f"    cluster: {cluster}\n" if cluster else "")


def test_duplicate_cluster_names() -> None:
    text = TWO_CLUSTERS + "  - name: a\n    hosts: [{address: '10.0.0.3:80'}]\n  - name: a\n    hosts: [{address: '10.0.0.4:80'}]\n"
    issues = issues_of(text)
    assert [(i.path, i.line, i.message) for i in issues] == [
        ("clusters[2].name", 6, "duplicate cluster name 'a' (first at clusters[0].name)"),
        ("clusters[3].name", 8, "duplicate cluster name 'a' (first at clusters[0].name)"),
    ]


def test_duplicate_listener_names() -> None:
    issue = one_issue("listeners:\n" + listener("x", "127.0.0.1:1") + listener("x", "127.0.0.1:2") + TWO_CLUSTERS)
    assert (issue.path, issue.line, issue.message) == ("listeners[1].name", 6, "duplicate listener name 'x' (first at listeners[0].name)")


def test_tcp_listener_needs_a_cluster() -> None:
    issues = issues_of("listeners:\n" + listener("x", "127.0.0.1:1", cluster=None) + listener("y", "127.0.0.1:2", "null") + TWO_CLUSTERS)
    assert [(i.path, i.line, i.message) for i in issues] == [
        ("listeners[0]", 2, "a tcp listener needs a 'cluster'"),
        ("listeners[1]", 5, "a tcp listener needs a 'cluster'"),
    ]


def test_unknown_cluster() -> None:
    issue = one_issue("listeners:\n" + listener("x", "127.0.0.1:1", "c") + TWO_CLUSTERS)
    assert (issue.path, issue.line, issue.message) == ("listeners[0].cluster", 5, "unknown cluster 'c'; defined clusters: a, b")
    issue = one_issue("listeners:\n" + listener("x", "127.0.0.1:1", "backnd") + TWO_CLUSTERS.replace("name: a", "name: backend"))
    assert issue.message == "unknown cluster 'backnd'; defined clusters: backend, b (did you mean 'backend'?)"
    issue = one_issue("listeners:\n" + listener("x", "127.0.0.1:1", "c"))
    assert issue.message == "unknown cluster 'c'; no clusters are defined"


def test_listeners_on_the_same_address() -> None:
    text = (
        "listeners:\n"
        + listener("a1", "127.0.0.1:8080")
        + listener("a2", "127.0.0.1:8080")  # clash
        + listener("b1", "127.0.0.1:0")
        + listener("b2", "127.0.0.1:0")  # port 0: each gets its own port
        + listener("c1", "[::1]:9000")
        + listener("c2", "[0:0::1]:9000")  # the same IPv6 address, spelled differently
        + listener("d1", "unix:/run/p.sock")
        + listener("d2", "unix:/run/p.sock")
        + listener("e1", "127.0.0.1:8081")  # another port: fine
        + TWO_CLUSTERS
    )
    issues = issues_of(text)
    assert [(i.path, i.line, i.message) for i in issues] == [
        ("listeners[1].address", 7, "duplicate listener address '127.0.0.1:8080' (first at listeners[0].address)"),
        ("listeners[5].address", 23, "duplicate listener address '[0:0::1]:9000' (first at listeners[4].address)"),
        ("listeners[7].address", 31, "duplicate listener address 'unix:/run/p.sock' (first at listeners[6].address)"),
    ]


def test_duplicate_hosts_within_a_cluster() -> None:
    text = """\
    clusters:
      - name: a
        hosts:
          - address: 10.0.0.1:80
          - address: 10.0.0.2:80
          - address: 10.0.0.1:80
          - address: Example.com:80
          - address: example.com:80
      - name: b
        hosts:
          - address: 10.0.0.1:80
    """
    issues = issues_of(text)
    assert [(i.path, i.line, i.message) for i in issues] == [
        ("clusters[0].hosts[2].address", 6, "duplicate host address '10.0.0.1:80' (first at clusters[0].hosts[0].address)"),
        ("clusters[0].hosts[4].address", 8, "duplicate host address 'example.com:80' (first at clusters[0].hosts[3].address)"),
    ]


def test_host_port_zero() -> None:
    issue = one_issue("clusters:\n  - name: a\n    hosts: [{address: '10.0.0.1:0'}]\n")
    assert (issue.path, issue.line) == ("clusters[0].hosts[0].address", 3)
    assert "port 0" in issue.message


def test_admin_socket_must_be_absolute() -> None:
    assert load_text("admin:\n  socket: /run/proxy.sock\n").admin.socket == "/run/proxy.sock"
    issue = one_issue("admin:\n  socket: run/proxy.sock\n")
    assert (issue.path, issue.line, issue.message) == ("admin.socket", 2, "admin socket must be an absolute path, got 'run/proxy.sock'")
    issue = one_issue("admin:\n  socket: unix:/run/proxy.sock\n")
    assert "without 'unix:'" in issue.message


def test_semantic_checks_run_alongside_structural_errors() -> None:
    text = """\
    listeners:
      - name: x
        address: 127.0.0.1:1
        protocol: tcp
        cluster: missing
        backlog: 0
    clusters:
      - name: a
        hosts: [{address: "10.0.0.1:80", weight: 0}]
      - name: a
        hosts: "oops"
      - 17
    """
    issues = issues_of(text)
    assert [(i.path, i.line) for i in issues] == [
        ("listeners[0].cluster", 5),
        ("listeners[0].backlog", 6),
        ("clusters[0].hosts[0].weight", 9),
        ("clusters[1].name", 10),
        ("clusters[1].hosts", 11),
        ("clusters[2]", 12),
    ]
    assert issues[0].message.startswith("unknown cluster 'missing'")
    assert issues[3].message.startswith("duplicate cluster name 'a'")


def test_semantic_checks_in_json() -> None:
    text = '{"listeners": [{"name": "x", "address": "127.0.0.1:1", "protocol": "tcp"}], "admin": {"socket": "a.sock"}}'
    issues = issues_of(text, fmt="json")
    assert [(i.path, i.line, i.message) for i in issues] == [
        ("admin.socket", None, "admin socket must be an absolute path, got 'a.sock'"),
        ("listeners[0]", None, "a tcp listener needs a 'cluster'"),
    ]


def test_variable_matchers_are_checked():
    from proxy.config import ConfigError, load_text

    text = """
listeners: [{name: h, address: 127.0.0.1:0, protocol: http1, route: main}]
clusters: [{name: c, hosts: [{address: 127.0.0.1:1}]}]
routes:
  main:
    virtual_hosts:
      - name: a
        domains: ["*"]
        routes:
          - match: {prefix: /, variables: [{variable: "%no_such_thing%", exact: x}, {variable: "%method%"}]}
            cluster: c
"""
    try:
        load_text(text, filename="x.yaml")
    except ConfigError as exc:
        found = {(i.path, i.line) for i in exc.issues}
        messages = " ".join(i.message for i in exc.issues)
    else:
        raise AssertionError("accepted a bad variable matcher")
    assert ("routes.main.virtual_hosts[0].routes[0].match.variables[0].variable", 10) in found
    assert ("routes.main.virtual_hosts[0].routes[0].match.variables[1]", 10) in found
    assert "unknown variable %no_such_thing%" in messages and "a variable matcher needs one of" in messages


def test_listeners_that_cannot_both_bind() -> None:
    # As the listener binds (proxy.network.listener): SO_REUSEADDR, and IPV6_V6ONLY on IPv6.
    text = (
        "listeners:\n"
        + listener("a1", "0.0.0.0:80")
        + listener("a2", "127.0.0.1:80")  # clash: the wildcard holds port 80 on every IPv4 address
        + listener("a3", "127.0.0.2:81")
        + listener("a4", "0.0.0.0:81")  # clash, the wildcard second
        + listener("b1", "[::]:80")  # beside 0.0.0.0:80: fine, IPv6 sockets are v6-only
        + listener("b2", "[::1]:80")  # clash
        + listener("c1", "127.0.0.1:82")
        + listener("c2", "127.0.0.2:82")  # two specific addresses: fine
        + listener("d1", "0.0.0.0:0")
        + listener("d2", "127.0.0.1:0")  # port 0: each its own port
        + listener("e1", "localhost:80")  # a name: resolved when bound, not here
        + TWO_CLUSTERS
        + "admin:\n  metrics: 0.0.0.0:82\n"  # the metrics listener binds too: clash with c1
    )
    issues = issues_of(text)
    assert [(i.path, i.line, i.message) for i in issues] == [
        ("listeners[1].address", 7, "'127.0.0.1:80' cannot be bound beside '0.0.0.0:80' (at listeners[0].address): 0.0.0.0 takes port 80 on every IPv4 address"),
        ("listeners[3].address", 15, "'0.0.0.0:81' cannot be bound beside '127.0.0.2:81' (at listeners[2].address): 0.0.0.0 takes port 81 on every IPv4 address"),
        ("listeners[5].address", 23, "'[::1]:80' cannot be bound beside '[::]:80' (at listeners[4].address): [::] takes port 80 on every IPv6 address"),
        ("admin.metrics", 52, "'0.0.0.0:82' cannot be bound beside '127.0.0.1:82' (at listeners[6].address): 0.0.0.0 takes port 82 on every IPv4 address"),
    ]
