"""SIGUSR2 / `proxy ctl upgrade`: the keeper re-executes itself in place, keeping its pid, its
listening sockets, admin socket, metrics listener and its running workers, then starts a new
worker generation with the code now on disk (HAProxy's master does the same).

Everything the new image needs travels in an inherited memfd named by PROXY_KEEPER_STATE: the
fds (made inheritable just before exec), the generation, counters, the config text in force
and, for `proxy ctl upgrade`, the admin connection waiting for the outcome. The signals the
keeper handles are blocked across the exec (the mask survives it), so a SIGHUP arriving while
the new interpreter starts is delivered later instead of killing it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from typing import Any

from proxy.log import get_logger

log = get_logger("keeper")

STATE_ENV = "PROXY_KEEPER_STATE"
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def prepare(keeper: Any, reply: socket.socket | None) -> None:
    """Keep what must outlive this image and is only at hand now: the `proxy ctl upgrade`
    connection waiting for the outcome (its handler is cancelled before the exec)."""
    keeper._reply_fd = os.dup(reply.fileno()) if reply is not None else None


def execute(keeper: Any) -> None:
    """Replace this process with a fresh `proxy run`, handing it everything still open: built
    here, after the keeper's tasks have unwound, so a worker that went away meanwhile is simply
    not listed."""
    fds: list[int] = []

    def keep(fd: int) -> int:
        fds.append(fd)
        return fd

    workers = [w for w in keeper.all_workers if not w.exited.is_set() and w.ctrl.raw.fileno() != -1]
    state = {
        "generation": keeper.generation,
        "uptime": time.monotonic() - keeper.started,
        "config_path": os.path.abspath(keeper.config_path),
        "config_text": keeper.config_text,
        "pid_file": keeper.pid_file,
        "pid_fd": keep(keeper.pid_fd) if keeper.pid_fd is not None else None,
        "logging": keeper.logging,
        "last_result": keeper.last_result,
        "upgrades": keeper.upgrades,
        "migrated_total": keeper.migrated_total,
        "host_overrides": [[c, a, e] for (c, a), e in keeper.host_overrides.items()],
        "sockets": [{"where": s.where, "index": s.index, "fd": keep(s.sock.fileno())} for s in keeper.sockets.values()],
        "admin": {"fd": keep(keeper.admin.sock.fileno()), "path": keeper.admin.path} if keeper.admin and keeper.admin.sock else None,
        "metrics": {"fd": keep(keeper.metrics.sock.fileno())} if keeper.metrics and keeper.metrics.sock else None,
        "workers": [
            {"index": w.index, "generation": w.generation, "pid": w.pid, "fd": keep(w.ctrl.raw.fileno()), "current": w in keeper.current}
            for w in workers
        ],
        "reply_fd": keep(keeper._reply_fd) if keeper._reply_fd is not None else None,
    }
    memfd = os.memfd_create("proxy-keeper-state", 0)
    os.write(memfd, json.dumps(state).encode())
    os.lseek(memfd, 0, os.SEEK_SET)
    for fd in fds:
        os.set_inheritable(fd, True)
    env = dict(os.environ, **{STATE_ENV: str(memfd)})
    argv = [sys.executable, "-m", "proxy", *sys.argv[1:]]
    log.info("upgrade.reexec", argv=" ".join(argv))
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, argv, env)
    except OSError as exc:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        log.error("upgrade.reexec_failed", error=str(exc))
        raise


def load_state() -> dict[str, Any] | None:
    value = os.environ.pop(STATE_ENV, None)
    if value is None:
        return None
    fd = int(value)
    with os.fdopen(fd, "rb") as f:
        return json.loads(f.read())


def restore(keeper: Any, state: dict[str, Any]) -> None:
    """Rebuild a keeper's sockets and workers from the state of its previous image."""
    from proxy.upgrade.fdpass import Channel
    from proxy.upgrade.keeper import ListenerSocket, WorkerProc

    keeper.generation = state["generation"]
    keeper.started = time.monotonic() - float(state.get("uptime", 0.0))
    keeper.last_result = state.get("last_result")
    keeper.upgrades.update(state.get("upgrades") or {})
    keeper.migrated_total.update(state.get("migrated_total") or {})
    keeper.host_overrides.update({(c, a): e for c, a, e in state.get("host_overrides") or ()})
    for item in state["sockets"]:
        sock = socket.socket(fileno=item["fd"])
        os.set_inheritable(item["fd"], False)
        sock.setblocking(False)
        s = ListenerSocket(item["where"], item["index"], sock)
        keeper.sockets[s.key] = s
    if state.get("admin"):
        from proxy.upgrade.keeper_admin import KeeperAdmin

        keeper.admin = KeeperAdmin(keeper, state["admin"]["path"], keeper.config.admin.allowed_uids)
        keeper.admin.sock = _adopt(state["admin"]["fd"])
    if state.get("metrics"):
        from proxy.network.listener import bound_address
        from proxy.upgrade.keeper_admin import KeeperMetrics

        keeper.metrics = KeeperMetrics(keeper, keeper.config.admin.metrics)
        keeper.metrics.sock = _adopt(state["metrics"]["fd"])
        keeper.metrics.address = bound_address(keeper.metrics.sock)
    current = []
    for item in state["workers"]:
        w = WorkerProc(item["index"], item["generation"], item["pid"], Channel.from_fd(item["fd"]))
        w.state = "serving"
        keeper.all_workers.add(w)
        if item["current"]:
            current.append(w)
    keeper.current = sorted(current, key=lambda w: w.index)
    keeper._reply_fd = state.get("reply_fd")


def _adopt(fd: int) -> socket.socket:
    os.set_inheritable(fd, False)
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock
