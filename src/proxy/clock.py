"""The trio clock, read cheaply on hot paths."""

from __future__ import annotations

from collections.abc import Callable

import trio


def clock_reader() -> Callable[[], float]:
    """A function returning what trio.current_time() would. Inside trio.run it is the run's
    clock's own `current_time`: one call, where trio.current_time() makes three (~0.6 µs, and
    a proxied request reads the time several times). Outside a run (an object built before
    it starts), trio.current_time itself, which looks the clock up at each read."""
    try:
        return trio.lowlevel.current_clock().current_time
    except RuntimeError:
        return trio.current_time
