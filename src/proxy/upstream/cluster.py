"""A cluster at run time: its hosts, balancer, stats and connect settings."""

from __future__ import annotations

from typing import Any

from proxy.config.model import Cluster as ClusterConfig
from proxy.stats import ClusterStats
from proxy.upstream.host import Host
from proxy.upstream.lb import make_balancer


class Cluster:
    __slots__ = ("name", "config", "hosts", "balancer", "stats", "connect_timeout", "protocol", "tls")

    def __init__(self, config: ClusterConfig) -> None:
        self.name = config.name
        self.config = config
        self.hosts = [Host(h.address, h.weight, dict(h.metadata)) for h in config.hosts]
        self.balancer = make_balancer(config.lb, self.hosts)
        self.stats = ClusterStats()
        self.connect_timeout = float(config.connect_timeout)
        self.protocol = config.protocol  # the upstream side: http1 | http2 | downstream | auto
        # TLS to the hosts: a network.tls.ClientTls (pyOpenSSL only where a cluster has TLS).
        self.tls: Any = None
        if config.tls is not None:
            from proxy.network.tls import ClientTls

            self.tls = ClientTls(config.tls, config.name, self.stats)

    def __repr__(self) -> str:
        return f"<Cluster {self.name} hosts={len(self.hosts)} lb={self.balancer.name}>"
