"""Per-request facts: what happened to one HTTP request, for filters, variables and access logs.

Response flags follow Envoy's short codes, so operators can read logs the same way:
  NR  no route            UH  no healthy upstream     UF  upstream connect failure
  UO  upstream overflow   UT  upstream timeout        URX retry limit exceeded
  UC  upstream connection termination                 DC  downstream connection termination
  LR  local reset         DI  delay injected          FI  fault injected
  RL  rate limited        UAEX unauthorized (ip_access)
  DPE downstream protocol error                       UPE upstream protocol error
  RLSE request payload too large (payload_limit)
"""

from __future__ import annotations

import time
from typing import Any

NO_ROUTE = "NR"
NO_HEALTHY_UPSTREAM = "UH"
UPSTREAM_CONNECT_FAILURE = "UF"
UPSTREAM_OVERFLOW = "UO"
UPSTREAM_TIMEOUT = "UT"
RETRY_LIMIT_EXCEEDED = "URX"
UPSTREAM_CONNECTION_TERMINATION = "UC"
DOWNSTREAM_CONNECTION_TERMINATION = "DC"
LOCAL_RESET = "LR"
DELAY_INJECTED = "DI"
FAULT_INJECTED = "FI"
RATE_LIMITED = "RL"
UNAUTHORIZED = "UAEX"
DOWNSTREAM_PROTOCOL_ERROR = "DPE"
UPSTREAM_PROTOCOL_ERROR = "UPE"
PAYLOAD_TOO_LARGE = "RLSE"


class StreamInfo:
    """One request's record. Attribute names are what `proxy.variables` reads."""

    __slots__ = (
        "request",
        "response",
        "downstream_remote_address",
        "downstream_local_address",
        "listener",
        "route_name",
        "cluster",
        "upstream_host",
        "upstream_local_address",
        "start_time",
        "start_monotonic",
        "duration",
        "upstream_service_time",
        "bytes_received",
        "bytes_sent",
        "response_code",
        "flags",
        "request_id",
        "protocol",
        "attempts",
        "filter_state",
        "grpc_status",
        "tls",
        "upstream_transport_failure_reason",
        "filter_chain",
    )

    def __init__(self, request: Any, listener: str, remote: str, local: str) -> None:
        self.request = request
        self.response: Any = None
        self.downstream_remote_address = remote
        self.downstream_local_address = local
        self.listener = listener
        self.filter_chain: str | None = None  # the name of the listener's filter chain that serves it
        self.route_name = ""
        self.cluster = ""
        self.upstream_host = ""
        self.upstream_local_address = ""
        self.start_time = time.time()
        self.start_monotonic = time.monotonic()
        self.duration = 0.0
        self.upstream_service_time: float | None = None
        self.bytes_received = 0
        self.bytes_sent = 0
        self.response_code = 0
        self.flags: list[str] | None = None
        self.request_id = ""
        self.protocol = "HTTP/1.1"
        self.attempts = 0
        self.filter_state: dict[str, Any] | None = None  # per-request scratch space for filters
        self.grpc_status: int | None = None  # a gRPC call's status (proxy.http.grpc)
        self.tls: Any = None  # the client connection's network.tls.TlsSession, over TLS
        # Why the last upstream connect failed (a refused connect, a TLS handshake or verify error)
        self.upstream_transport_failure_reason = ""

    def add_flag(self, flag: str) -> None:
        if self.flags is None:
            self.flags = [flag]
        elif flag not in self.flags:
            self.flags.append(flag)

    def has_flag(self, flag: str) -> bool:
        return self.flags is not None and flag in self.flags

    @property
    def response_flags(self) -> str:
        return ",".join(self.flags) if self.flags else "-"

    def finish(self) -> None:
        self.duration = time.monotonic() - self.start_monotonic
