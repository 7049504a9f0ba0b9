"""Retry decisions for one request: which outcomes are retried, how often, after what pause.

Pure: no I/O, no clock. The router asks `RetryState.should_retry(outcome)` after each failed
try, where an outcome is a response status (int) or one of "connect-failure", "reset"
(the upstream closed or reset the stream before a full response) or "timeout" (the per-try
timeout fired), then sleeps `next_backoff()` seconds before the next try.

Kinds of `on`, with Envoy's meanings:
    5xx                     any 5xx, and every try that got no response at all
                            (connect-failure, reset, timeout)
    gateway-error           502, 503, 504, and tries without a response (they become one of those)
    reset                   tries without a response: reset, connect-failure, timeout
    connect-failure         connect-failure only
    retriable-status-codes  a status listed in retriable_status_codes
    retriable-4xx           409
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.config.routes import Retry

Outcome = int | str

CONNECT_FAILURE = "connect-failure"
RESET = "reset"
TIMEOUT = "timeout"
OUTCOMES = (CONNECT_FAILURE, RESET, TIMEOUT)

DEFAULT_BASE_INTERVAL = 0.025


class RetryPolicy:
    """A route's retry config, compiled into the sets `should_retry` looks outcomes up in."""

    __slots__ = ("on", "attempts", "per_try_timeout", "base_interval", "max_interval", "retriable_statuses", "retriable_failures", "retry_any_5xx")

    def __init__(
        self,
        on: Sequence[str],
        attempts: int = 1,
        retriable_status_codes: tuple[int, ...] | list[int] = (),
        per_try_timeout: float | None = None,
        base_interval: float = DEFAULT_BASE_INTERVAL,
        max_interval: float | None = None,
    ) -> None:
        kinds = set(on)
        unknown = kinds - {"5xx", "gateway-error", "connect-failure", "reset", "retriable-status-codes", "retriable-4xx"}
        if unknown:
            raise ValueError(f"unknown retry kinds: {', '.join(sorted(unknown))}")
        self.on = tuple(on)
        self.attempts = attempts
        self.per_try_timeout = per_try_timeout or None
        self.base_interval = base_interval
        self.max_interval = base_interval * 10 if max_interval is None else max_interval
        self.retry_any_5xx = "5xx" in kinds
        statuses: set[int] = set()
        if "gateway-error" in kinds:
            statuses |= {502, 503, 504}
        if "retriable-status-codes" in kinds:
            statuses |= set(retriable_status_codes)
        if "retriable-4xx" in kinds:
            statuses.add(409)
        self.retriable_statuses = frozenset(statuses)
        failures: set[str] = set()
        if kinds & {"5xx", "gateway-error", "reset"}:
            failures |= {CONNECT_FAILURE, RESET, TIMEOUT}
        if "connect-failure" in kinds:
            failures.add(CONNECT_FAILURE)
        self.retriable_failures = frozenset(failures)

    @classmethod
    def from_config(cls, config: Retry) -> RetryPolicy:
        return cls(
            on=config.on,
            attempts=config.attempts,
            retriable_status_codes=config.retriable_status_codes,
            per_try_timeout=config.per_try_timeout,
            base_interval=float(config.backoff.base_interval),
            max_interval=None if config.backoff.max_interval is None else float(config.backoff.max_interval),
        )

    def retriable(self, outcome: Outcome) -> bool:
        """Whether this outcome is one the policy retries (attempts aside)."""
        if isinstance(outcome, int):
            return (self.retry_any_5xx and 500 <= outcome <= 599) or outcome in self.retriable_statuses
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}: expected a status code or one of {', '.join(OUTCOMES)}")
        return outcome in self.retriable_failures

    def __repr__(self) -> str:
        return f"RetryPolicy(on={list(self.on)}, attempts={self.attempts})"


class RetryState:
    """One request's retries. `body_replayable` is False when the request body was streamed
    upstream and not kept: then nothing is retried."""

    __slots__ = ("policy", "rng", "body_replayable", "retries")

    def __init__(self, policy: RetryPolicy, rng: random.Random | None = None, body_replayable: bool = True) -> None:
        self.policy = policy
        self.rng = rng if rng is not None else random.Random()
        self.body_replayable = body_replayable
        self.retries = 0  # retries granted so far

    @property
    def remaining(self) -> int:
        return max(0, self.policy.attempts - self.retries)

    def should_retry(self, outcome: Outcome) -> bool:
        """After a failed try: retry it? A yes counts as one retry used."""
        if not self.body_replayable or self.retries >= self.policy.attempts:
            return False
        if not self.policy.retriable(outcome):
            return False
        self.retries += 1
        return True

    def next_backoff(self) -> float:
        """Seconds to wait before the retry just granted: full jitter over
        [0, min(base × 2^(n-1), max)] for the n-th retry (Envoy's jittered exponential back-off)."""
        policy = self.policy
        exponent = max(self.retries - 1, 0)
        ceiling = min(policy.base_interval * (1 << min(exponent, 62)), policy.max_interval)
        return self.rng.random() * ceiling
