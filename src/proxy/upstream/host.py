"""An upstream host: its address, weight and state, shared by balancers, pools and health checks."""

from __future__ import annotations

from proxy.config.values import Address
from proxy.stats import HostStats
from proxy.log import Throttle


class Host:
    __slots__ = ("address", "weight", "metadata", "enabled", "healthy", "stats", "current_weight", "connect_log", "protocol")

    def __init__(self, address: Address, weight: int = 1, metadata: dict[str, str] | None = None) -> None:
        self.address = address
        self.weight = weight
        self.metadata = metadata or {}
        self.enabled = True  # an operator can disable a host (admin API)
        self.healthy = True  # set by active health checks
        self.stats = HostStats()
        self.current_weight = 0  # smooth weighted round robin state, owned by the balancer
        self.connect_log = Throttle()  # failed connects: one warning per interval (connect_log)
        # A `protocol: auto` cluster's host: what its first connection chose by ALPN (http1 or
        # http2); None until then (proxy.upstream.pool.PoolManager.learn).
        self.protocol: str | None = None

    @property
    def available(self) -> bool:
        return self.enabled and self.healthy

    def __repr__(self) -> str:
        return f"<Host {self.address} w={self.weight}{'' if self.available else ' unavailable'}>"
