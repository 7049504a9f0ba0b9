"""Retry decisions per `on` kind, attempt counting, replayable bodies, jittered back-off."""

from __future__ import annotations

import random

import pytest

from proxy.router.retry import RetryPolicy, RetryState
from tests.router.helpers import decode

OUTCOMES: list[int | str] = [200, 404, 409, 429, 500, 501, 502, 503, 504, 599, "connect-failure", "reset", "timeout"]


@pytest.mark.parametrize(
    ("on", "codes", "retried"),
    [
        (["5xx"], [], {500, 501, 502, 503, 504, 599, "connect-failure", "reset", "timeout"}),
        (["gateway-error"], [], {502, 503, 504, "connect-failure", "reset", "timeout"}),
        (["reset"], [], {"connect-failure", "reset", "timeout"}),
        (["connect-failure"], [], {"connect-failure"}),
        (["retriable-status-codes"], [409, 429, 503], {409, 429, 503}),
        (["retriable-4xx"], [], {409}),
        (["connect-failure", "retriable-status-codes"], [404], {"connect-failure", 404}),
    ],
)
def test_each_kind(on: list[str], codes: list[int], retried: set[int | str]) -> None:
    policy = RetryPolicy(on, attempts=1, retriable_status_codes=codes)
    for outcome in OUTCOMES + codes:
        assert RetryState(policy).should_retry(outcome) is (outcome in retried), outcome


def test_attempts_are_retries_after_the_first_try() -> None:
    state = RetryState(RetryPolicy(["5xx"], attempts=2))
    assert state.remaining == 2
    assert state.should_retry(503)
    assert state.should_retry("reset")
    assert state.remaining == 0
    assert not state.should_retry(503)
    assert state.retries == 2


def test_a_no_does_not_use_an_attempt() -> None:
    state = RetryState(RetryPolicy(["gateway-error"], attempts=1))
    assert not state.should_retry(500)
    assert state.retries == 0
    assert state.should_retry(502)


def test_zero_attempts_never_retries() -> None:
    assert not RetryState(RetryPolicy(["5xx"], attempts=0)).should_retry(503)


def test_a_body_that_cannot_be_replayed_is_never_retried() -> None:
    state = RetryState(RetryPolicy(["5xx", "connect-failure"], attempts=3), body_replayable=False)
    assert not state.should_retry("connect-failure")
    assert not state.should_retry(503)


def test_unknown_outcome_and_kind() -> None:
    with pytest.raises(ValueError, match="unknown outcome 'eof'"):
        RetryState(RetryPolicy(["5xx"])).should_retry("eof")
    with pytest.raises(ValueError, match="unknown retry kinds: 5xxx"):
        RetryPolicy(["5xxx"])


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    policy = RetryPolicy(["5xx"], attempts=10, base_interval=0.025)
    assert policy.max_interval == pytest.approx(0.25)  # 10 × base by default
    ceilings = [0.025, 0.05, 0.1, 0.2, 0.25, 0.25, 0.25]
    for retry, ceiling in enumerate(ceilings, 1):
        samples = []
        for seed in range(300):
            state = RetryState(policy, random.Random(seed))
            for _ in range(retry):
                assert state.should_retry(503)
            samples.append(state.next_backoff())
        assert all(0 <= s <= ceiling for s in samples), retry
        assert max(samples) > ceiling * 0.95  # full jitter reaches the ceiling...
        assert min(samples) < ceiling * 0.05  # ...and near zero
    # before any retry: the first ceiling
    assert 0 <= RetryState(policy, random.Random(1)).next_backoff() <= 0.025


def test_backoff_with_explicit_max_and_a_fixed_rng() -> None:
    class Top(random.Random):
        def random(self) -> float:
            return 1.0

    state = RetryState(RetryPolicy(["reset"], attempts=60, base_interval=0.1, max_interval=0.3), Top())
    got = []
    for _ in range(60):
        state.should_retry("reset")
        got.append(state.next_backoff())
    assert got[:4] == pytest.approx([0.1, 0.2, 0.3, 0.3])
    assert got[-1] == pytest.approx(0.3)  # no overflow however many retries


def test_from_config() -> None:
    table = decode(
        {
            "virtual_hosts": [
                {
                    "name": "v",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "cluster": "c",
                            "retry": {
                                "on": ["retriable-status-codes", "connect-failure"],
                                "retriable_status_codes": [409],
                                "attempts": 4,
                                "per_try_timeout": "1s",
                                "backoff": {"base_interval": "10ms"},
                            },
                        }
                    ],
                }
            ]
        }
    )
    policy = RetryPolicy.from_config(table.virtual_hosts[0].routes[0].retry)  # type: ignore[arg-type]
    assert (policy.attempts, policy.per_try_timeout, policy.base_interval) == (4, 1.0, pytest.approx(0.01))
    assert policy.max_interval == pytest.approx(0.1)
    assert policy.retriable(409) and policy.retriable("connect-failure")
    assert not policy.retriable(503) and not policy.retriable("reset")
