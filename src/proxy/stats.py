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
    )

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)


class HostStats(_Stats):
    __slots__ = ("cx_total", "cx_active", "cx_connect_fail")

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)
