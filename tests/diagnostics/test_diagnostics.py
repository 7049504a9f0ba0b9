"""Unit tests of proxy.diagnostics: the sampler's collapsed output, the profile lock, process
metrics, the watcher's threshold / cooldown logic (fake metric source, autojump clock) and dumps."""

from __future__ import annotations

import collections
import threading
import tracemalloc

import pytest
import trio

from proxy import diagnostics
from proxy.config.errors import ConfigError
from proxy.config.loader import load_text
from proxy.config.model import Diagnostics
from proxy.config.values import Duration


def test_collapsed_sorted_by_count_then_stack():
    counts = collections.Counter({("a", "b", "c"): 2, ("a", "d"): 5, ("a", "b"): 2, (): 7})
    assert diagnostics.collapsed(counts) == "a;d 5\na;b 2\na;b;c 2\n"
    assert diagnostics.collapsed({}) == ""


def test_frame_labels_are_collapsed_safe():
    def weird():
        return diagnostics.frame_label(__import__("sys")._getframe())

    label = weird()
    assert " " not in label and ";" not in label
    path, func, line = label.rsplit(":", 2)
    assert func == "weird" and int(line) > 0 and path.endswith("test_diagnostics.py")
    assert diagnostics._short_path("/x/lib/python3.11/site-packages/trio/_core/_run.py") == "trio/_core/_run.py"


def test_sample_stacks_of_a_real_thread_outermost_first():
    started, release = threading.Event(), threading.Event()

    def parked_here():
        started.set()
        release.wait(10)

    thread = threading.Thread(target=parked_here)
    thread.start()
    try:
        started.wait(5)
        counts = diagnostics.sample_stacks(thread.ident, 0.1, interval=0.005)
    finally:
        release.set()
        thread.join()
    assert sum(counts.values()) >= 5
    for stack in counts:
        assert stack[0].startswith("threading.py:_bootstrap:") or ":_bootstrap:" in stack[0]
        assert any(":parked_here:" in frame for frame in stack)
        # the innermost frames are inside Event.wait, below parked_here
        assert stack.index(next(f for f in stack if ":parked_here:" in f)) < len(stack) - 1
    text = diagnostics.collapsed(counts)
    line = text.splitlines()[0]
    stack, count = line.rsplit(" ", 1)
    assert int(count) >= 1 and ";" in stack


def test_sample_stacks_stops_early_and_skips_unknown_threads():
    stop = threading.Event()
    stop.set()
    assert diagnostics.sample_stacks(-1, 30, stop=stop) == collections.Counter()


async def test_profile_sees_the_trio_loop_and_refuses_a_second_one():
    results: dict[str, str] = {}

    async def first():
        results["text"] = await diagnostics.profile(0.3)

    async def spin():
        end = trio.current_time() + 0.25
        while trio.current_time() < end:
            await trio.sleep(0.001)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        nursery.start_soon(spin)
        await trio.sleep(0.05)
        with pytest.raises(diagnostics.ProfileBusy):
            await diagnostics.profile(0.1)
    lines = results["text"].splitlines()
    assert lines and all(line.rsplit(" ", 1)[1].isdigit() for line in lines)
    assert any("trio/" in line for line in lines)
    counts = [int(line.rsplit(" ", 1)[1]) for line in lines]
    assert counts == sorted(counts, reverse=True)
    # the lock is free again
    assert await diagnostics.profile(0.01) is not None


def test_process_metrics():
    cpu = diagnostics.CpuMeter()
    assert cpu.sample() is None
    sum(i * i for i in range(200_000))
    value = cpu.sample()
    assert value is not None and value >= 0
    rss = diagnostics.rss_mb()
    assert rss is not None and rss > 1


async def test_count_and_render_tasks():
    async with trio.open_nursery() as nursery:
        for _ in range(60):
            nursery.start_soon(trio.sleep_forever)
        await trio.sleep(0)
        total = diagnostics.count_tasks(trio.lowlevel.current_root_task())
        assert total >= 62
        lines = diagnostics.render_task_tree(trio.lowlevel.current_root_task())
        assert any("... 10 more" in line for line in lines)
        nursery.cancel_scope.cancel()


def _config(**kw) -> Diagnostics:
    base = {"interval": Duration(1.0), "cooldown": Duration(60.0), "profile_seconds": 0.0}
    return Diagnostics(**{**base, **kw})


def test_due_thresholds_and_cooldown():
    w = diagnostics.Watcher(_config(connections=2, cpu_percent=90.0), source=lambda: {})
    assert w.thresholds == {"cpu_percent": 90.0, "connections": 2}
    assert w.due({"connections": 1, "cpu_percent": None}, 0.0) == []
    assert w.due({"connections": 2, "cpu_percent": 95.0}, 1.0) == ["cpu_percent", "connections"]
    assert w.due({"connections": 5, "cpu_percent": 99.0}, 60.9) == []  # cooldown
    assert w.due({"connections": 5, "cpu_percent": 10.0}, 61.0) == ["connections"]
    assert w.due({"connections": 5, "cpu_percent": 91.0}, 62.0) == ["cpu_percent"]
    assert w.due({"rss_mb": 10**6, "tasks": 10**9}, 500.0) == []  # no thresholds for those


async def test_watcher_loop_with_fake_source(autojump_clock):
    calls = {"n": 0}

    def source():
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("flaky source")  # logged, the loop goes on
        return {"connections": 3 if calls["n"] >= 2 else 1, "tasks": 10}

    dumps: list[tuple[str, float]] = []

    async def dump(metric, values):
        dumps.append((metric, trio.current_time()))
        if len(dumps) == 2:
            raise OSError("disk full")  # logged, the loop goes on

    w = diagnostics.Watcher(_config(connections=2, tasks=100), source=source, dump=dump)
    start = trio.current_time()
    with trio.move_on_after(200.5):
        await w.run()
    assert [(m, round(t - start)) for m, t in dumps] == [("connections", 2), ("connections", 62), ("connections", 122), ("connections", 182)]
    assert calls["n"] == 200


async def test_write_dump(tmp_path):
    cfg = _config(directory=str(tmp_path / "diag"), connections=2, profile_seconds=0.05)
    w = diagnostics.Watcher(cfg, source=lambda: {})
    tracemalloc.start()
    try:
        path = await w.write_dump("connections", {"connections": 3, "cpu_percent": None, "tasks": 4})
    finally:
        tracemalloc.stop()
    assert path.endswith("-connections.txt") and path.startswith(str(tmp_path / "diag"))
    text = open(path).read()
    assert text.startswith("reason: connections 3 >= threshold 2\n")
    assert "connections: 3 (threshold 2)" in text and "cpu_percent: n/a" in text
    assert "== tasks" in text and "== stats" in text
    assert "== allocations (top 20)" in text
    assert "== profile (0.05s, collapsed stacks)" in text
    assert [p.name for p in (tmp_path / "diag").iterdir()] == [path.rsplit("/", 1)[1]]


def test_config():
    config = load_text(
        "diagnostics: {directory: /tmp/d, interval: 200ms, connections: 2, cooldown: 60s, profile_seconds: 0.2}\n"
    )
    d = config.diagnostics
    assert d is not None and d.directory == "/tmp/d" and float(d.interval) == pytest.approx(0.2)
    assert d.connections == 2 and d.cpu_percent is None and d.profile_seconds == pytest.approx(0.2)
    assert load_text("listeners: []\n").diagnostics is None
    with pytest.raises(ConfigError):
        load_text("diagnostics: {interval: 1}\n")
    with pytest.raises(ConfigError):
        load_text("diagnostics: {connections: 0}\n")
    with pytest.raises(ConfigError):
        load_text("diagnostics: {rss: 10}\n")
