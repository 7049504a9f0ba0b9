"""proxy.clock: the cheap clock read is trio's clock."""

from __future__ import annotations

import trio
import trio.testing

from proxy.clock import clock_reader


def test_inside_a_run_it_reads_the_runs_clock():
    clock = trio.testing.MockClock(rate=0)

    async def main() -> None:
        now = clock_reader()
        clock.jump(12.5)
        assert now() == trio.current_time() == clock.current_time()

    trio.run(main, clock=clock)


def test_built_outside_a_run_it_reads_whichever_run_is_current():
    now = clock_reader()
    clock = trio.testing.MockClock(rate=0)

    async def main() -> None:
        clock.jump(3.0)
        assert now() == trio.current_time()

    trio.run(main, clock=clock)
