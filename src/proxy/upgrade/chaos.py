"""Fault injection for the upgrade acceptance tests (T11-T13), off unless PROXY_CHAOS_FILE is set.

A worker reads the file named by PROXY_CHAOS_FILE at a few points of its life; each line is
`<point> <action> [count]`, e.g. `init exit` (exit 1 before READY), `after_ready kill`
(SIGKILL itself right after READY), `adopt kill 5` (SIGKILL itself at the 5th adopted
connection), `init hang`. Only workers of a generation above 1 obey, so the first generation
always starts. Without the variable every call is one dict lookup.
"""

from __future__ import annotations

import os
import signal
import time

_FILE = os.environ.get("PROXY_CHAOS_FILE")
_counts: dict[str, int] = {}
generation = 1


def point(name: str) -> None:
    if not _FILE or generation < 2:
        return
    try:
        with open(_FILE) as f:
            lines = f.read().split("\n")
    except OSError:
        return
    for line in lines:
        parts = line.split()
        if len(parts) < 2 or parts[0] != name:
            continue
        _counts[name] = _counts.get(name, 0) + 1
        if len(parts) > 2 and _counts[name] < int(parts[2]):
            continue
        if parts[1] == "exit":
            os._exit(1)
        if parts[1] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if parts[1] == "hang":
            time.sleep(3600)
