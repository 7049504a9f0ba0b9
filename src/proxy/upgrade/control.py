"""A worker process under a keeper: its end of the control channel (`proxy worker`, internal).

Start-up (upgrade.md §7.4, keeper mode: the keeper owns the listeners and sends them):

    worker                           keeper
    HELLO {proto range, pid, ...} ->
                                  <- WELCOME {proto, generation, index, logging} + config memfd
                                  <- LISTENERS {items, more} + listening fds (batches)
    LISTENERS_ACK ->
    ... config built, accept loops running on the shared sockets ...
    READY {startup_ms} ->

Then it obeys the keeper: PAUSE/RESUME its accept loops, ADMIN requests, DRAIN, STOP,
REOPEN_LOGS, and COMMIT, which brings the socketpair to the other generation's worker of the
same index: as the old worker it hands over its live connections and exits when it holds none
(or at drain_timeout); as the new one it adopts them. If the keeper goes away, the worker
drains and exits: it never serves on without a supervisor.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from typing import Any

import trio

import proxy
from proxy import stats as stats_mod
from proxy.log import get_logger
from proxy.upgrade import chaos
from proxy.upgrade.fdpass import Channel, PeerGone
from proxy.upgrade.handoff import Sender, adopt_all
from proxy.upgrade.migration import SCHEMAS, b64d, b64e
from proxy.upgrade.protocol import PROTO_MAX, PROTO_MIN, Msg, ProtocolError, expect

log = get_logger("worker")

FEATURES = ["listeners", "http1", "http2", "tcp", "tunnel", "stats"]


def main(fd: int) -> int:
    """Entry point of `proxy worker --control-fd N` (spawned by the keeper, never by hand)."""
    from proxy.server import raise_fd_limit

    # A terminal hangup or a stray upgrade signal is the keeper's business, not a worker's.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    raise_fd_limit()
    if os.environ.get("PROXY_EDGE_EPOLL", "1") != "0":
        from proxy.network import edge_epoll

        edge_epoll.install()
    try:
        return trio.run(_run, fd)
    except KeyboardInterrupt:
        return 130


async def _run(fd: int) -> int:
    started = time.monotonic()
    ctrl = Channel.from_fd(fd)
    try:
        worker, welcome = await _start(ctrl)
    except (PeerGone, ProtocolError) as exc:
        print(f"proxy worker {os.getpid()}: start aborted: {exc}", file=sys.stderr)
        return 1
    except _StartFailed as exc:
        log.error("worker.start_failed", error=str(exc))
        try:
            await ctrl.send(Msg.ABORT, {"reason": str(exc)})
        except PeerGone:
            pass
        return 1
    agent = _Agent(ctrl, worker, welcome)
    async with trio.open_nursery() as nursery:

        async def serve(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
            await worker.run(task_status=task_status)
            nursery.cancel_scope.cancel()  # the worker stopped: so does its control channel

        await nursery.start(serve, name="proxy.server.Worker.run")
        chaos.point("after_listening")
        await ctrl.send(Msg.READY, {"startup_ms": round((time.monotonic() - started) * 1000, 1)})
        chaos.point("after_ready")
        nursery.start_soon(agent.serve_control, nursery)
    return agent.exit_code


class _StartFailed(Exception):
    pass


async def _start(ctrl: Channel) -> tuple[Any, dict[str, Any]]:
    from proxy import log as proxy_log
    from proxy.config import ConfigError, load_text
    from proxy.config.paths import config_dir
    from proxy.http.filter import FilterLoadError
    from proxy.server import Worker

    await ctrl.send(
        Msg.HELLO,
        {
            "proto_min": PROTO_MIN,
            "proto_max": PROTO_MAX,
            "pid": os.getpid(),
            "build": proxy.__version__,
            "features": FEATURES,
            "schemas": SCHEMAS,
        },
    )
    mtype, welcome, fds = await ctrl.recv()
    expect(mtype, welcome, Msg.WELCOME)
    ctrl.proto = welcome["proto"]
    chaos.generation = welcome.get("generation", 1)
    if len(fds) != 1:
        raise ProtocolError("WELCOME must carry the config memfd")
    with os.fdopen(fds[0], "rb") as f:
        text = f.read().decode()
    logging_ = welcome.get("logging", {})
    proxy_log.setup(logging_.get("level", "info"), logging_.get("format", "text"), logging_.get("file"))
    chaos.point("init")
    inherited: dict[str, list[socket.socket]] = {}
    adopted: list[str] = []
    while True:
        mtype, body, fds = await ctrl.recv()
        expect(mtype, body, Msg.LISTENERS)
        for item, fd in zip(body["items"], fds):
            sock = socket.socket(fileno=fd)
            if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                sock.close()
                raise _StartFailed(f"listener {item['name']}: the keeper's fd is not a listening stream socket")
            sock.setblocking(False)
            inherited.setdefault(item["name"], []).append(sock)
            adopted.append(item["key"])
        if not body.get("more"):
            break
    try:
        path = welcome.get("config_path")  # relative paths in the config mean its directory, as in the keeper
        config = load_text(text, path or "<config>", base_dir=config_dir(path) if path else None)
        worker = Worker(config, inherited=inherited)
    except (ConfigError, FilterLoadError) as exc:
        raise _StartFailed(str(exc)) from exc
    worker.generation = welcome.get("generation", 1)
    worker.worker_index = welcome.get("worker_index", 0)
    await ctrl.send(Msg.LISTENERS_ACK, {"adopted": adopted, "unknown": []})
    return worker, welcome


class _Agent:
    """Executes the keeper's commands for one worker."""

    def __init__(self, ctrl: Channel, worker: Any, welcome: dict[str, Any]) -> None:
        self.ctrl = ctrl
        self.worker = worker
        self.welcome = welcome
        self.exit_code = 0
        self._admin: Any = None

    async def serve_control(self, nursery: trio.Nursery) -> None:
        try:
            while True:
                mtype, body, fds = await self.ctrl.recv()
                if mtype == Msg.PAUSE:
                    self.worker.pause_accepting()
                    log.info("upgrade.paused")
                    await self.ctrl.send(Msg.PAUSED)
                elif mtype == Msg.RESUME:
                    self.worker.resume_accepting()
                    log.info("upgrade.resumed")
                    await self.ctrl.send(Msg.RESUMED)
                elif mtype == Msg.COMMIT:
                    pair = Channel(socket.socket(fileno=fds[0]))
                    if body.get("role") == "old":
                        nursery.start_soon(self._hand_over, pair, float(body.get("drain_timeout", 30)))
                    else:
                        nursery.start_soon(self._adopt, pair)
                elif mtype == Msg.ADMIN:
                    nursery.start_soon(self._admin_request, body)
                elif mtype == Msg.DRAIN:
                    self.worker.drain()
                elif mtype == Msg.STOP:
                    self.worker.stop_now()
                elif mtype == Msg.REOPEN_LOGS:
                    from proxy.http.access_log import reopen_all
                    from proxy.log import reopen

                    reopen()
                    reopen_all()
                else:
                    for fd in fds:
                        os.close(fd)
        except (PeerGone, ProtocolError, OSError) as exc:
            if self.worker.state in ("serving", "starting"):
                log.warning("worker.keeper_gone", error=str(exc), action="drain")
                self.worker.drain()

    async def _admin_request(self, body: dict[str, Any]) -> None:
        import json

        from proxy.admin.server import AdminServer, TextBody

        if self._admin is None:
            self._admin = AdminServer(self.worker, "")
        status, payload, allow = await self._admin._dispatch_async(body["method"], body["target"], b64d(body.get("body", "")))
        if isinstance(payload, TextBody):
            content_type, data = payload.content_type, payload.body
        else:
            content_type, data = "application/json", json.dumps(payload, default=str).encode() + b"\n"
        try:
            await self.ctrl.send(
                Msg.ADMIN_REPLY, {"id": body["id"], "status": status, "content_type": content_type, "body": b64e(data), "allow": allow}
            )
        except (PeerGone, ProtocolError) as exc:
            log.warning("admin.reply_failed", error=str(exc))

    async def _hand_over(self, pair: Channel, drain_timeout: float) -> None:
        """Old worker: move every live connection to the new worker, then exit."""
        worker = self.worker
        started = time.monotonic()
        snapshot = worker.export_stats()
        sender = Sender(pair)
        try:
            await pair.send(Msg.STATE, {"kind": "stats", "schema": 1, "blob": snapshot})
        except (PeerGone, ProtocolError) as exc:
            sender.fail(str(exc))
        forced = 0
        async with trio.open_nursery() as nursery:
            if sender.active:
                nursery.start_soon(sender.run)
                worker.start_migration(sender)
                try:
                    await self.ctrl.send(Msg.COMMIT_ACK, {"conns": worker.active_connections()})
                except PeerGone:
                    pass  # the keeper is gone: hand over all the same
                log.info("upgrade.handover_started", connections=worker.active_connections())
            deadline = trio.current_time() + drain_timeout
            while sender.active and worker.active_connections() > 0 and trio.current_time() < deadline:
                with trio.move_on_after(0.01):
                    await sender.broken.wait()
            if sender.active and worker.active_connections() > 0:
                forced = worker.active_connections()
            nursery.cancel_scope.cancel()
        if not sender.active:
            # The new worker died or broke the protocol: this one serves on, as before.
            # (handlers see the broken Sender's active=False: nothing else to undo)
            worker.resume_accepting()
            pair.close()
            log.warning("upgrade.rolled_back", reason="the new worker went away during the handover")
            try:
                await self.ctrl.send(Msg.RESUMED, {"after_commit": True})
            except PeerGone:
                pass
            return
        counts = {
            "migrated": sender.migrated,
            "rejected": sender.rejected,
            "forced": forced,
            "seconds": round(time.monotonic() - started, 3),
        }
        try:
            await pair.send(Msg.STATS_DELTA, {"blob": _delta(worker.export_stats(), snapshot)})
            await pair.send(Msg.DRAINED, counts)
        except (PeerGone, ProtocolError):
            pass
        pair.close()
        log.info("upgrade.handed_over", **{k: v for k, v in counts.items() if k != "migrated"}, migrated=sum(sender.migrated.values()))
        try:
            await self.ctrl.send(Msg.DRAINED, counts)
        except PeerGone:
            pass
        worker.stop_now()

    async def _adopt(self, pair: Channel) -> None:
        """New worker: adopt what the old worker hands over, then tell the keeper."""

        async def state_absorbed() -> None:
            try:
                await self.ctrl.send(Msg.COMMIT_ACK, {})
            except PeerGone:
                pass

        def adopt(kind: str, listener: str, socks: list[socket.socket], state: dict[str, Any]) -> Any:
            chaos.point("adopt")
            return self.worker.adopt(kind, listener, socks, state)

        counts = await adopt_all(pair, adopt, self.worker.absorb_stats, state_absorbed)
        pair.close()
        try:
            await self.ctrl.send(Msg.HANDOVER_DONE, counts)
        except PeerGone:
            pass


def _delta(later: dict[str, Any], earlier: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for group, items in later.items():
        out[group] = {name: stats_mod.subtract(data, earlier.get(group, {}).get(name, {})) for name, data in items.items()}
    return out




