"""Counters and gauges for listeners, clusters and hosts.

Each stats object is a slotted class of plain ints: incrementing one on the hot path is a single
attribute add (`stats.downstream_cx_total += 1`), no dict lookups. Names follow Envoy's so
operators recognise them. The admin issue exports these as /stats and /metrics.
"""

from __future__ import annotations

from typing import Any


class _Stats:
    __slots__: tuple[str, ...] = ()

    def snapshot(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


class ListenerStats(_Stats):
    __slots__ = (
        "downstream_cx_total",
        "downstream_cx_active",
        "downstream_cx_destroy",
        "downstream_cx_overflow",  # refused by max_connections
        "downstream_cx_error",  # a handler failed unexpectedly (logged with its traceback)
        "downstream_cx_idle_timeout",
        "downstream_cx_reset",
        "downstream_cx_no_upstream",  # every connect attempt failed
        "downstream_rx_bytes_total",
        "downstream_tx_bytes_total",
        "accept_errors",
        # HTTP listeners
        "downstream_rq_total",
        "downstream_rq_active",
        "downstream_rq_1xx",
        "downstream_rq_2xx",
        "downstream_rq_3xx",
        "downstream_rq_4xx",
        "downstream_rq_5xx",
        "downstream_rq_local_reply",
        "downstream_rq_protocol_error",
        "downstream_rq_header_timeout",
    )

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)


class ClusterStats(_Stats):
    __slots__ = (
        "upstream_cx_total",
        "upstream_cx_active",
        "upstream_cx_connect_fail",
        "upstream_cx_connect_timeout",
        "upstream_cx_connect_attempts_exceeded",
        # HTTP
        "upstream_rq_total",
        "upstream_rq_active",
        "upstream_rq_timeout",
        "upstream_rq_per_try_timeout",
        "upstream_rq_retry",
        "upstream_rq_retry_exhausted",
        "upstream_rq_pending_overflow",
        "upstream_rq_reset",
        "upstream_cx_reused_closed",  # a reused keep-alive connection closed before answering
    )

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)


class HostStats(_Stats):
    __slots__ = ("cx_total", "cx_active", "cx_connect_fail")

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)
