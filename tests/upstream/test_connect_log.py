"""Failed connects in the log: one warning per host per interval with the count since the last
(proxy.upstream.connect_log), on an injected clock."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from proxy.config.values import Address
from proxy.upstream.connect_log import INTERVAL, Throttle, connect_failed
from proxy.upstream.host import Host


def test_the_interval_is_ten_seconds() -> None:
    assert INTERVAL == 10.0 and Throttle().interval == 10.0


def test_throttle_lets_one_through_per_interval_and_counts_the_rest() -> None:
    throttle = Throttle(10.0)
    assert throttle.hit(100.0) == 1  # the first, at once
    assert [throttle.hit(100.0 + i / 10) for i in range(1, 51)] == [0] * 50  # a burst: held back
    assert throttle.hit(109.99) == 0
    assert throttle.hit(110.0) == 52  # the 51 held back, and this one
    assert throttle.hit(115.0) == 0
    assert throttle.hit(200.0) == 2  # a quiet spell: the next one goes out at once, with the one held
    assert throttle.hit(210.0) == 1


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self) -> list[tuple[str, str, dict]]:
        return [(r.levelname, r.getMessage(), dict(r.fields)) for r in self.records]  # type: ignore[attr-defined]


@pytest.fixture
def logged() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("proxy.upstream")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.DEBUG
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.level = level


def test_many_failures_make_one_warning_and_the_next_carries_the_count(logged: Lines) -> None:
    a, b = Host(Address.parse("10.0.0.7:80")), Host(Address.parse("10.0.0.8:80"))
    for i in range(100):  # 100 failures in 1 s
        connect_failed(a, "api", "timeout" if i % 2 else "econnrefused", 50.0 + i / 100, listener="web")
    connect_failed(b, "api", "econnrefused", 50.5, listener="web")  # another host: its own line
    assert logged.lines() == [
        ("WARNING", "upstream.connect_failed", {"cluster": "api", "host": "10.0.0.7:80", "reason": "econnrefused", "failures": 1, "listener": "web"}),
        ("WARNING", "upstream.connect_failed", {"cluster": "api", "host": "10.0.0.8:80", "reason": "econnrefused", "failures": 1, "listener": "web"}),
    ]
    connect_failed(a, "api", "timeout", 59.9, listener="web")  # still inside the interval
    assert len(logged.records) == 2
    connect_failed(a, "api", "ehostunreach", 61.0, listener="tcp")  # after it: the count since, the last reason
    assert logged.lines()[2:] == [
        ("WARNING", "upstream.connect_failed", {"cluster": "api", "host": "10.0.0.7:80", "reason": "ehostunreach", "failures": 101, "since": "11.0s", "listener": "tcp"}),
    ]


def test_throttle_due_gives_the_count_and_the_time_since_the_previous_line() -> None:
    throttle = Throttle(10.0)
    assert throttle.due(100.0) == (1, {})  # the first line has no `since`
    assert throttle.due(105.0) == (0, {})
    assert throttle.due(112.5) == (2, {"since": "12.5s"})
