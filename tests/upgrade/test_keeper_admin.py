"""The keeper's one view over several workers' admin answers."""

from __future__ import annotations

from proxy.upgrade.keeper_admin import _sum_json


def test_counters_are_summed_and_config_numbers_kept():
    def clusters(cx_total: int, healthy: bool) -> list:
        host = {"address": "h:1", "weight": 3, "enabled": True, "healthy": healthy, "stats": {"cx_total": cx_total, "cx_active": 1}}
        return [{"name": "api", "lb": "round_robin", "hosts": [host], "stats": {"upstream_rq_time_sum_ms": 0.1, "upstream_cx_total": cx_total}}]

    merged = _sum_json([clusters(2, True), clusters(5, False)])
    host = merged[0]["hosts"][0]
    assert host["weight"] == 3  # the config's weight, not 6
    assert host["stats"] == {"cx_total": 7, "cx_active": 2}
    assert host["healthy"] is True and host["address"] == "h:1"
    assert merged[0]["stats"]["upstream_cx_total"] == 7


def test_stats_document_is_all_counters():
    assert _sum_json([{"a.cx_total": 1, "a.rq_code.200": 2}, {"a.cx_total": 4, "a.rq_code.200": 1}], counters=True) == {"a.cx_total": 5, "a.rq_code.200": 3}
