"""Load balancers: pure choice of a host, no I/O.

`choose(exclude)` returns an available host not in `exclude` (the hosts this request already
tried), or None when there is none. Callers retrying a connect pass the hosts they tried so a
retry moves on to the next host rather than hammering a dead one.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence

from proxy.upstream.host import Host


class RoundRobin:
    """Smooth weighted round robin (nginx's): with equal weights, a plain rotation in host order;
    with weights, each host gets its share spread evenly (5,1,1 gives a a b a c a a, not a×5 b c)."""

    name = "round_robin"

    def __init__(self, hosts: Sequence[Host]) -> None:
        self.hosts = list(hosts)

    def choose(self, exclude: Collection[Host] = ()) -> Host | None:
        best: Host | None = None
        total = 0
        for host in self.hosts:
            if not host.available or host in exclude:
                continue
            host.current_weight += host.weight
            total += host.weight
            if best is None or host.current_weight > best.current_weight:
                best = host
        if best is not None:
            best.current_weight -= total
        return best


class Random:
    """Weighted random choice."""

    name = "random"

    def __init__(self, hosts: Sequence[Host], rng: random.Random | None = None) -> None:
        self.hosts = list(hosts)
        self.rng = rng or random.Random()

    def choose(self, exclude: Collection[Host] = ()) -> Host | None:
        candidates = [h for h in self.hosts if h.available and h not in exclude]
        if not candidates:
            return None
        return self.rng.choices(candidates, weights=[h.weight for h in candidates])[0]


BALANCERS = {"round_robin": RoundRobin, "random": Random}


def make_balancer(name: str, hosts: Sequence[Host]) -> RoundRobin | Random:
    return BALANCERS[name](hosts)
