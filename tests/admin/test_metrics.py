"""Unit tests for the Prometheus exporter (proxy.metrics), the metrics HTTP handler, the
`admin.metrics` config key and the admin socket's GET /metrics."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from proxy import __version__
from proxy.admin import metrics_server
from proxy.admin.server import AdminServer, _response
from proxy.config import load_text
from proxy.metrics import CONTENT_TYPE, escape_help, escape_label_value, is_gauge, metric_name, render
from proxy.stats import ClusterStats, HostStats, ListenerStats
from proxy.upstream.cluster import Cluster
from tests.config.helpers import one_issue
from tests.integration.harness import promtool_check

CONFIG = """\
listeners:
  - {name: web, address: 127.0.0.1:0, protocol: tcp, cluster: api}
clusters:
  - name: api
    hosts: [{address: 127.0.0.1:8001}, {address: unix:/run/api.sock}]
"""


def _worker(listener_names=("web",), state="serving"):
    config = load_text(CONFIG)
    clusters = {c.name: Cluster(c) for c in config.clusters}
    listeners = [SimpleNamespace(config=SimpleNamespace(name=n), stats=ListenerStats()) for n in listener_names]
    return SimpleNamespace(config=config, clusters=clusters, listeners=listeners, state=state, started=100.0)


def _families(text: str) -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def test_counter_and_gauge_naming():
    assert metric_name("listener", "downstream_cx_total") == "proxy_listener_downstream_cx_total"
    assert metric_name("listener", "downstream_cx_destroy") == "proxy_listener_downstream_cx_destroy_total"
    assert metric_name("listener", "downstream_rx_bytes_total") == "proxy_listener_downstream_rx_bytes_total"
    assert metric_name("listener", "downstream_cx_active") == "proxy_listener_downstream_cx_active"
    assert metric_name("host", "cx_connect_fail") == "proxy_host_cx_connect_fail_total"
    assert is_gauge("upstream_rq_active") and not is_gauge("upstream_rq_total")


def test_every_stat_is_one_family_with_help_and_type():
    text = render(_worker())
    types = _families(text)
    helps = re.findall(r"^# HELP (\S+) \S", text, re.M)
    assert sorted(helps) == sorted(types)  # every family has a non-empty HELP
    for prefix, cls in (("listener", ListenerStats), ("cluster", ClusterStats), ("host", HostStats)):
        for stat in cls.COUNTERS + cls.GAUGES:
            name = metric_name(prefix, stat)
            assert types[name] == ("gauge" if stat in cls.GAUGES else "counter")
        for stat in cls.HISTOGRAMS:
            assert types[f"proxy_{prefix}_{stat}_seconds"] == "histogram"
    # counters end in _total, gauges do not
    for name, kind in types.items():
        if kind != "histogram":
            assert name.endswith("_total") == (kind == "counter"), name
    # HELP and TYPE come right before the family's samples, and each family's samples are together
    lines = text.splitlines()
    seen: list[str] = []
    for line in lines:
        if line.startswith("#"):
            continue
        family = re.sub(r"_(bucket|sum|count)$", "", re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
        if not seen or seen[-1] != family:
            assert family not in seen, f"{family} samples are split"
            seen.append(family)
    assert text.endswith("\n") and not text.endswith("\n\n")


def test_values_and_labels():
    worker = _worker(("web", "db"))
    worker.listeners[0].stats.downstream_cx_total = 3
    worker.listeners[0].stats.downstream_cx_active = 1
    worker.listeners[1].stats.downstream_cx_destroy = 7
    cluster = worker.clusters["api"]
    cluster.stats.upstream_cx_total = 5
    cluster.hosts[0].stats.cx_total = 2
    text = render(worker, now=112.5)
    assert 'proxy_listener_downstream_cx_total{listener="web"} 3\n' in text
    assert 'proxy_listener_downstream_cx_total{listener="db"} 0\n' in text
    assert 'proxy_listener_downstream_cx_active{listener="web"} 1\n' in text
    assert 'proxy_listener_downstream_cx_destroy_total{listener="db"} 7\n' in text
    assert 'proxy_cluster_upstream_cx_total{cluster="api"} 5\n' in text
    assert 'proxy_host_cx_total{cluster="api",host="127.0.0.1:8001"} 2\n' in text
    assert 'proxy_host_cx_active{cluster="api",host="unix:/run/api.sock"} 0\n' in text
    assert f'proxy_info{{version="{__version__}"}} 1\n' in text
    assert "proxy_uptime_seconds 12.5\n" in text
    assert 'proxy_state{state="serving"} 1\n' in text
    assert 'proxy_state{state="draining"} 0\n' in text


def test_state_follows_the_worker():
    text = render(_worker(state="draining"))
    assert 'proxy_state{state="draining"} 1\n' in text and 'proxy_state{state="serving"} 0\n' in text


def test_label_value_escaping():
    assert escape_label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    assert escape_help("line\\one\ntwo") == "line\\\\one\\ntwo"
    worker = _worker(('we"b\\x\ny',))
    text = render(worker)
    assert 'proxy_listener_downstream_cx_total{listener="we\\"b\\\\x\\ny"} 0\n' in text


def test_families_without_samples_are_left_out():
    worker = SimpleNamespace(listeners=[], clusters={}, state="serving")
    types = _families(render(worker))
    assert set(types) == {"proxy_info", "proxy_uptime_seconds", "proxy_state"}


def test_promtool_accepts_the_output():
    worker = _worker(("web", 'odd "name"'))
    worker.listeners[0].stats.downstream_rx_bytes_total = 12345
    result = promtool_check(render(worker))
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (result.stdout, result.stderr)


# ---------------------------------------------------------------- the HTTP handler


def _split(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return lines[0], headers, body


def test_handler_metrics_ready_and_404():
    worker = _worker()
    status, headers, body = _split(metrics_server.handle(worker, b"GET /metrics HTTP/1.1\r\nHost: x"))
    assert status == "HTTP/1.1 200 OK" and headers["content-type"] == CONTENT_TYPE
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert int(headers["content-length"]) == len(body) and b"proxy_listener_downstream_cx_total" in body
    assert headers["connection"] == "close"

    assert _split(metrics_server.handle(worker, b"GET /ready HTTP/1.1"))[::2] == ("HTTP/1.1 200 OK", b"ready\n")
    worker.state = "draining"
    assert _split(metrics_server.handle(worker, b"GET /ready HTTP/1.0"))[::2] == ("HTTP/1.1 503 Service Unavailable", b"draining\n")

    assert _split(metrics_server.handle(worker, b"GET /nope HTTP/1.1"))[0] == "HTTP/1.1 404 Not Found"
    status, headers, _ = _split(metrics_server.handle(worker, b"POST /metrics HTTP/1.1"))
    assert status == "HTTP/1.1 405 Method Not Allowed" and headers["allow"] == "GET, HEAD"
    status, headers, body = _split(metrics_server.handle(worker, b"HEAD /metrics HTTP/1.1"))
    assert status == "HTTP/1.1 200 OK" and body == b"" and int(headers["content-length"]) > 0


@pytest.mark.parametrize("head", [b"", b"GARBAGE", b"GET metrics HTTP/1.1", b"GET /metrics SPDY/3", b"\xff\xfe /x HTTP/1.1"])
def test_handler_bad_requests_get_400(head):
    assert _split(metrics_server.handle(_worker(), head))[0] == "HTTP/1.1 400 Bad Request"


def test_admin_socket_metrics_is_the_same_text():
    worker = _worker()
    worker.listeners[0].stats.downstream_cx_total = 4
    admin = AdminServer(worker, "/nonexistent/admin.sock")
    result = admin.handle("GET", "/metrics", b"")
    raw = _response(200, result, keep_alive=False)
    status, headers, body = _split(raw)
    assert status == "HTTP/1.1 200 OK" and headers["content-type"] == CONTENT_TYPE
    assert re.sub(rb"proxy_uptime_seconds \S+", b"", body) == re.sub(rb"proxy_uptime_seconds \S+", b"", render(worker).encode())


# ---------------------------------------------------------------- config


def test_admin_metrics_config():
    assert load_text("admin:\n  metrics: 127.0.0.1:9901\n").admin.metrics.sockaddr == ("127.0.0.1", 9901)
    assert load_text("admin:\n  metrics: '[::1]:0'\n").admin.metrics.port == 0
    assert load_text("{}").admin.metrics is None
    issue = one_issue("admin:\n  metrics: '9901'\n")
    assert issue.path == "admin.metrics"
    issue = one_issue("admin:\n  metrics: 9901\n")
    assert issue.path == "admin.metrics"
    issue = one_issue("admin:\n  metrics: unix:/run/metrics.sock\n")
    assert (issue.path, issue.line) == ("admin.metrics", 2) and "host:port" in issue.message


def test_request_time_histogram_is_cumulative_in_seconds():
    worker = _worker()
    h = worker.listeners[0].stats.downstream_rq_time
    for ms in (0.2, 3, 3, 40, 7000):
        h.observe(ms)
    text = render(worker)
    name = "proxy_listener_downstream_rq_time_seconds"
    assert f'{name}_bucket{{listener="web",le="0.0005"}} 1' in text
    assert f'{name}_bucket{{listener="web",le="0.005"}} 3' in text
    assert f'{name}_bucket{{listener="web",le="0.05"}} 4' in text
    assert f'{name}_bucket{{listener="web",le="+Inf"}} 5' in text
    assert f'{name}_count{{listener="web"}} 5' in text
    assert f'{name}_sum{{listener="web"}} 7.0462' in text


def test_responses_by_status_code():
    worker = _worker()
    worker.listeners[0].stats.downstream_rq_code.update({200: 7, 503: 2})
    text = render(worker)
    assert 'proxy_listener_downstream_rq_code_total{listener="web",code="200"} 7' in text
    assert 'proxy_listener_downstream_rq_code_total{listener="web",code="503"} 2' in text
    assert worker.listeners[0].stats.snapshot()["downstream_rq_code.503"] == 2
