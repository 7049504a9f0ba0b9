"""Timeouts: the defaults, and "0s" refused (with path and line) wherever zero makes no sense;
null, where a timeout may be off, turns it off."""

from __future__ import annotations

import pytest

from proxy.config import load_text
from tests.config.helpers import VALID, issues_of

HTTP = """\
listeners:
  - name: web
    address: 127.0.0.1:8080
    protocol: http1
    route: main
    idle_timeout: {listener_idle}
    http:
      request_header_timeout: {header}
      idle_timeout: {http_idle}
clusters:
  - name: back
    connect_timeout: {connect}
    idle_timeout: {pool_idle}
    hosts: [{{address: "10.0.0.1:80"}}]
routes:
  main:
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {{prefix: /}}
            cluster: back
            timeout: {route}
            retry: {{on: [5xx], per_try_timeout: {per_try}}}
runtime:
  upgrade_timeout: {upgrade}
diagnostics:
  interval: {interval}
"""
FIELDS = ("listener_idle", "header", "http_idle", "connect", "pool_idle", "route", "per_try", "upgrade", "interval")


def http(**values: str) -> str:
    return HTTP.format(**{name: values.get(name, "1s") for name in FIELDS})


def test_connect_timeout_defaults_to_five_seconds() -> None:
    # Envoy's default; 1 s lost to Linux's first SYN retransmit (after 1 s) and gave 502 UF.
    cluster = load_text(VALID).clusters[0]
    assert cluster.connect_timeout == 5.0


def test_zero_timeouts_are_refused_with_path_and_line() -> None:
    issues = issues_of(http(**{name: "0s" for name in FIELDS}))
    nullable = "duration '0s' must be more than 0; null turns it off"
    fixed = "duration '0s' must be more than 0"
    assert [(i.path, i.line, i.message) for i in issues] == [
        ("listeners[0].idle_timeout", 6, nullable),
        ("listeners[0].http.request_header_timeout", 8, fixed),
        ("listeners[0].http.idle_timeout", 9, fixed),
        ("clusters[0].connect_timeout", 12, fixed),
        ("clusters[0].idle_timeout", 13, fixed),
        ("routes.main.virtual_hosts[0].routes[0].timeout", 23, nullable),
        ("routes.main.virtual_hosts[0].routes[0].retry.per_try_timeout", 24, nullable),
        ("runtime.upgrade_timeout", 26, fixed),
        ("diagnostics.interval", 28, fixed),
    ]
    assert str(issues[3]) == "test.yaml:12: clusters[0].connect_timeout: duration '0s' must be more than 0"


@pytest.mark.parametrize("zero", ["0ms", "0.0s", "0us", "0h"])
def test_every_spelling_of_zero_is_refused(zero: str) -> None:
    [issue] = issues_of(http(connect=zero))
    assert (issue.path, issue.message) == ("clusters[0].connect_timeout", f"duration {zero!r} must be more than 0")


def test_null_turns_a_timeout_off_where_it_may_be_off() -> None:
    config = load_text(http(listener_idle="null", route="null", per_try="null"))
    route = config.routes["main"].virtual_hosts[0].routes[0]
    assert (config.listeners[0].idle_timeout, route.timeout, route.retry.per_try_timeout) == (None, None, None)
    [issue] = issues_of(http(connect="null"))
    assert issue.path == "clusters[0].connect_timeout" and issue.message.startswith("expected a duration")  # never off


def test_zero_stays_allowed_where_it_means_at_once() -> None:
    # drain_timeout 0: close open connections at once; no probation; no back-off between retries.
    text = "runtime: {drain_timeout: 0s, upgrade_probation: 0s}\n"
    runtime = load_text(text).runtime
    assert (runtime.drain_timeout, runtime.upgrade_probation) == (0.0, 0.0)
    backoff = load_text(http().replace("per_try_timeout: 1s", "per_try_timeout: 1s, backoff: {base_interval: 0s}"))
    assert backoff.routes["main"].virtual_hosts[0].routes[0].retry.backoff.base_interval == 0.0
