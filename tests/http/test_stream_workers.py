"""Stream workers of a multiplexed connection (http/multiplex.py): a busy connection spawns
no task per request, and an idle one keeps at most one parked worker."""

from __future__ import annotations

import trio
import trio.testing

from proxy.http import multiplex
from tests.http import bench_multiplex


class CountSpawns(trio.abc.Instrument):
    def __init__(self) -> None:
        self.spawned = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.spawned += 1


async def test_batches_of_streams_reuse_their_workers():
    seen: set[multiplex.MuxConnection] = set()
    counter = CountSpawns()
    trio.lowlevel.add_instrument(counter)
    try:
        await bench_multiplex.run(1000, profile=False, seen=seen)  # 100 batches of 10 streams, all answered
    finally:
        trio.lowlevel.remove_instrument(counter)
    # Ten streams at a time: about ten workers, however many requests (a task per stream: 1000).
    assert counter.spawned <= 3 * bench_multiplex.BATCH, counter.spawned
    (conn,) = seen
    assert not conn.streams
    conn.trim_workers()  # what the watchdog does to a connection it finds idle
    await trio.testing.wait_all_tasks_blocked()
    assert len(conn.idle_workers) <= multiplex.MAX_IDLE_WORKERS_WHEN_IDLE
