"""Counters and gauges for listeners, clusters and hosts.

Each stats object is a slotted class of plain ints: incrementing one on the hot path is a single
attribute add (`stats.downstream_cx_total += 1`), no dict lookups. Names follow Envoy's so
operators recognise them. The admin issue exports these as /stats and /metrics.

Each class declares what its numbers are, and everything that reads them goes by that, not by
names: COUNTERS count events since start (carried across generations, summed over workers),
GAUGES are amounts a process holds now (open connections, requests in flight: summed over
workers, never carried), HISTOGRAMS are distributions (summed bucket by bucket).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING, Any


# HTTP/2 (listeners and clusters alike, Envoy's http2.* stats): RST_STREAMs each way by RFC 9113
# §7 error code (by value; a code past these counts as `unknown`), GOAWAYs each way, and sends
# cut short by a zero window (the stream's or the connection's; once per stall). The codec
# counts them (proxy.codec.http2, `count_into`).
HTTP2_ERROR_NAMES = (
    "no_error",
    "protocol_error",
    "internal_error",
    "flow_control_error",
    "settings_timeout",
    "stream_closed",
    "frame_size_error",
    "refused_stream",
    "cancel",
    "compression_error",
    "connect_error",
    "enhance_your_calm",
    "inadequate_security",
    "http_1_1_required",
    "unknown",
)
HTTP2_RX_RESET = tuple(f"http2_rx_reset_{name}" for name in HTTP2_ERROR_NAMES)
HTTP2_TX_RESET = tuple(f"http2_tx_reset_{name}" for name in HTTP2_ERROR_NAMES)
HTTP2_COUNTERS = (
    *HTTP2_RX_RESET,
    *HTTP2_TX_RESET,
    "http2_rx_goaway",
    "http2_tx_goaway",
    "http2_tx_stall_stream_window",
    "http2_tx_stall_connection_window",
)


class _Stats:
    __slots__: tuple[str, ...] = ()
    COUNTERS: tuple[str, ...] = ()  # plain ints counting events since start
    GAUGES: tuple[str, ...] = ()  # plain ints holding a current amount that adds up over processes
    HISTOGRAMS: tuple[str, ...] = ()  # Histogram objects
    BY_CODE = False  # a `downstream_rq_code` dict: responses by status code (counters)

    if TYPE_CHECKING:
        # The counters are declared by name (COUNTERS, GAUGES) and set in __init__: for the type
        # checker (and mypyc, which compiles the modules that count), any such name is an
        # attribute. Reads and writes of them stay plain slot accesses at run time.
        def __getattr__(self, name: str) -> Any: ...

        def __setattr__(self, name: str, value: Any) -> None: ...

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in self.COUNTERS + self.GAUGES}
        for name in self.HISTOGRAMS:
            h = getattr(self, name)
            out[f"{name}_count"] = h.count
            out[f"{name}_sum_ms"] = round(h.sum, 3)
        for code, n in sorted(getattr(self, "downstream_rq_code", {}).items()):
            out[f"downstream_rq_code.{code}"] = n
        return out

    @classmethod
    def adds_up(cls, field: str) -> bool:
        """Whether a `snapshot()` field adds up over workers: every field this class declares
        does (counters, gauges, a histogram's count and sum, per-code counts). A field it does
        not declare is not summed: a number is a count only where it says so."""
        if field in cls.COUNTERS or field in cls.GAUGES:
            return True
        if any(field in (f"{h}_count", f"{h}_sum_ms") for h in cls.HISTOGRAMS):
            return True
        code = field.removeprefix("downstream_rq_code.")
        return cls.BY_CODE and code != field and code.isdigit()


class Histogram:
    """Counts of observations (milliseconds) per upper bound, Prometheus-style (cumulative on
    export). Observing is one bisect over a short list and two adds: cheap per request."""

    __slots__ = ("counts", "sum", "count")

    # Envoy's default histogram buckets, in milliseconds.
    BUCKETS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000)

    def __init__(self) -> None:
        self.counts = [0] * (len(self.BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, ms: float) -> None:
        self.counts[bisect_left(self.BUCKETS, ms)] += 1
        self.sum += ms
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, cumulative count) pairs, ending with +Inf."""
        out = []
        total = 0
        for bound, n in zip((*self.BUCKETS, "+Inf"), self.counts):
            total += n
            out.append((bound if isinstance(bound, str) else repr(float(bound)), total))  # type: ignore[arg-type]
        return out


class ListenerStats(_Stats):
    COUNTERS = (
        "downstream_cx_total",
        "downstream_cx_destroy",
        "downstream_cx_overflow",  # refused by max_connections
        "downstream_cx_error",  # a handler failed unexpectedly (logged with its traceback)
        "downstream_cx_idle_timeout",
        "downstream_cx_reset",
        "downstream_cx_no_upstream",  # every connect attempt failed
        "downstream_cx_fd_exhausted",  # closed before dialling: no fd for the upstream socket
        "downstream_rx_bytes_total",
        "downstream_tx_bytes_total",
        "accept_errors",
        "relay_pipe_unavailable",  # splice bursts copied in userspace: the pipe pool was empty
        # hot upgrade: live connections handed to the next generation / taken from the last one
        "downstream_cx_migrated_out",
        "downstream_cx_migrated_in",
        # HTTP listeners
        "downstream_rq_total",
        "downstream_rq_1xx",
        "downstream_rq_2xx",
        "downstream_rq_3xx",
        "downstream_rq_4xx",
        "downstream_rq_5xx",
        "downstream_rq_local_reply",
        "downstream_rq_protocol_error",
        "downstream_rq_header_timeout",
        # multiplexed listeners (HTTP/2, RPC): streams the client reset, and those we reset
        "downstream_rq_rx_reset",
        "downstream_rq_tx_reset",
        *HTTP2_COUNTERS,
        # TLS termination (Envoy's listener ssl.*): handshakes done, and those that failed, by why
        "ssl_handshake",
        "ssl_connection_error",  # a bad ClientHello, no shared version or cipher, an alert
        "ssl_handshake_timeout",  # no finished handshake within the listener's handshake_timeout
        "ssl_sni_refused",  # a name no certificate serves, with unknown_server_name: refuse
        # certificates on demand (tls.on_demand): minted, fetched from the provider, its failures,
        # names served from the cache, and names dropped from it (least recently used first)
        "ssl_dynamic_minted",
        "ssl_provider_fetched",
        "ssl_provider_error",
        "ssl_dynamic_cache_hit",
        "ssl_dynamic_cache_evicted",
        # mutual TLS (client_certificate: request | require)
        "ssl_fail_verify_no_cert",  # require: the client sent no certificate
        "ssl_fail_verify_error",  # the client's certificate did not verify against client_ca
        "ssl_no_certificate",  # request: handshakes done without a client certificate
        # certificate rotation (tls.watch_interval): files changed on disk and re-read
        "ssl_certificate_rotated",  # a new set of files now serves new handshakes
        "ssl_certificate_rotation_failed",  # a new set that cannot be used (the old one serves on)
        # Filter chains (network/chain_dispatch): the TLS inspector's finds (Envoy's
        # tls_inspector.*), first bytes that did not come within inspect_timeout (Envoy's
        # downstream_pre_cx_timeout), and connections no chain matched, closed
        "tls_inspector_tls_found",
        "tls_inspector_tls_not_found",  # plaintext
        "tls_inspector_sni_found",
        "tls_inspector_sni_not_found",
        "tls_inspector_alpn_found",
        "tls_inspector_alpn_not_found",
        "tls_inspector_client_hello_bad",  # a handshake record that is no ClientHello, or too long
        "downstream_pre_cx_timeout",
        "no_filter_chain_match",
    )
    # parked: idle connections waiting without a task (proxy.network.parking), among the active
    GAUGES = ("downstream_cx_active", "downstream_cx_parked", "downstream_rq_active")
    HISTOGRAMS = ("downstream_rq_time",)  # request duration, first byte in to last byte out
    BY_CODE = True
    __slots__ = COUNTERS + GAUGES + HISTOGRAMS + ("downstream_rq_code",)

    def __init__(self) -> None:
        for name in self.COUNTERS + self.GAUGES:
            setattr(self, name, 0)
        self.downstream_rq_time = Histogram()
        self.downstream_rq_code: dict[int, int] = {}  # responses by status code


class ClusterStats(_Stats):
    COUNTERS = (
        "upstream_cx_total",
        "upstream_cx_connect_fail",
        "upstream_cx_connect_timeout",
        "upstream_cx_connect_attempts_exceeded",
        # HTTP
        "upstream_rq_total",
        "upstream_rq_timeout",
        "upstream_rq_per_try_timeout",
        "upstream_rq_retry",
        "upstream_rq_retry_exhausted",
        "upstream_rq_pending_overflow",
        "upstream_rq_reset",
        "upstream_cx_reused_closed",  # a reused keep-alive connection closed before answering
        "upstream_cx_keepalive_timeout",  # HTTP/2: closed for a PING unanswered (http2.keepalive_*)
        # TLS to the hosts (clusters[].tls); every failed handshake is also a connect failure
        "ssl_handshake",
        "ssl_session_reused",  # a handshake that resumed the host's last session
        "ssl_connection_error",  # every failed handshake, the two below included
        "ssl_fail_verify_error",  # the chain did not verify (expired, unknown CA, ...)
        "ssl_fail_verify_san",  # the certificate is not for the host's name (or IP address)
        *HTTP2_COUNTERS,
    )
    GAUGES = ("upstream_cx_active", "upstream_rq_active")
    HISTOGRAMS = ("upstream_rq_time",)  # upstream service time: request sent to response head
    __slots__ = COUNTERS + GAUGES + HISTOGRAMS

    def __init__(self) -> None:
        for name in self.COUNTERS + self.GAUGES:
            setattr(self, name, 0)
        self.upstream_rq_time = Histogram()


class HostStats(_Stats):
    COUNTERS = ("cx_total", "cx_connect_fail")
    GAUGES = ("cx_active",)
    __slots__ = COUNTERS + GAUGES

    def __init__(self) -> None:
        for name in self.COUNTERS + self.GAUGES:
            setattr(self, name, 0)


# ---------------------------------------------------------------- carrying counts across generations


def export(stats: _Stats) -> dict[str, Any]:
    """Everything `absorb` needs to add these counts to another process's stats: counters
    (not gauges: an open connection is counted by whichever process holds it), full
    histograms and per-code counts. Plain JSON values."""
    out: dict[str, Any] = {name: getattr(stats, name) for name in stats.COUNTERS}
    for name in stats.HISTOGRAMS:
        h = getattr(stats, name)
        out[name] = {"counts": h.counts, "sum": h.sum, "count": h.count}
    codes = getattr(stats, "downstream_rq_code", None)
    if codes:
        out["downstream_rq_code"] = {str(k): v for k, v in codes.items()}
    return out


def absorb(stats: _Stats, data: dict[str, Any]) -> None:
    """Add exported counts (from the previous generation) to `stats`; unknown names (a stat
    an older release had) are ignored, so counters stay monotonic across upgrades."""
    for name in stats.COUNTERS:
        value = data.get(name)
        if isinstance(value, int):
            setattr(stats, name, getattr(stats, name) + value)
    for name in stats.HISTOGRAMS:
        value = data.get(name)
        h = getattr(stats, name)
        if isinstance(value, dict) and len(value.get("counts", ())) == len(h.counts):
            h.counts = [a + b for a, b in zip(h.counts, value["counts"])]
            h.sum += value["sum"]
            h.count += value["count"]
    codes = data.get("downstream_rq_code")
    if isinstance(codes, dict):
        own = stats.downstream_rq_code  # type: ignore[attr-defined]
        for code, n in codes.items():
            own[int(code)] = own.get(int(code), 0) + n


def subtract(later: dict[str, Any], earlier: dict[str, Any]) -> dict[str, Any]:
    """later - earlier for two `export`s of the same stats (what changed in between)."""
    out: dict[str, Any] = {}
    for name, value in later.items():
        before = earlier.get(name)
        if isinstance(value, int):
            out[name] = value - (before if isinstance(before, int) else 0)
        elif name == "downstream_rq_code":
            b = before or {}
            out[name] = {k: v - b.get(k, 0) for k, v in value.items()}
        elif isinstance(value, dict) and "counts" in value:
            b = before or {"counts": [0] * len(value["counts"]), "sum": 0.0, "count": 0}
            out[name] = {
                "counts": [x - y for x, y in zip(value["counts"], b["counts"])],
                "sum": value["sum"] - b["sum"],
                "count": value["count"] - b["count"],
            }
    return out
