"""The keeper's one view over several workers' admin answers (proxy.admin.aggregate), by the
schemas declared where the answers are built (proxy.admin.server.MERGE, proxy.metrics)."""

from __future__ import annotations

import re

from proxy import metrics
from proxy.admin.aggregate import ONCE, merge, merge_metrics, task_trees
from proxy.admin.client import render
from proxy.admin.server import MERGE, stat_adds_up
from proxy.stats import ClusterStats, HostStats, ListenerStats
from tests.integration.harness import promtool_check


def _host(address: str, cx_total: int, *, weight: int = 3, enabled: bool = True, healthy: bool = True, **stats: int) -> dict:
    return {"address": address, "weight": weight, "enabled": enabled, "healthy": healthy, "stats": {"cx_total": cx_total, "cx_active": 1, **stats}}


def _cluster(*hosts: dict, rq: int = 0, lb: str = "round_robin") -> list:
    stats = {"upstream_rq_total": rq, "upstream_rq_active": 1, "upstream_rq_time_count": rq, "upstream_rq_time_sum_ms": 0.1}
    return [{"name": "api", "lb": lb, "hosts": list(hosts), "stats": stats}]


def test_clusters_add_counts_and_gauges_and_keep_weights():
    merged = merge(MERGE["/clusters"], {"0": _cluster(_host("h:1", 2), rq=4), "1": _cluster(_host("h:1", 5), rq=6)})
    host = merged[0]["hosts"][0]
    assert host == {"address": "h:1", "weight": 3, "enabled": True, "healthy": True, "stats": {"cx_total": 7, "cx_active": 2}}
    stats = merged[0]["stats"]
    assert stats == {"upstream_rq_total": 10, "upstream_rq_active": 2, "upstream_rq_time_count": 10, "upstream_rq_time_sum_ms": 0.2}
    assert merged[0]["lb"] == "round_robin" and "per_worker" not in merged[0]


def test_a_property_the_workers_disagree_on_is_null_with_each_workers_value():
    merged = merge(MERGE["/clusters"], {"0": _cluster(_host("h:1", 1)), "1": _cluster(_host("h:1", 1, enabled=False, healthy=False))})
    host = merged[0]["hosts"][0]
    assert host["enabled"] is None and host["healthy"] is None and host["weight"] == 3
    assert host["per_worker"] == {"enabled": {"0": True, "1": False}, "healthy": {"0": True, "1": False}}
    assert host["stats"]["cx_total"] == 2
    table = render("clusters", merged).splitlines()
    assert re.split(r"  +", table[1]) == ["api", "h:1", "3", "yes (#0), no (#1)", "yes (#0), no (#1)", "2", "2"], table
    three = merge(MERGE["/clusters"], {w: _cluster(_host("h:1", 1, weight=2 if w == "1" else 3)) for w in ("0", "1", "2")})
    assert "3 (#0 #2), 2 (#1)" in render("clusters", three)


def test_unknown_numbers_are_not_summed():
    """A number the schema does not declare a count is a property: taken once, never added."""
    a = _cluster(_host("h:1", 1, max_connections=100), rq=1)
    b = _cluster(_host("h:1", 1, max_connections=100), rq=1)
    a[0]["stats"]["pool_limit"] = b[0]["stats"]["pool_limit"] = 8
    a[0]["connect_timeout_ms"] = b[0]["connect_timeout_ms"] = 250
    merged = merge(MERGE["/clusters"], {"0": a, "1": b})
    assert merged[0]["hosts"][0]["stats"]["max_connections"] == 100
    assert merged[0]["stats"]["pool_limit"] == 8 and merged[0]["connect_timeout_ms"] == 250
    assert merge(MERGE["/stats"], {"0": {"listener.web.some_limit": 4}, "1": {"listener.web.some_limit": 4}}) == {"listener.web.some_limit": 4}


def test_things_are_matched_by_name_not_position():
    """Hosts in another order, a host only one worker has: each folded with its own kind."""
    merged = merge(MERGE["/clusters"], {"0": _cluster(_host("a:1", 1), _host("b:1", 10)), "1": _cluster(_host("b:1", 20), _host("c:1", 7))})
    hosts = {h["address"]: h for h in merged[0]["hosts"]}
    assert [h["address"] for h in merged[0]["hosts"]] == ["a:1", "b:1", "c:1"]
    assert hosts["b:1"]["stats"]["cx_total"] == 30 and "per_worker" not in hosts["b:1"]
    assert hosts["a:1"]["per_worker"] == {"address": {"0": "a:1", "1": None}} and hosts["a:1"]["stats"]["cx_total"] == 1
    assert hosts["c:1"]["per_worker"] == {"address": {"0": None, "1": "c:1"}}


def test_flat_stats_add_up_by_their_class():
    keys = {
        "listener.web.downstream_cx_total": 1,
        "listener.web.downstream_cx_active": 2,
        "listener.web.downstream_rq_code.200": 3,
        "listener.web.downstream_rq_time_sum_ms": 1.5,
        "cluster.api.upstream_rq_time_count": 4,
        "cluster.api.host.10.0.0.7:80.cx_total": 5,
        "cluster.api.host.[::1]:80.cx_active": 6,
        "cluster.api.host.unix:/run/a.sock.cx_connect_fail": 7,
    }
    assert all(stat_adds_up(k) for k in keys)
    assert not any(stat_adds_up(k) for k in ("listener.web.weight", "cluster.api.host.h:1.downstream_cx_total", "cluster.api.downstream_rq_code.200", "other.x.cx_total"))
    only_one = {**keys, "listener.web.downstream_rq_code.503": 1}
    merged = merge(MERGE["/stats"], {"0": keys, "1": only_one})
    assert merged == {k: v * 2 for k, v in keys.items()} | {"listener.web.downstream_rq_code.503": 1}


def test_every_active_stat_is_declared_a_gauge_and_every_field_adds_up():
    """The schema, not names, decides; this keeps a new `_active` stat from being a counter."""
    for cls in (ListenerStats, ClusterStats, HostStats):
        assert not [s for s in cls.COUNTERS if "_active" in s], cls
        assert not set(cls.COUNTERS) & set(cls.GAUGES)
        assert all(cls.adds_up(field) for field in cls().snapshot())


def test_config_and_command_answers_are_taken_once():
    config = {"runtime": {"workers": 2, "drain_timeout": "5s"}, "listeners": [{"name": "web", "max_connections": 10}]}
    assert merge(MERGE["/config"], {"0": config, "1": config}) == config
    other = {"runtime": {"workers": 2, "drain_timeout": "9s"}, "listeners": config["listeners"]}
    merged = merge(ONCE, {"0": config, "1": other})
    assert merged["runtime"] == {"workers": 2, "drain_timeout": None, "per_worker": {"drain_timeout": {"0": "5s", "1": "9s"}}}
    assert merge(ONCE, {"0": {"level": "debug"}, "1": {"level": "debug"}}) == {"level": "debug"}


def test_task_trees_one_node_per_worker():
    tree = task_trees({"0": (10, {"name": "<init>", "children": []}), "1": (11, {"name": "<init>", "children": []})})
    assert tree == {
        "name": "2 workers",
        "children": [
            {"name": "worker #0 (pid 10)", "children": [{"name": "<init>", "children": []}]},
            {"name": "worker #1 (pid 11)", "children": [{"name": "<init>", "children": []}]},
        ],
    }


def _exposition(rq: int, active: int, enabled: int, uptime: float, state: str = "serving", extra: str = "") -> str:
    return f"""\
# HELP proxy_info Proxy build information.
# TYPE proxy_info gauge
proxy_info{{version="1.0"}} 1
# HELP proxy_uptime_seconds Seconds since the worker started.
# TYPE proxy_uptime_seconds gauge
proxy_uptime_seconds {uptime}
# HELP proxy_state Worker state.
# TYPE proxy_state gauge
proxy_state{{state="serving"}} {int(state == "serving")}
proxy_state{{state="draining"}} {int(state == "draining")}
# HELP proxy_listener_downstream_rq_total Requests.
# TYPE proxy_listener_downstream_rq_total counter
proxy_listener_downstream_rq_total{{listener="web"}} {rq}
# HELP proxy_listener_downstream_cx_active Open.
# TYPE proxy_listener_downstream_cx_active gauge
proxy_listener_downstream_cx_active{{listener="web"}} {active}
# HELP proxy_host_weight Weight.
# TYPE proxy_host_weight gauge
proxy_host_weight{{cluster="api",host="h:1"}} 3
# HELP proxy_host_enabled Enabled.
# TYPE proxy_host_enabled gauge
proxy_host_enabled{{cluster="api",host="h:1"}} {enabled}
# HELP proxy_some_limit A gauge the schema does not know.
# TYPE proxy_some_limit gauge
proxy_some_limit 64
# HELP proxy_listener_downstream_rq_time_seconds Duration.
# TYPE proxy_listener_downstream_rq_time_seconds histogram
proxy_listener_downstream_rq_time_seconds_bucket{{listener="web",le="0.001"}} {rq - 1}
proxy_listener_downstream_rq_time_seconds_bucket{{listener="web",le="+Inf"}} {rq}
proxy_listener_downstream_rq_time_seconds_sum{{listener="web"}} {rq * 0.25}
proxy_listener_downstream_rq_time_seconds_count{{listener="web"}} {rq}
{extra}"""


def test_metrics_sum_counts_and_take_properties_once():
    codes = '# HELP proxy_listener_downstream_rq_code_total By code.\n# TYPE proxy_listener_downstream_rq_code_total counter\nproxy_listener_downstream_rq_code_total{listener="web",code="503"} 2\n'
    text = merge_metrics({"0": _exposition(3, 1, 1, 5.5), "1": _exposition(4, 2, 1, 5.25, extra=codes)}, metrics.SUMMED_GAUGES, metrics.PER_WORKER)
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    assert samples['proxy_listener_downstream_rq_total{listener="web"}'] == "7"
    assert samples['proxy_listener_downstream_cx_active{listener="web"}'] == "3"
    assert samples['proxy_host_weight{cluster="api",host="h:1"}'] == "3"
    assert samples['proxy_host_enabled{cluster="api",host="h:1"}'] == "1"
    assert samples["proxy_some_limit"] == "64"
    assert samples['proxy_info{version="1.0"}'] == "1" and samples['proxy_state{state="serving"}'] == "1"
    assert samples['proxy_uptime_seconds{worker="0"}'] == "5.5" and samples['proxy_uptime_seconds{worker="1"}'] == "5.25"
    assert samples['proxy_listener_downstream_rq_time_seconds_bucket{listener="web",le="0.001"}'] == "5"
    assert samples['proxy_listener_downstream_rq_time_seconds_bucket{listener="web",le="+Inf"}'] == "7"
    assert samples['proxy_listener_downstream_rq_time_seconds_sum{listener="web"}'] == "1.75"
    assert samples['proxy_listener_downstream_rq_time_seconds_count{listener="web"}'] == "7"
    assert samples['proxy_listener_downstream_rq_code_total{listener="web",code="503"}'] == "2"  # one worker's family
    assert text.count("# TYPE proxy_host_weight gauge") == 1
    assert promtool_check(text).returncode == 0, promtool_check(text).stdout


def test_metrics_disagreement_is_given_per_worker():
    text = merge_metrics({"0": _exposition(1, 0, 1, 1.0), "1": _exposition(1, 0, 0, 1.0, state="draining")}, metrics.SUMMED_GAUGES, metrics.PER_WORKER)
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    assert samples['proxy_host_enabled{cluster="api",host="h:1",worker="0"}'] == "1"
    assert samples['proxy_host_enabled{cluster="api",host="h:1",worker="1"}'] == "0"
    assert samples['proxy_state{state="serving",worker="0"}'] == "1" and samples['proxy_state{state="draining",worker="1"}'] == "1"
    assert not [k for k in samples if k.startswith(("proxy_host_enabled{", "proxy_state{")) and "worker=" not in k]
    assert samples['proxy_host_weight{cluster="api",host="h:1"}'] == "3"
    assert promtool_check(text).returncode == 0


def test_every_rendered_family_has_a_rule():
    """Each gauge family a worker renders is either summed (an amount) or a property: the
    schema names every amount, and no counter or property is in it."""
    from tests.admin.test_metrics import _families, _worker

    families = _families(metrics.render(_worker()))
    gauges = {name for name, kind in families.items() if kind == "gauge"}
    amounts = {name for name in gauges if re.search(r"_(active|parked)$", name)}
    assert amounts and amounts == gauges & metrics.SUMMED_GAUGES
    assert {"proxy_host_weight", "proxy_host_enabled", "proxy_host_healthy", "proxy_state", "proxy_info", "proxy_uptime_seconds"} <= gauges - metrics.SUMMED_GAUGES
