"""The typed, frozen config model: what a validated config file becomes.

Every struct forbids unknown keys. Two value types are parsed from strings by the loader
(`proxy.config.values`): `Duration` ("250ms", "5s", "2m", "1h", "1.5s") and `Address`
("host:port", "[v6]:port", "unix:/path"). Cross-references (a listener's cluster) and
uniqueness (names) are checked after decoding, in `proxy.config.semantic`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from proxy.config.values import Address, Duration

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
Weight = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]


class _Model(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class Host(_Model):
    address: Address
    weight: Weight = 1
    metadata: dict[str, str] = {}


class Cluster(_Model):
    name: Name
    hosts: Annotated[list[Host], msgspec.Meta(min_length=1)]
    lb: Literal["round_robin", "random"] = "round_robin"
    connect_timeout: Duration = Duration(1.0)


class Listener(_Model):
    name: Name
    address: Address
    protocol: Literal["tcp"]
    # L4 listeners name the cluster their connections go to.
    cluster: Name | None = None
    # Above this many open downstream connections, new ones are accepted and closed at once
    # (Envoy's listener connection limit); None means no limit.
    max_connections: PositiveInt | None = None
    # No bytes in either direction for this long closes both sides (Envoy tcp_proxy: 1h).
    idle_timeout: Duration | None = Duration(3600.0)
    # Upstream connect attempts before the downstream is closed; each one goes to the next host.
    max_connect_attempts: Annotated[int, msgspec.Meta(ge=1, le=16)] = 3
    # How plaintext bytes are relayed: splice(2) through a pipe (zero-copy), or a userspace copy.
    # `auto` picks splice where the kernel has it.
    relay: Literal["auto", "splice", "copy"] = "auto"
    backlog: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 1024


class Admin(_Model):
    # Unix control socket (mode 0600, peer uid checked) — served from the admin issue on.
    socket: str | None = None


class Runtime(_Model):
    workers: PositiveInt | Literal["auto"] = 1
    # SIGTERM lets open connections finish for this long, then cancels them.
    drain_timeout: Duration = Duration(30.0)


class Logging(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class Config(_Model):
    admin: Admin = Admin()
    runtime: Runtime = Runtime()
    logging: Logging = Logging()
    listeners: list[Listener] = []
    clusters: list[Cluster] = []

    def cluster(self, name: str) -> Cluster:
        for cluster in self.clusters:
            if cluster.name == name:
                return cluster
        raise KeyError(name)
