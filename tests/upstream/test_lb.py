from collections import Counter
import random

from proxy.config.values import Address
from proxy.upstream.host import Host
from proxy.upstream.lb import RoundRobin, Random


def hosts(*weights: int) -> list[Host]:
    return [Host(Address.parse(f"127.0.0.1:{9000 + i}"), w) for i, w in enumerate(weights)]


def test_round_robin_rotates_in_order_with_equal_weights():
    hs = hosts(1, 1, 1)
    lb = RoundRobin(hs)
    assert [lb.choose() for _ in range(6)] == [hs[0], hs[1], hs[2], hs[0], hs[1], hs[2]]


def test_round_robin_weights_are_smooth_and_exact():
    hs = hosts(5, 1, 1)
    lb = RoundRobin(hs)
    picks = [lb.choose() for _ in range(7)]
    assert Counter(picks) == {hs[0]: 5, hs[1]: 1, hs[2]: 1}
    # smooth: the heavy host is never picked more than 3 times in a row (nginx's a a b a c a a)
    assert [hs.index(h) for h in picks] == [0, 0, 1, 0, 2, 0, 0]


def test_round_robin_skips_excluded_and_unavailable_hosts():
    hs = hosts(1, 1, 1)
    lb = RoundRobin(hs)
    hs[1].healthy = False
    assert {lb.choose() for _ in range(10)} == {hs[0], hs[2]}
    assert lb.choose(exclude=[hs[0]]) is hs[2]
    assert lb.choose(exclude=[hs[0], hs[2]]) is None
    hs[0].enabled = False
    hs[2].enabled = False
    assert lb.choose() is None


def test_retry_after_failure_moves_to_next_host():
    hs = hosts(1, 1, 1)
    lb = RoundRobin(hs)
    tried = [lb.choose()]
    tried.append(lb.choose(tried))
    tried.append(lb.choose(tried))
    assert set(tried) == set(hs)


def test_random_respects_weights_and_exclusions():
    hs = hosts(3, 1)
    lb = Random(hs, rng=random.Random(7))
    counts = Counter(lb.choose() for _ in range(4000))
    assert 2700 < counts[hs[0]] < 3300
    assert {lb.choose(exclude=[hs[0]]) for _ in range(20)} == {hs[1]}
    assert lb.choose(exclude=hs) is None
