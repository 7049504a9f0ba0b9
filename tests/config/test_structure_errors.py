"""Each kind of structural error, alone: its path, line and message."""

from __future__ import annotations

import pytest

from tests.config.helpers import issues_of, one_issue, where

LISTENER = """\
listeners:
  - name: front
    address: 127.0.0.1:8080
    protocol: tcp
    cluster: back
"""
CLUSTER = """\
clusters:
  - name: back
    hosts:
      - address: 10.0.0.1:80
"""


@pytest.mark.parametrize(
    ("text", "path", "line", "message"),
    [
        ("listners: []\n", "listners", 1, "unknown key 'listners'; did you mean 'listeners'?"),
        ("runtime:\n  workers: 2\n  drain: 5s\n", "runtime.drain", 3, "unknown key 'drain'; did you mean 'drain_timeout'?"),
        (
            LISTENER + "    color: blue\n" + CLUSTER,
            "listeners[0].color",
            6,
            "unknown key 'color'; expected one of: name, address, protocol, cluster,",
        ),
        (
            CLUSTER + "        wieght: 2\n",
            "clusters[0].hosts[0].wieght",
            5,
            "unknown key 'wieght'; did you mean 'weight'?",
        ),
        (
            CLUSTER + "    conect_timeout: 2s\n",
            "clusters[0].conect_timeout",
            5,
            "unknown key 'conect_timeout'; did you mean 'connect_timeout'?",
        ),
        ("logging:\n  3: x\n", "logging[3]", 2, "unknown key 3: keys must be strings"),
    ],
)
def test_unknown_keys_at_every_depth(text: str, path: str, line: int, message: str) -> None:
    issue = one_issue(text)
    assert (issue.path, issue.line) == (path, line)
    assert issue.message.startswith(message), issue.message


def test_missing_required_keys() -> None:
    issues = issues_of(
        """\
        clusters:
          - name: back
          - hosts: [{address: "10.0.0.1:80"}]
          - name: other
            hosts: [{weight: 2}]
        """
    )
    assert [(i.path, i.line, i.message) for i in issues] == [
        ("clusters[0]", 2, "missing required key 'hosts'"),
        ("clusters[1]", 3, "missing required key 'name'"),
        ("clusters[2].hosts[0]", 5, "missing required key 'address'"),
    ]


def test_listener_missing_address_and_protocol() -> None:
    issues = issues_of(LISTENER.replace("    address: 127.0.0.1:8080\n    protocol: tcp\n", "") + CLUSTER)
    assert [(i.path, i.line, i.message) for i in issues] == [
        ("listeners[0]", 2, "missing required key 'address'"),
        ("listeners[0]", 2, "missing required key 'protocol'"),
    ]


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("5 parsecs", ["invalid duration '5 parsecs'", "unit"]),
        ("5", ["duration 5 needs a unit", "'5s'"]),
        ("2.5", ["duration 2.5 needs a unit"]),
        ("-1s", ["invalid duration '-1s'"]),
        ("true", ["expected a duration", "got bool"]),
        ("[5s]", ["expected a duration", "got list"]),
    ],
)
def test_bad_durations(value: str, words: list[str]) -> None:
    issue = one_issue(f"runtime:\n  workers: 2\n  drain_timeout: {value}\n")
    assert (issue.path, issue.line) == ("runtime.drain_timeout", 3)
    for word in words:
        assert word in issue.message, issue.message


def test_bad_duration_in_optional_field() -> None:
    issue = one_issue(LISTENER + "    idle_timeout: 10\n" + CLUSTER)
    assert (issue.path, issue.line, issue.message) == ("listeners[0].idle_timeout", 6, "duration 10 needs a unit, e.g. '10s' or '10ms'")


@pytest.mark.parametrize(
    ("address", "words"),
    [
        ("nohost", ["invalid address 'nohost'", "host:port"]),
        ("1.2.3.4:99999", ["invalid address '1.2.3.4:99999'", "out of range"]),
        ("'[::1'", ["invalid address '[::1'", "[v6-address]:port"]),
        ("unix:relative", ["invalid address 'unix:relative'", "must be absolute"]),
        ("'::1:80'", ["brackets"]),
        ("1.2.3.4:http", ["port 'http' is not a number"]),
        ("'[nope]:80'", ["'nope' is not an IPv6 address"]),
        ("bad_host!:80", ["neither an IP address nor a host name"]),
        ("8080", ["expected an address string", "got int"]),
    ],
)
def test_bad_addresses(address: str, words: list[str]) -> None:
    issue = one_issue(CLUSTER.replace("10.0.0.1:80", address))
    assert (issue.path, issue.line) == ("clusters[0].hosts[0].address", 4)
    for word in words:
        assert word in issue.message, issue.message


def test_bad_literals() -> None:
    issues = issues_of(CLUSTER + "    lb: roundrobin\nlogging:\n  level: loud\n  format: 7\n")
    assert [(i.path, i.line, i.message) for i in issues] == [
        ("clusters[0].lb", 5, "expected one of 'round_robin', 'random', got 'roundrobin'; did you mean 'round_robin'?"),
        ("logging.level", 7, "expected one of 'debug', 'info', 'warning', 'error', got 'loud'"),
        ("logging.format", 8, "expected one of 'text', 'json', got 7"),
    ]


def test_protocol_literal() -> None:
    issue = one_issue(LISTENER.replace("protocol: tcp", "protocol: udp") + CLUSTER)
    assert (issue.path, issue.line, issue.message) == ("listeners[0].protocol", 4, "unknown protocol 'udp'; use tcp, http1, http2, http or 'package.module:Codec'")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("weight", "-1", "expected an integer from 1 to 1000000, got -1"),
        ("weight", "0", "expected an integer from 1 to 1000000, got 0"),
        ("weight", "1000001", "expected an integer from 1 to 1000000, got 1000001"),
        ("weight", "true", "expected an integer from 1 to 1000000, got a boolean (true)"),
        ("weight", "yes", "expected an integer from 1 to 1000000, got 'yes'"),  # YAML 1.2: a string, not a boolean
        ("weight", "'3'", "expected an integer from 1 to 1000000, got '3'"),
        ("weight", "2.0", "expected an integer from 1 to 1000000, got 2.0"),
        ("weight", "null", "expected an integer from 1 to 1000000, got null"),
    ],
)
def test_bad_integers(field: str, value: str, message: str) -> None:
    issue = one_issue(CLUSTER + f"        {field}: {value}\n")
    assert (issue.path, issue.line, issue.message) == (f"clusters[0].hosts[0].{field}", 5, message)


def test_integer_bounds_and_optional_integers() -> None:
    text = LISTENER + "    max_connections: 0\n    max_connect_attempts: 17\n    backlog: false\n" + CLUSTER
    assert [(i.path, i.line, i.message) for i in issues_of(text)] == [
        ("listeners[0].max_connections", 6, "expected an integer >= 1, got 0"),
        ("listeners[0].max_connect_attempts", 7, "expected an integer from 1 to 16, got 17"),
        ("listeners[0].backlog", 8, "expected an integer from 1 to 65535, got a boolean (false)"),
    ]


@pytest.mark.parametrize("value", ["0", "many", "true", "1.5"])
def test_int_or_auto_union(value: str) -> None:
    issue = one_issue(f"runtime:\n  workers: {value}\n")
    assert (issue.path, issue.line) == ("runtime.workers", 2)
    assert issue.message.startswith("expected an integer >= 1 or 'auto', got "), issue.message


def test_names() -> None:
    issues = issues_of(
        CLUSTER.replace("name: back", "name: 'bad name'")
        + "  - name: ''\n    hosts: [{address: '10.0.0.2:80'}]\n"
        + f"  - name: {'n' * 129}\n    hosts: [{{address: '10.0.0.3:80'}}]\n"
        + "  - name: 7\n    hosts: [{address: '10.0.0.3:80'}]\n"
    )
    assert [(i.path, i.line) for i in issues] == [
        ("clusters[0].name", 2),
        ("clusters[1].name", 5),
        ("clusters[2].name", 7),
        ("clusters[3].name", 9),
    ]
    messages = [i.message for i in issues]
    assert messages[0] == r"invalid value 'bad name': must match the pattern ^[A-Za-z0-9_.\-]+$"
    assert messages[1] == "must not be empty"
    assert messages[2] == "must be at most 128 characters long, got 129"
    assert messages[3] == "expected a string, got 7"


@pytest.mark.parametrize(
    ("text", "path", "line", "message"),
    [
        ("listeners: {front: 1}\n", "listeners", 1, "expected a list, got a mapping"),
        ("listeners: front\n", "listeners", 1, "expected a list, got 'front'"),
        ("runtime: [1]\n", "runtime", 1, "expected a mapping, got a list"),
        ("runtime:\n", "runtime", 1, "expected a mapping, got null"),
        (CLUSTER.replace("\n      - address: 10.0.0.1:80", " 10.0.0.1:80"), "clusters[0].hosts", 3, "expected a list, got '10.0.0.1:80'"),
        (CLUSTER + "        metadata: [a]\n", "clusters[0].hosts[0].metadata", 5, "expected a mapping, got a list"),
        (CLUSTER + "        metadata: {zone: 1}\n", "clusters[0].hosts[0].metadata.zone", 5, "expected a string, got 1"),
        (CLUSTER + "        metadata: {1: a}\n", "clusters[0].hosts[0].metadata[1]", 5, "bad key: expected a string, got 1"),
        ("clusters: [[]]\n", "clusters[0]", 1, "expected a mapping, got a list"),
        ("- a\n- b\n", "<root>", 1, "the top level must be a mapping, got a list"),
        ("just text\n", "<root>", 1, "the top level must be a mapping, got 'just text'"),
        ("admin:\n  socket: 5\n", "admin.socket", 2, "expected a string, got 5"),
    ],
)
def test_wrong_container_and_value_types(text: str, path: str, line: int, message: str) -> None:
    issue = one_issue(text)
    assert (issue.path, issue.line, issue.message) == (path, line, message)


def test_empty_hosts_list() -> None:
    issue = one_issue("clusters:\n  - name: back\n    hosts: []\n")
    assert (issue.path, issue.line, issue.message) == ("clusters[0].hosts", 3, "needs at least 1 item, got none")


def test_json_errors_have_paths_but_no_lines() -> None:
    text = """\
    {
      "listeners": [{"name": "front", "address": "127.0.0.1:8080", "protocol": "tcp", "cluster": "back", "relay": "zero"}],
      "clusters": [{"name": "back", "hosts": [{"address": "10.0.0.1:80", "weigth": 2}]}],
      "runtime": {"drain_timeout": 30}
    }
    """
    issues = issues_of(text, fmt="json", filename="proxy.json")
    assert [(i.path, i.line, i.message) for i in issues] == [
        ("clusters[0].hosts[0].weigth", None, "unknown key 'weigth'; did you mean 'weight'?"),
        ("listeners[0].relay", None, "expected one of 'auto', 'splice', 'copy', got 'zero'"),
        ("runtime.drain_timeout", None, "duration 30 needs a unit, e.g. '30s' or '30ms'"),
    ]
    assert str(issues[0]) == "proxy.json: clusters[0].hosts[0].weigth: unknown key 'weigth'; did you mean 'weight'?"


def test_json_syntax_error_has_line() -> None:
    issue = one_issue('{\n  "runtime": {"workers": 2,}\n}\n', fmt="json")
    assert (issue.path, issue.line) == ("<root>", 2)
    assert issue.message.startswith("invalid JSON: ")


def test_json_duplicate_key() -> None:
    issue = one_issue('{"runtime": {"workers": 2, "workers": 3}}', fmt="json")
    assert (issue.path, issue.line, issue.message) == ("runtime.workers", None, "duplicate key 'workers'")


def test_json_top_level_must_be_an_object() -> None:
    assert where(issues_of("[1, 2]", fmt="json")) == [("<root>", None)]


def test_http2_listener_options_are_bounded() -> None:
    text = LISTENER.replace("protocol: tcp\n    cluster: back", "protocol: http2\n    route: r\n    http2:\n      initial_stream_window_size: 1000\n      max_concurrent_streams: 0") + CLUSTER + "routes:\n  r:\n    virtual_hosts: [{name: a, domains: ['*'], routes: [{match: {prefix: /}, cluster: back}]}]\n"
    issues = issues_of(text)
    paths = {issue.path for issue in issues}
    assert "listeners[0].http2.initial_stream_window_size" in paths, [str(i) for i in issues]
    assert "listeners[0].http2.max_concurrent_streams" in paths, [str(i) for i in issues]
