"""The human number formats of `proxy ctl` and `proxy check`."""

from __future__ import annotations

import pytest

from proxy import humanize


def test_plural():
    assert [humanize.plural(n, "cluster") for n in (0, 1, 2)] == ["0 clusters", "1 cluster", "2 clusters"]
    assert humanize.plural(2, "entry", "entries") == "2 entries"


@pytest.mark.parametrize(
    ("value", "text"),
    [(3, "3"), (0.0, "0"), (290.38800000000003, "290.388"), (8.5, "8.5"), (1.0, "1"), (0.0004, "0"), (None, "-"), ("x", "x")],
)
def test_number(value, text):
    assert humanize.number(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.002, "2ms"), (0.625, "625ms"), (0.9996, "1.00s"), (1.805, "1.80s"), (9.996, "10.0s"), (12.34, "12.3s"), (59.96, "59s"), (75, "1m15s")],
)
def test_seconds(value, text):
    assert humanize.seconds(value) == text


@pytest.mark.parametrize(
    ("value", "text"), [(0, "0s"), (6.2, "6s"), (65, "1m05s"), (3725, "1h02m"), (86400 + 4 * 3600 + 59, "1d04h"), (-3, "0s")]
)
def test_uptime(value, text):
    assert humanize.uptime(value) == text


@pytest.mark.parametrize(
    ("value", "text"), [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (2300, "2.2 KiB"), (3 << 20, "3.0 MiB"), (1048575, "1.0 MiB"), (5 << 40, "5.0 TiB")]
)
def test_size(value, text):
    assert humanize.size(value) == text
