"""Runtime diagnostics in the spirit of MOSN's Holmes: a sampling profiler and a threshold watcher.

Sampling profiler (`profile`, served as `GET /debug/profile?seconds=N` on the admin socket): a
background thread reads `sys._current_frames()` for the trio thread every 5 ms while the loop
keeps serving, and counts each stack (outermost frame first, `file:function:line`). The result
is rendered in "collapsed stack" format (`frame;frame;frame COUNT`, one stack a line, most
frequent first), which flamegraph.pl / speedscope / inferno read as is. One profile at a time
per process: a second one raises `ProfileBusy` (the admin answers 409).

Watcher (config `diagnostics:`): every `interval` it samples the process CPU % (utime+stime from
/proc/self/stat), RSS (VmRSS from /proc/self/status), open downstream connections and the live
trio task count. A metric at or above its threshold, whose last dump is older than `cooldown`,
writes `<directory>/<utc-timestamp>-<metric>.txt`: the reason and values, the task tree, the
stats (as admin /stats), the top allocations when tracemalloc is tracing, and a short profile.
The watcher never takes the worker down: every failure is logged and the loop goes on.
"""

from __future__ import annotations

import collections
import datetime
import os
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import trio

from proxy.log import get_logger

log = get_logger("diagnostics")

SAMPLE_INTERVAL = 0.005
MAX_PROFILE_SECONDS = 60.0
METRICS = ("cpu_percent", "rss_mb", "connections", "tasks")
TASK_CHILD_LIMIT = 50

Stack = tuple[str, ...]


# ---------------------------------------------------------------- the sampling profiler


class ProfileBusy(Exception):
    """Another profile is running in this process."""


_profile_lock = threading.Lock()


def _short_path(filename: str) -> str:
    """A frame's file without the interpreter/site-packages prefix: `trio/_core/_run.py`."""
    for marker in ("site-packages/", "dist-packages/"):
        index = filename.rfind(marker)
        if index >= 0:
            return filename[index + len(marker) :]
    parts = filename.replace("\\", "/").split("/")
    return "/".join(parts[-3:]) if len(parts) > 3 else filename


def frame_label(frame: Any) -> str:
    code = frame.f_code
    label = f"{_short_path(code.co_filename)}:{code.co_name}:{frame.f_lineno}"
    # `;` separates frames and a space separates the count in collapsed format
    return label.replace(";", "_").replace(" ", "_")


def stack_of(frame: Any) -> Stack:
    """The stack ending at `frame`, outermost frame first."""
    labels = []
    while frame is not None:
        labels.append(frame_label(frame))
        frame = frame.f_back
    labels.reverse()
    return tuple(labels)


def sample_stacks(
    thread_id: int,
    seconds: float,
    interval: float = SAMPLE_INTERVAL,
    stop: threading.Event | None = None,
    frames: Callable[[], dict[int, Any]] = sys._current_frames,
) -> collections.Counter[Stack]:
    """Blocking: sample `thread_id`'s stack every `interval` for `seconds` (run it in a thread)."""
    counts: collections.Counter[Stack] = collections.Counter()
    stop = stop or threading.Event()
    deadline = time.monotonic() + seconds
    while True:
        frame = frames().get(thread_id)
        if frame is not None:
            counts[stack_of(frame)] += 1
        del frame
        if time.monotonic() >= deadline or stop.wait(interval):
            break
    return counts


def collapsed(counts: collections.Counter[Stack] | dict[Stack, int]) -> str:
    """Collapsed stack text: `a;b;c COUNT` per line, highest count first (ties by stack)."""
    rows = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return "".join(f"{';'.join(stack)} {count}\n" for stack, count in rows if stack)


async def profile(seconds: float, interval: float = SAMPLE_INTERVAL) -> str:
    """Profile the calling (trio) thread for `seconds`; the collapsed stacks. Raises ProfileBusy."""
    if not _profile_lock.acquire(blocking=False):
        raise ProfileBusy("a profile is already running")
    stop = threading.Event()
    try:
        thread_id = threading.get_ident()
        counts = await trio.to_thread.run_sync(
            lambda: sample_stacks(thread_id, seconds, interval, stop), abandon_on_cancel=True
        )
        return collapsed(counts)
    finally:
        stop.set()  # an abandoned (cancelled) sampler ends at its next tick
        _profile_lock.release()


# ---------------------------------------------------------------- process metrics


class CpuMeter:
    """CPU % of this process between two calls, from /proc/self/stat utime+stime."""

    def __init__(self, stat_path: str = "/proc/self/stat") -> None:
        self.stat_path = stat_path
        self.ticks_per_second = os.sysconf("SC_CLK_TCK")
        self._last: tuple[float, int] | None = None

    def _ticks(self) -> int:
        with open(self.stat_path, "rb") as f:
            text = f.read().decode()
        fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "; utime, stime are fields 14, 15
        return int(fields[11]) + int(fields[12])

    def sample(self) -> float | None:
        now, ticks = time.monotonic(), self._ticks()
        last, self._last = self._last, (now, ticks)
        if last is None or now <= last[0]:
            return None
        return round((ticks - last[1]) / self.ticks_per_second / (now - last[0]) * 100.0, 1)


def rss_mb(status_path: str = "/proc/self/status") -> float | None:
    with open(status_path) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    return None


def count_tasks(task: Any) -> int:
    total = 1
    stack = [task]
    while stack:
        for nursery in stack.pop().child_nurseries:
            children = list(nursery.child_tasks)
            total += len(children)
            stack.extend(children)
    return total


def render_task_tree(task: Any, limit: int = TASK_CHILD_LIMIT, depth: int = 0) -> list[str]:
    """The trio task tree as indented lines; each nursery shows at most `limit` children."""
    lines = [f"{'  ' * depth}{task.name}"]
    for nursery in task.child_nurseries:
        children = list(nursery.child_tasks)
        for child in children[:limit]:
            lines.extend(render_task_tree(child, limit, depth + 1))
        if len(children) > limit:
            lines.append(f"{'  ' * (depth + 1)}... {len(children) - limit} more")
    return lines


class WorkerMetrics:
    """The watcher's metric source for a live worker."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.cpu = CpuMeter()

    def __call__(self) -> dict[str, float | None]:
        return {
            "cpu_percent": self.cpu.sample(),
            "rss_mb": rss_mb(),
            "connections": sum(lr.stats.downstream_cx_active for lr in self.worker.listeners),
            "tasks": count_tasks(trio.lowlevel.current_root_task()),
        }


# ---------------------------------------------------------------- the watcher


class Watcher:
    """Samples `source()` every `interval` and dumps when a metric crosses its threshold.

    `source` returns {metric: value or None}; `dump(metric, values)` writes the dump (the default
    writes the file described in the module docstring). Times come from trio's clock, so tests
    run it under an autojump clock."""

    def __init__(self, config: Any, worker: Any = None, source: Callable[[], dict[str, Any]] | None = None, dump: Any = None) -> None:
        self.config = config
        self.worker = worker
        self.source = source if source is not None else WorkerMetrics(worker)
        self.thresholds = {m: getattr(config, m) for m in METRICS if getattr(config, m, None) is not None}
        self.interval = max(float(config.interval), 0.01)
        self.cooldown = float(config.cooldown)
        self.last_dump: dict[str, float] = {}
        self._dump = dump if dump is not None else self.write_dump
        self.dumps: list[str] = []  # paths written, newest last

    def due(self, values: dict[str, Any], now: float) -> list[str]:
        """The metrics to dump now (at or over threshold, out of cooldown); marks them dumped."""
        out = []
        for metric, threshold in self.thresholds.items():
            value = values.get(metric)
            if value is None or value < threshold:
                continue
            last = self.last_dump.get(metric)
            if last is not None and now - last < self.cooldown:
                continue
            self.last_dump[metric] = now
            out.append(metric)
        return out

    async def run(self) -> None:
        log.info("diagnostics.started", directory=self.config.directory, interval=f"{self.interval:g}s", thresholds=",".join(f"{k}={v:g}" for k, v in self.thresholds.items()))
        while True:
            await trio.sleep(self.interval)
            try:
                values = self.source()
                for metric in self.due(values, trio.current_time()):
                    await self._dump(metric, values)
            except trio.Cancelled:
                raise
            except Exception as exc:  # noqa: BLE001 - diagnostics must never end the worker
                log.error("diagnostics.error", exc_info=exc, error=str(exc))

    async def write_dump(self, metric: str, values: dict[str, Any]) -> str:
        text = await self.render_dump(metric, values)
        directory = Path(self.config.directory)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        path = directory / f"{stamp}-{metric}.txt"

        def write() -> None:
            directory.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text)
            os.replace(tmp, path)  # readers never see a half-written dump

        await trio.to_thread.run_sync(write)
        self.dumps.append(str(path))
        log.warning("diagnostics.dump", path=str(path), reason=f"{metric}={_fmt(values.get(metric))}>={_fmt(self.thresholds[metric])}")
        return str(path)

    async def render_dump(self, metric: str, values: dict[str, Any]) -> str:
        out = [
            f"reason: {metric} {_fmt(values.get(metric))} >= threshold {_fmt(self.thresholds[metric])}",
            f"time: {datetime.datetime.now(datetime.timezone.utc).isoformat()}",
            f"pid: {os.getpid()}",
            "",
            "== values",
            *(f"{k}: {_fmt(v)}" + (f" (threshold {_fmt(self.thresholds[k])})" if k in self.thresholds else "") for k, v in values.items()),
            "",
            "== tasks",
            *render_task_tree(trio.lowlevel.current_root_task()),
            "",
            "== stats",
            *_stats_lines(self.worker),
            "",
        ]
        if tracemalloc.is_tracing():
            out += ["== allocations (top 20)", *_top_allocations(20), ""]
        seconds = float(getattr(self.config, "profile_seconds", 0) or 0)
        if seconds > 0:
            out.append(f"== profile ({seconds:g}s, collapsed stacks)")
            try:
                out.append(await profile(min(seconds, MAX_PROFILE_SECONDS)))
            except ProfileBusy:
                out.append("(skipped: another profile is running)")
        return "\n".join(out) + "\n"


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _stats_lines(worker: Any) -> Iterable[str]:
    if worker is None:
        return []
    from proxy.admin.server import flatten_stats

    return [f"{k} {v}" for k, v in flatten_stats(worker.listeners, worker.clusters.values()).items()]


def _top_allocations(n: int) -> list[str]:
    stats = tracemalloc.take_snapshot().statistics("lineno")
    return [str(s) for s in stats[:n]]
