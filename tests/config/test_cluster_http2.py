"""A cluster's `http2:` options: PING keepalive takes both durations, above zero, on HTTP/2."""

from __future__ import annotations

import pytest

from proxy.config import load_text
from tests.config.helpers import one_issue


def cluster(protocol: str, http2: str) -> str:
    return f"clusters:\n  - name: back\n    protocol: {protocol}\n    hosts: [{{address: '10.0.0.1:80'}}]\n    http2: {http2}\n"


def test_keepalive_is_off_by_default() -> None:
    config = load_text(cluster("http2", "{}"), filename="t.yaml", fmt="yaml")
    assert config.clusters[0].http2.keepalive_interval is None and config.clusters[0].http2.keepalive_timeout is None


def test_keepalive_durations_are_parsed() -> None:
    config = load_text(cluster("downstream", "{keepalive_interval: 200ms, keepalive_timeout: 2s}"), filename="t.yaml", fmt="yaml")
    options = config.clusters[0].http2
    assert (options.keepalive_interval, options.keepalive_timeout) == (0.2, 2.0)


@pytest.mark.parametrize(
    ("protocol", "http2", "path", "message"),
    [
        ("http2", "{keepalive_timeout: 1s}", "clusters[0].http2.keepalive_timeout", "keepalive_timeout needs a keepalive_interval"),
        ("http2", "{keepalive_interval: 1s}", "clusters[0].http2.keepalive_interval", "keepalive_interval needs a keepalive_timeout"),
        ("http2", "{keepalive_interval: -1s, keepalive_timeout: 1s}", "clusters[0].http2.keepalive_interval", "invalid duration '-1s'"),
        ("http2", "{keepalive_interval: 1s, keepalive_timeout: 0s}", "clusters[0].http2.keepalive_timeout", "must be more than 0"),
        ("http2", "{keepalive_interval: 1s, keepalive_timeout: 5}", "clusters[0].http2.keepalive_timeout", "needs a unit"),
        ("http1", "{keepalive_interval: 1s, keepalive_timeout: 1s}", "clusters[0].http2", "needs the cluster's protocol to be http2 or downstream"),
        ("http2", "{keepalive: 1s}", "clusters[0].http2.keepalive", "unknown key 'keepalive'"),
    ],
)
def test_bad_keepalive_is_refused_with_its_path(protocol: str, http2: str, path: str, message: str) -> None:
    issue = one_issue(cluster(protocol, http2))
    assert issue.path == path and message in issue.message, issue
    assert issue.line == 5
