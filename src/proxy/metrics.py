"""Prometheus text exposition (format 0.0.4) of a worker's stats.

One metric family per stat, each with `# HELP` and `# TYPE` lines and all its samples together:

    proxy_listener_<stat>{listener="NAME"}           ListenerStats
    proxy_cluster_<stat>{cluster="NAME"}             ClusterStats
    proxy_host_<stat>{cluster="NAME",host="ADDR"}    HostStats

A stat a stats class declares in GAUGES is a gauge; its COUNTERS are counters, and counters end
in `_total` as Prometheus wants (`downstream_cx_total` stays as is, `downstream_cx_destroy`
becomes `downstream_cx_destroy_total`). Plus `proxy_info{version}`, `proxy_uptime_seconds`,
`proxy_state{state}` (one sample per known state, 1 for the current one) and each host's
`proxy_host_weight`, `proxy_host_enabled` and `proxy_host_healthy`. The output passes
`promtool check metrics` without lint warnings (tested). `SUMMED_GAUGES` and `PER_WORKER` say
how the keeper folds several workers' expositions into one.

Used by the plain-HTTP metrics listener (`admin.metrics`) and the admin socket's `GET /metrics`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import proxy
from proxy.stats import HTTP2_ERROR_NAMES, ClusterStats, HostStats, ListenerStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

STATES = ("starting", "serving", "draining", "stopping", "stopped")

_PROCESS_START = time.monotonic()

# HELP texts; a stat without one gets a generic text (still a valid HELP line).
_HELP: dict[str, str] = {
    # listener
    "downstream_cx_total": "Downstream connections accepted.",
    "downstream_cx_active": "Downstream connections currently open.",
    "downstream_cx_parked": "Open downstream connections idle and parked: waiting for input without a task.",
    "downstream_cx_destroy": "Downstream connections closed.",
    "downstream_cx_overflow": "Downstream connections refused by max_connections.",
    "downstream_cx_error": "Downstream connections whose handler failed unexpectedly.",
    "downstream_cx_idle_timeout": "Downstream connections closed by the idle timeout.",
    "downstream_cx_reset": "Downstream connections reset.",
    "downstream_cx_no_upstream": "Downstream connections closed because every upstream connect attempt failed.",
    "downstream_rx_bytes_total": "Bytes received from downstream.",
    "downstream_tx_bytes_total": "Bytes sent to downstream.",
    "accept_errors": "Errors from accept() on the listening socket.",
    "relay_pipe_unavailable": "Splice relay bursts copied in userspace because the worker's pipe pool had no pipe.",
    "downstream_cx_fd_exhausted": "Downstream connections closed before an upstream was dialled because the process was out of file descriptors.",
    "downstream_cx_migrated_out": "Live downstream connections handed to the next worker generation.",
    "downstream_cx_migrated_in": "Live downstream connections adopted from the previous worker generation.",
    "downstream_rq_total": "Downstream HTTP requests.",
    "downstream_rq_active": "Downstream HTTP requests in flight.",
    "downstream_rq_1xx": "Downstream HTTP responses with a 1xx status.",
    "downstream_rq_2xx": "Downstream HTTP responses with a 2xx status.",
    "downstream_rq_3xx": "Downstream HTTP responses with a 3xx status.",
    "downstream_rq_4xx": "Downstream HTTP responses with a 4xx status.",
    "downstream_rq_5xx": "Downstream HTTP responses with a 5xx status.",
    "downstream_rq_local_reply": "Downstream HTTP requests answered locally by the proxy.",
    "downstream_rq_protocol_error": "Downstream HTTP requests that violated the protocol.",
    "downstream_rq_header_timeout": "Downstream HTTP requests whose head did not arrive in time.",
    # cluster
    "upstream_cx_total": "Upstream connections opened.",
    "upstream_cx_active": "Upstream connections currently open.",
    "upstream_cx_connect_fail": "Upstream connection attempts that failed.",
    "upstream_cx_connect_timeout": "Upstream connection attempts that timed out.",
    "upstream_cx_connect_attempts_exceeded": "Downstream connections that ran out of upstream connect attempts.",
    "upstream_rq_total": "Upstream HTTP requests.",
    "upstream_rq_active": "Upstream HTTP requests in flight.",
    "upstream_rq_timeout": "Upstream HTTP requests that hit the route timeout.",
    "upstream_rq_per_try_timeout": "Upstream HTTP request attempts that hit the per-try timeout.",
    "upstream_rq_retry": "Upstream HTTP request retries.",
    "upstream_rq_retry_exhausted": "Upstream HTTP requests that ran out of retries.",
    "upstream_rq_pending_overflow": "Upstream HTTP requests refused because the pending queue was full.",
    "upstream_rq_reset": "Upstream HTTP requests reset.",
    "upstream_cx_reused_closed": "Reused keep-alive upstream connections that closed before answering.",
    "upstream_cx_keepalive_timeout": "Upstream HTTP/2 connections closed because a keepalive PING went unanswered.",
    # TLS (listeners' from clients, clusters' to their hosts)
    "ssl_handshake": "TLS handshakes completed.",
    "ssl_connection_error": "TLS handshakes that failed.",
    "ssl_session_reused": "TLS handshakes to a host that resumed its last session.",
    "ssl_fail_verify_error": "TLS handshakes refused because the peer's certificate chain did not verify.",
    "ssl_fail_verify_san": "TLS handshakes to a host whose certificate is not for the name (or address) verified.",
    # HTTP/2, both
    "http2_rx_goaway": "HTTP/2 GOAWAY frames received.",
    "http2_tx_goaway": "HTTP/2 GOAWAY frames sent.",
    "http2_tx_stall_stream_window": "HTTP/2 sends held back by a stream flow-control window at zero.",
    "http2_tx_stall_connection_window": "HTTP/2 sends held back by the connection flow-control window at zero.",
    **{f"http2_rx_reset_{name}": f"HTTP/2 RST_STREAM frames received with error code {name.upper() if name != 'unknown' else 'beyond the RFC 9113 ones'}." for name in HTTP2_ERROR_NAMES},
    **{f"http2_tx_reset_{name}": f"HTTP/2 RST_STREAM frames sent with error code {name.upper() if name != 'unknown' else 'beyond the RFC 9113 ones'}." for name in HTTP2_ERROR_NAMES},
    # host
    "cx_total": "Connections opened to this host.",
    "cx_active": "Connections currently open to this host.",
    "cx_connect_fail": "Connection attempts to this host that failed.",
}


_GAUGES = frozenset(ListenerStats.GAUGES + ClusterStats.GAUGES + HostStats.GAUGES)


def is_gauge(stat: str) -> bool:
    return stat in _GAUGES


def metric_name(prefix: str, stat: str) -> str:
    """`proxy_<prefix>_<stat>`, with `_total` appended to counters that lack it."""
    name = f"proxy_{prefix}_{stat}"
    if not is_gauge(stat) and not name.endswith("_total"):
        name += "_total"
    return name


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape_label_value(str(v))}"' for k, v in labels.items()) + "}"


def _format_value(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, str], float]]) -> None:
        samples = list(samples)
        if not samples:
            return  # no HELP/TYPE for a family without samples (e.g. no clusters configured)
        self.lines.append(f"# HELP {name} {escape_help(help_text)}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(labels)} {_format_value(value)}")


def _stat_families(w: _Writer, prefix: str, what: str, cls: type[Any], objects: list[tuple[dict[str, str], Any]]) -> None:
    for stat in cls.COUNTERS + cls.GAUGES:
        kind = "gauge" if is_gauge(stat) else "counter"
        help_text = _HELP.get(stat, f"{what} {kind} {stat}.")
        w.family(metric_name(prefix, stat), kind, help_text, ((labels, getattr(stats, stat)) for labels, stats in objects))


def render(worker: Any, now: float | None = None) -> str:
    """The worker's stats in the Prometheus text format (ends with a newline)."""
    w = _Writer()
    w.family("proxy_info", "gauge", "Proxy build information.", [({"version": proxy.__version__}, 1)])
    started = getattr(worker, "started", None)
    if not isinstance(started, (int, float)):
        started = _PROCESS_START
    uptime = max(0.0, (time.monotonic() if now is None else now) - started)
    w.family("proxy_uptime_seconds", "gauge", "Seconds since the worker started.", [({}, round(uptime, 3))])
    state = getattr(worker, "state", "unknown")
    states = STATES if state in STATES else (*STATES, str(state))
    w.family("proxy_state", "gauge", "Worker state: 1 for the current state, 0 for the others.", [({"state": s}, int(s == state)) for s in states])

    listeners = [({"listener": lr.config.name}, lr.stats) for lr in worker.listeners]
    _stat_families(w, "listener", "Listener", ListenerStats, listeners)
    clusters = list(worker.clusters.values())
    _stat_families(w, "cluster", "Cluster", ClusterStats, [({"cluster": c.name}, c.stats) for c in clusters])
    hosts = [({"cluster": c.name, "host": str(h.address)}, h) for c in clusters for h in c.hosts]
    _stat_families(w, "host", "Host", HostStats, [(labels, h.stats) for labels, h in hosts])
    w.family("proxy_host_weight", "gauge", "Load balancing weight of the host.", [(labels, h.weight) for labels, h in hosts])
    w.family("proxy_host_enabled", "gauge", "1 while the host takes traffic, 0 once disabled (proxy ctl host).", [(labels, int(h.enabled)) for labels, h in hosts])
    w.family("proxy_host_healthy", "gauge", "1 while the host is healthy.", [(labels, int(h.healthy)) for labels, h in hosts])
    w.family(
        "proxy_listener_downstream_rq_code_total",
        "counter",
        "Downstream HTTP responses by status code.",
        [({**labels, "code": str(code)}, n) for labels, stats in listeners for code, n in sorted(stats.downstream_rq_code.items())],
    )
    _histograms(w, "listener", ListenerStats.HISTOGRAMS, listeners)
    _histograms(w, "cluster", ClusterStats.HISTOGRAMS, [({"cluster": c.name}, c.stats) for c in clusters])
    return "\n".join(w.lines) + "\n"


# How the keeper folds several workers' expositions into one (proxy.admin.aggregate): counters
# and histograms add up, and so do these gauges (amounts each worker holds). Any other gauge is
# a property (a state, a weight, the build): taken once where the workers agree, else one sample
# per worker with a `worker` label. A family the schema does not know is never summed.
SUMMED_GAUGES = frozenset(
    metric_name(prefix, stat) for prefix, cls in (("listener", ListenerStats), ("cluster", ClusterStats), ("host", HostStats)) for stat in cls.GAUGES
)
PER_WORKER = frozenset({"proxy_uptime_seconds"})  # each worker's own: one sample per worker, always


_HISTOGRAM_HELP = {
    "downstream_rq_time": "Downstream HTTP request duration, first byte received to last byte sent.",
    "upstream_rq_time": "Upstream service time: request sent to response head received.",
}


def _histograms(w: _Writer, prefix: str, names: tuple[str, ...], objects: list[tuple[dict[str, str], Any]]) -> None:
    """Histograms in seconds (Prometheus base unit); stored in milliseconds."""
    for stat in names:
        if not objects:
            continue
        name = f"proxy_{prefix}_{stat}_seconds"
        w.lines.append(f"# HELP {name} {escape_help(_HISTOGRAM_HELP.get(stat, stat))}")
        w.lines.append(f"# TYPE {name} histogram")
        for labels, stats in objects:
            h = getattr(stats, stat)
            for le, count in h.cumulative():
                bound = le if le == "+Inf" else repr(float(le) / 1000)
                w.lines.append(f"{name}_bucket{_labels({**labels, 'le': bound})} {count}")
            w.lines.append(f"{name}_sum{_labels(labels)} {repr(h.sum / 1000)}")
            w.lines.append(f"{name}_count{_labels(labels)} {h.count}")
