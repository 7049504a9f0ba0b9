"""The keeper: `proxy run`'s process. Stable pid, owner of every listening socket and of the admin
socket, supervisor of worker generations; it serves no traffic.

    keeper
     ├─ signals        SIGHUP reload, SIGUSR2 upgrade (re-exec first), SIGTERM drain, SIGINT stop,
     │                 SIGUSR1 reopen logs
     ├─ admin socket   keeper endpoints (/status /reload /upgrade /drain) answered here, the rest
     │                 asked of the workers over their control channels, their answers folded
     │                 into one (proxy.admin.aggregate); metrics listener likewise
     └─ workers        one supervisor task per worker process: a worker that dies is replaced
                       (within 1 s), and since the keeper never closes a listener, connections
                       queued in the kernel meanwhile are served by the replacement

A reload (SIGHUP, `proxy ctl reload`) or upgrade builds generation g+1 next to g (upgrade.md
§7.4), with rollback at every step:

    validate config ─► spawn N workers ─► HELLO/WELCOME/LISTENERS ─► READY    (fail: kill N)
      ─► PAUSE old accept loops ─► probation                              (N dies: RESUME old)
      ─► COMMIT: a socketpair per old worker; old hands live connections to new
      ─► old: DRAINED, exits                          (N dies: old resumes and stays current)

Only one runs at a time; another request meanwhile is refused as busy.
"""

from __future__ import annotations

import collections
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import trio

import proxy
from proxy.config.model import Config
from proxy.humanize import plural
from proxy.log import get_logger
from proxy.network.listener import BindError, bind, bound_address, close_listener
from proxy.upgrade.fdpass import Channel, PeerGone, socketpair
from proxy.upgrade.protocol import MAX_FDS, Msg, ProtocolError, negotiate

log = get_logger("keeper")

HELLO_TIMEOUT = 10.0
PAUSE_TIMEOUT = 5.0
COMMIT_ACK_TIMEOUT = 10.0
RESPAWN_DELAY = 0.2  # first retry; doubles while a worker keeps dying at start, up to 1 s
STATE_ENV = "PROXY_KEEPER_STATE"


class StartFailed(Exception):
    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason


class ListenerSocket:
    """One listening socket the keeper owns: socket `index` of the group bound at `where`."""

    __slots__ = ("where", "index", "sock", "bound")

    def __init__(self, where: str, index: int, sock: socket.socket) -> None:
        self.where = where  # the group's identity, see where()
        self.index = index
        self.sock = sock
        self.bound = bound_address(sock)

    @property
    def key(self) -> str:
        return f"{self.where}#{self.index}"


def where(lc: Any) -> str:
    """What identifies a listener's sockets across reloads: the address it binds, resolved, so
    a renamed listener or `localhost:80` written as `127.0.0.1:80` keeps its sockets (binding
    a second group next to the live one would reset queued connections). Port 0 has no stable
    address: it is tied to the listener's name."""
    address = lc.address
    if address.is_unix:
        return f"unix:{address.path}"
    if not address.port:
        return f"{lc.name}|{address}"
    try:
        infos = socket.getaddrinfo(address.host, address.port, address.family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
        host, port = infos[0][4][:2]
    except OSError:
        return str(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class WorkerProc:
    """One worker process and its control channel, as the keeper sees it."""

    def __init__(self, index: int, generation: int, pid: int, ctrl: Channel) -> None:
        self.index = index
        self.generation = generation
        self.pid = pid
        self.ctrl = ctrl
        self.state = "starting"
        self.started = time.time()
        self.gone = trio.Event()  # control channel closed
        self.exited = trio.Event()  # process reaped
        # Set once the reload that started this worker no longer decides its fate: every old
        # worker handing over to it is done (or none did). Its supervisor may then replace it
        # while slower old peers still retire. A reload resets it on the workers it retires.
        self.took_over = trio.Event()
        self.returncode: int | None = None
        # unbounded: a few small reports per reload, and a full inbox must never stop the reader
        self._inbox_send, self._inbox = trio.open_memory_channel[tuple[Msg, dict[str, Any]]](math.inf)
        self._replies: dict[int, list[Any]] = {}
        self._next_id = 0

    async def run(self) -> None:
        """Read the control channel and reap the process, until both are done."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reap)
            try:
                while True:
                    mtype, body, fds = await self.ctrl.recv()
                    for fd in fds:
                        os.close(fd)
                    if mtype == Msg.ADMIN_REPLY:
                        entry = self._replies.get(body.get("id", -1))
                        if entry is not None:
                            entry[1] = body
                            entry[0].set()
                    else:
                        self._inbox_send.send_nowait((mtype, body))
            except (PeerGone, ProtocolError, OSError) as exc:
                if not isinstance(exc, PeerGone):
                    log.warning("worker.control_error", pid=self.pid, error=str(exc))
            self._inbox_send.close()  # what is queued is still read, then EndOfChannel
            self.gone.set()
            for entry in self._replies.values():
                entry[0].set()
            self.ctrl.close()

    async def _reap(self) -> None:
        try:
            pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            pidfd = None
        if pidfd is not None:
            try:
                await trio.lowlevel.wait_readable(pidfd)
            finally:
                os.close(pidfd)
        while True:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -1
                break
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                break
            await trio.sleep(0.05)  # only without pidfd (not a child of ours after a re-exec race)
        self.state = "exited"
        self.exited.set()

    async def expect(self, *wanted: Msg, timeout: float) -> dict[str, Any]:
        """The next message of a `wanted` type (reports of other types that arrive meanwhile,
        e.g. a new worker's HANDOVER_DONE, are logged and skipped); StartFailed on ABORT,
        timeout or the worker's death."""
        with trio.move_on_after(timeout) as scope:
            while True:
                try:
                    mtype, body = await self._inbox.receive()
                except trio.EndOfChannel:
                    raise StartFailed("exited", f"worker {self.pid} went away (exit code {self.returncode})") from None
                if mtype in wanted:
                    return body
                if mtype == Msg.ABORT:
                    raise StartFailed("aborted", str(body.get("reason", "?")))
                log.debug("worker.report", pid=self.pid, message=mtype.name, body=body)
        assert scope.cancelled_caught
        raise StartFailed("timeout", f"worker {self.pid} sent no {'/'.join(w.name for w in wanted)} within {timeout:g}s")

    async def send(self, mtype: Msg, body: dict[str, Any] | None = None, fds: list[int] | tuple[int, ...] = ()) -> bool:
        try:
            await self.ctrl.send(mtype, body, fds)
            return True
        except (PeerGone, OSError):
            return False

    async def admin(self, method: str, target: str, body: bytes, timeout: float = 120.0) -> dict[str, Any] | None:
        from proxy.upgrade.migration import b64e

        self._next_id += 1
        rid = self._next_id
        entry: list[Any] = [trio.Event(), None]
        self._replies[rid] = entry
        try:
            if not await self.send(Msg.ADMIN, {"id": rid, "method": method, "target": target, "body": b64e(body)}):
                return None
            with trio.move_on_after(timeout):
                await entry[0].wait()
            return entry[1]
        finally:
            self._replies.pop(rid, None)

    def kill(self) -> None:
        if not self.exited.is_set():
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def describe(self) -> dict[str, Any]:
        return {"index": self.index, "pid": self.pid, "generation": self.generation, "state": self.state}


class Keeper:
    def __init__(self, config: Config, config_text: str, config_path: str, logging_: dict[str, Any]) -> None:
        self.config = config
        self.config_text = config_text
        self.config_path = config_path
        self.pid_file: str | None = None  # kept across a re-exec (the daemon runs in "/")
        self.pid_fd: int | None = None  # the locked pid file: inherited, so the lock never lapses
        # operator overrides (`host enable|disable`) replayed into every new worker
        self.host_overrides: dict[tuple[str, str], bool] = {}
        self.logging = logging_
        self.sockets: dict[str, ListenerSocket] = {}
        self.current: list[WorkerProc] = []
        self.all_workers: set[WorkerProc] = set()
        self.generation = 0
        self.state = "starting"
        self.busy: str | None = None  # "reload" / "upgrade" while one runs (see _set_busy)
        self._idle = trio.Event()  # set whenever busy is None
        self._idle.set()
        self.last_result: dict[str, Any] | None = None
        self.upgrades: dict[str, int] = {"ok": 0, "failed": 0, "refused": 0}
        self.migrated_total: dict[str, int] = {}
        self.started = time.monotonic()
        self.admin: Any = None
        self.metrics: Any = None
        self.on_ready: list[Callable[[], None]] = []
        self.on_stopping: list[Callable[[], None]] = []
        self.on_reload: list[Callable[[str], None]] = []  # "start" / "done:<result>" (sd_notify)
        self._nursery: trio.Nursery | None = None
        self._stopped = trio.Event()
        self._exec_requested = False
        self._reexec_state: Any = None
        self._reply_fd: int | None = None
        self._reload_scope: trio.CancelScope | None = None
        self._committed = False  # the running reload passed COMMIT: it finishes, drain waits  # after a re-exec: the `ctl upgrade` waiting for the outcome

    # ------------------------------------------------------------ listening sockets

    def worker_count(self, config: Config) -> int:
        workers = config.runtime.workers
        return (os.cpu_count() or 1) if workers == "auto" else int(workers)

    def bind_for(self, config: Config) -> list[ListenerSocket]:
        """Bind the listeners `config` adds: a group of one socket per worker (SO_REUSEPORT, when
        there are several workers and the address is not a Unix path), or one shared socket.
        An existing group is never grown or re-bound: a new worker count shares its sockets
        (see sockets_for). Returns the sockets bound now (closed again if the reload fails)."""
        n = self.worker_count(config)
        fresh: list[ListenerSocket] = []
        try:
            for lc in config.listeners:
                w = where(lc)
                if any(s.where == w for s in self.sockets.values()):
                    continue
                reuseport = n > 1 and not lc.address.is_unix
                first = self._add(w, 0, bind(lc.address, lc.backlog, reuseport=reuseport))
                fresh.append(first)
                if reuseport:
                    port_address = _same_port(lc.address, first.sock)
                    for i in range(1, n):
                        fresh.append(self._add(w, i, bind(port_address, lc.backlog, reuseport=True)))
        except BindError:
            self._forget_fresh(fresh)
            raise
        return fresh

    def _add(self, w: str, index: int, sock: socket.socket) -> ListenerSocket:
        s = ListenerSocket(w, index, sock)
        self.sockets[s.key] = s
        return s

    def _forget_fresh(self, fresh: list[ListenerSocket]) -> None:
        for s in fresh:
            self.sockets.pop(s.key, None)
            close_listener(s.sock)

    def sockets_for(self, config: Config, index: int, n: int) -> list[tuple[str, ListenerSocket]]:
        """(listener name, socket) pairs worker `index` of `n` accepts from. A group of g
        sockets: with g >= n, socket k goes to worker k % n (a smaller generation still accepts
        from every socket the kernel queues on); with g < n, workers share socket index % g."""
        out = []
        for lc in config.listeners:
            w = where(lc)
            group = sorted((s for s in self.sockets.values() if s.where == w), key=lambda s: s.index)
            g = len(group)
            if g >= n:
                out += [(lc.name, s) for s in group if s.index % n == index]
            elif g:
                out.append((lc.name, group[index % g]))
        return out

    def close_unused(self) -> None:
        """After a reload: close the groups no listener of the config in force binds any more."""
        wanted = {where(lc) for lc in self.config.listeners}
        for key, s in list(self.sockets.items()):
            if s.where not in wanted:
                del self.sockets[key]
                close_listener(s.sock)
                log.info("listener.closed", address=s.bound)

    def bind_admin(self) -> None:
        from proxy.upgrade.keeper_admin import KeeperAdmin, KeeperMetrics

        if self.config.admin.socket:
            self.admin = KeeperAdmin(self, self.config.admin.socket, self.config.admin.allowed_uids)
            self.admin.bind()
        if self.config.admin.metrics is not None:
            self.metrics = KeeperMetrics(self, self.config.admin.metrics)
            self.metrics.bind()

    # ------------------------------------------------------------ running

    async def run(self) -> int:
        failed: StartFailed | None = None
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._signals)
            if self.admin is not None:
                nursery.start_soon(self.admin.serve, name="KeeperAdmin.serve")
            if self.metrics is not None:
                nursery.start_soon(self.metrics.serve, name="KeeperMetrics.serve")
            restored = bool(self.current)
            for w in list(self.all_workers):  # re-attached after a re-exec
                nursery.start_soon(self._track, w)
            try:
                if not restored:
                    self.generation = 1
                    self.current = await self._spawn_generation(1, self.config, self.config_text)
            except StartFailed as exc:
                log.error("start.failed", stage=exc.stage, error=exc.reason)
                failed = exc
            if failed is None and self.state == "starting":
                await self._serve(nursery, restored)
            nursery.cancel_scope.cancel()
        if self._exec_requested:
            self._reexec()  # does not return unless exec failed
        self._close_all()
        if failed is not None:
            raise failed  # outside the nursery, so the caller sees StartFailed itself
        log.info("keeper.stopped")
        return 0

    async def _serve(self, nursery: trio.Nursery, restored: bool) -> None:
        for w in self.current:
            nursery.start_soon(self._supervise, w)
        self.state = "serving"
        log.info("keeper.ready", pid=os.getpid(), generation=self.generation, workers=[w.pid for w in self.current])
        _run_hooks(self.on_ready)
        if restored:
            nursery.start_soon(self._after_reexec)
        await self._stopped.wait()

    def _close_all(self) -> None:
        for s in self.sockets.values():
            close_listener(s.sock)
        self.sockets.clear()
        if self.admin is not None:
            self.admin.close()
        if self.metrics is not None:
            self.metrics.close()

    async def _spawn_generation(self, generation: int, config: Config, text: str) -> list[WorkerProc]:
        n = self.worker_count(config)
        procs: list[WorkerProc | None] = [None] * n
        errors: list[StartFailed] = []

        async def one(i: int) -> None:
            try:
                procs[i] = await self._start_worker(i, n, generation, config, text)
            except StartFailed as exc:
                errors.append(exc)
            except (OSError, ValueError, KeyError, TypeError) as exc:  # fds exhausted, a malformed HELLO
                errors.append(StartFailed("spawn", repr(exc)))

        try:
            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(one, i)
        except BaseException:
            for p in procs:
                if p is not None:
                    p.kill()
            raise
        if errors:
            for p in procs:
                if p is not None:
                    p.kill()
            raise errors[0]
        return [p for p in procs if p is not None]

    async def _start_worker(self, index: int, n: int, generation: int, config: Config, text: str) -> WorkerProc:
        assert self._nursery is not None
        mine, theirs = socketpair()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "proxy", "worker", "--control-fd", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            mine.close()
            raise StartFailed("spawn", str(exc)) from exc
        finally:
            theirs.close()
        w = WorkerProc(index, generation, proc.pid, Channel(mine))
        proc.returncode = 0  # reaped by WorkerProc (pidfd); keep subprocess from reaping it too
        self.all_workers.add(w)
        self._nursery.start_soon(self._track, w)
        try:
            hello = await w.expect(Msg.HELLO, timeout=HELLO_TIMEOUT)
            proto = negotiate(int(hello.get("proto_min", 1)), int(hello.get("proto_max", 1)))
            if proto is None:
                await w.send(Msg.ABORT, {"reason": "no common protocol version"})
                raise StartFailed("hello", f"worker speaks protocol {hello.get('proto_min')}..{hello.get('proto_max')}")
            w.ctrl.proto = proto
            memfd = os.memfd_create("proxy-config", os.MFD_CLOEXEC)
            try:
                os.write(memfd, text.encode())
                os.lseek(memfd, 0, os.SEEK_SET)
                welcome = {
                    "proto": proto,
                    "generation": generation,
                    "worker_index": index,
                    "workers": n,
                    "config_path": self.config_path,
                    "logging": self.logging,
                }
                if not await w.send(Msg.WELCOME, welcome, [memfd]):
                    raise StartFailed("welcome", "worker went away")
            finally:
                os.close(memfd)
            mine_sockets = self.sockets_for(config, index, n)
            per = MAX_FDS - 1
            for at in range(0, max(len(mine_sockets), 1), per):
                batch = mine_sockets[at : at + per]
                items = [{"key": s.key, "name": name, "address": s.bound, "index": s.index} for name, s in batch]
                more = at + per < len(mine_sockets)
                if not await w.send(Msg.LISTENERS, {"items": items, "more": more}, [s.sock.fileno() for _, s in batch]):
                    raise StartFailed("listeners", "worker went away")
            await w.expect(Msg.LISTENERS_ACK, timeout=float(config.runtime.upgrade_timeout))
            ready = await w.expect(Msg.READY, timeout=float(config.runtime.upgrade_timeout))
        except BaseException:  # failed, timed out, or cancelled by a drain: never left behind
            w.kill()
            raise
        w.state = "serving"
        for (cluster, address), enabled in self.host_overrides.items():
            from urllib.parse import quote

            target = f"/clusters/{quote(cluster, safe='')}/hosts/{quote(address, safe='')}/{'enable' if enabled else 'disable'}"
            await w.admin("POST", target, b"", timeout=5)
        log.info("worker.ready", pid=w.pid, generation=generation, index=index, startup_ms=ready.get("startup_ms"))
        return w

    async def _track(self, w: WorkerProc) -> None:
        await w.run()
        await w.exited.wait()
        self.all_workers.discard(w)
        level = log.info if w.returncode == 0 else log.warning
        level("worker.exited", pid=w.pid, generation=w.generation, index=w.index, code=w.returncode)

    async def _supervise(self, w: WorkerProc) -> None:
        """Replace the worker if it dies while it is current (not when an upgrade retires it)."""
        delay = RESPAWN_DELAY
        while True:
            await w.exited.wait()
            # A reload in progress decides for itself, unless this worker took over everything
            # its old peers had: then nothing can roll back to them, and waiting for the rest of
            # the reload (old peers of other workers draining slow requests, up to
            # drain_timeout) would leave its share of the listening sockets unserved.
            while self.busy is not None and not w.took_over.is_set():
                await _first_of(self._idle, w.took_over)
            if self.state != "serving" or w not in self.current:
                return
            log.warning("worker.died", pid=w.pid, index=w.index, code=w.returncode, action="respawn")
            n = len(self.current)
            while self.state == "serving":
                try:
                    new = await self._start_worker(w.index, n, self.generation, self.config, self.config_text)
                except Exception as exc:  # noqa: BLE001 - out of fds, a bad HELLO...: retry, never die
                    log.error("worker.respawn_failed", index=w.index, error=str(exc))
                    await trio.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                break
            else:
                return
            new.took_over.set()  # a replacement takes nothing over
            if w in self.current:
                self.current[self.current.index(w)] = new
            w = new
            delay = RESPAWN_DELAY

    # ------------------------------------------------------------ reload and upgrade

    def _set_busy(self, kind: str | None) -> None:
        self.busy = kind
        if kind is None:
            self._idle.set()
        elif self._idle.is_set():
            self._idle = trio.Event()

    async def reload(self, kind: str = "reload") -> dict[str, Any]:
        """Start a new generation from the config file; the outcome as a dict (`result`: ok,
        failed, busy). Never raises for an expected failure."""
        if self.busy is not None or self.state != "serving":
            self.upgrades["refused"] += 1
            log.warning(f"{kind}.refused", reason=f"busy: a {self.busy} is running" if self.busy else f"state is {self.state}")
            return {"result": "busy", "running": self.busy}
        self._set_busy(kind)
        _run_hooks(self.on_reload, "start")
        t0 = time.monotonic()
        result: dict[str, Any] = {"kind": kind, "generation": self.generation}
        self._committed = False
        try:
            # A drain cancels a reload that has not committed yet (the new generation is killed,
            # the old one resumed): a SIGTERM never waits for a new generation to start.
            with trio.CancelScope() as self._reload_scope:
                result.update(await self._reload(kind, t0))
            if self._reload_scope.cancelled_caught:
                result.update({"result": "failed", "stage": "cancelled", "error": f"cancelled: the proxy is {self.state}"})
        except Exception as exc:
            log.error(f"{kind}.error", exc_info=exc, error=repr(exc))
            result.update({"result": "failed", "stage": "internal", "error": repr(exc)})
        finally:
            self._set_busy(None)
            self._reload_scope = None
        result["seconds"] = round(time.monotonic() - t0, 3)
        result["at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.last_result = result
        self.upgrades["ok" if result["result"] == "ok" else "failed"] += 1
        (log.info if result["result"] == "ok" else log.error)(f"{kind}.done", **{k: v for k, v in result.items() if k != "kind"})
        _run_hooks(self.on_reload, f"done:{result['result']}:{result.get('error', '')}")
        return result

    async def _reload(self, kind: str, t0: float) -> dict[str, Any]:
        from proxy.config import ConfigError
        from proxy.http.filter import load_config

        try:
            config, text = load_config(self.config_path)
        except ConfigError as exc:
            errors = [str(i) for i in exc.issues]
            log.error(f"{kind}.config_invalid", path=self.config_path, errors=len(errors))
            for e in errors:
                log.error("config.error", detail=e)
            return {"result": "failed", "stage": "config", "error": f"{self.config_path} has {plural(len(errors), 'error')}", "errors": errors}
        if self.config.admin != config.admin:
            log.warning(f"{kind}.admin_unchanged", message="admin settings take effect only at a restart")
        gen = self.generation + 1
        log.info(f"{kind}.start", generation=gen)
        try:
            fresh = self.bind_for(config)
        except BindError as exc:
            return {"result": "failed", "stage": "bind", "error": str(exc)}
        new: list[WorkerProc] = []
        old = list(self.current)
        for o in old:
            o.took_over = trio.Event()  # from now on this reload decides what happens to them
        try:
            try:
                new = await self._spawn_generation(gen, config, text)
            except StartFailed as exc:
                self._forget_fresh(fresh)
                return {"result": "failed", "stage": exc.stage, "error": exc.reason}
            ready_s = time.monotonic() - t0
            await self._pause(old)
            # Probation: the new generation accepts alone; if it fails now, the old one resumes.
            failed = await _first_gone(new, float(config.runtime.upgrade_probation))
            if failed is not None:
                for o in old:
                    await o.send(Msg.RESUME)
                    o.state = "serving"
                for n_ in new:
                    n_.kill()
                log.error(f"{kind}.rolled_back", stage="probation", pid=failed.pid)
                self._forget_fresh(fresh)
                return {"result": "failed", "stage": "probation", "error": f"new worker {failed.pid} exited during probation (code {failed.returncode})"}
        except trio.Cancelled:
            with trio.CancelScope(shield=True):  # undo what this reload started, then go on
                for n_ in new:
                    n_.kill()
                for o in old:
                    await o.send(Msg.RESUME)
                self._forget_fresh(fresh)
            raise
        self._committed = True
        drain_timeout = float(config.runtime.drain_timeout)
        pairs = await self._commit(old, new, drain_timeout)
        for n_ in new:
            if not any(t is n_ for _, t in pairs):
                n_.took_over.set()  # no old worker hands over to it
        commit_s = time.monotonic() - t0
        previous = (self.config, self.config_text, self.generation)
        self.current = list(new)
        self.config, self.config_text, self.generation = config, text, gen
        assert self._nursery is not None
        for n_ in new:
            self._nursery.start_soon(self._supervise, n_)
        log.info(f"{kind}.committed", generation=gen, ready_s=round(ready_s, 3))
        # Each old worker hands over or drains everything, then exits.
        outcomes = await self._retire_all(old, pairs, drain_timeout)
        rolled_back = [o for o, outcome in outcomes if outcome.get("resumed")]
        if rolled_back:
            # A new worker went away mid-handover: its old peers took their connections back and
            # accept again. It is killed once, they are current again (their supervisors, never
            # stopped, take over from here).
            dead = {new[old.index(o) % len(new)] for o in rolled_back}
            for n_ in dead:
                n_.kill()
            self.current = [w for w in self.current if w not in dead] + rolled_back
            for o in rolled_back:
                o.state = "serving"
            if all(w.generation < gen for w in self.current):
                self.config, self.config_text, self.generation = previous
            return {"result": "failed", "stage": "handover", "error": "a new worker went away during the handover; the old one serves on"}
        migrated: dict[str, int] = {}
        for _, outcome in outcomes:
            for k, v in (outcome.get("migrated") or {}).items():
                migrated[k] = migrated.get(k, 0) + v
                self.migrated_total[k] = self.migrated_total.get(k, 0) + v
        self.close_unused()
        return {
            "result": "ok",
            "generation": gen,
            "ready_seconds": round(ready_s, 3),
            "commit_seconds": round(commit_s, 3),
            # COMMIT to the last connection handed over (or closed at drain_timeout)
            "handover_seconds": max((float(o.get("seconds", 0.0)) for _, o in outcomes), default=0.0),
            "migrated": migrated,
            "forced": sum(o.get("forced", 0) for _, o in outcomes),
            "workers": [w.pid for w in new],
        }

    async def _pause(self, old: list[WorkerProc]) -> None:
        """Stop the old accept loops: the new generation accepts from the same sockets."""
        for o in old:
            if await o.send(Msg.PAUSE):
                try:
                    await o.expect(Msg.PAUSED, timeout=PAUSE_TIMEOUT)
                    o.state = "paused"
                except StartFailed:
                    pass  # it died: the supervisor of the new generation's era handles it

    async def _commit(self, old: list[WorkerProc], new: list[WorkerProc], drain_timeout: float) -> list[tuple[WorkerProc, WorkerProc]]:
        """Old worker i hands its live connections to new worker i % n over a socketpair of
        their own; returns once each new worker has merged its old peer's counters (so the
        admin view can switch to it and stay monotonic). The (old, new) pairs committed."""
        pairs: list[tuple[WorkerProc, WorkerProc]] = []
        targets = []
        for i, o in enumerate(old):
            if o.exited.is_set():
                continue
            target = new[i % len(new)]
            a, b = socketpair()
            try:
                await target.send(Msg.COMMIT, {"role": "new"}, [b.fileno()])
                await o.send(Msg.COMMIT, {"role": "old", "drain_timeout": drain_timeout}, [a.fileno()])
            finally:
                a.close()
                b.close()
            o.state = "handing_over"
            targets.append(target)
            pairs.append((o, target))
        for target in targets:
            try:
                await target.expect(Msg.COMMIT_ACK, timeout=COMMIT_ACK_TIMEOUT)
            except StartFailed:
                pass
        return pairs

    async def _retire_all(
        self, old: list[WorkerProc], pairs: list[tuple[WorkerProc, WorkerProc]], drain_timeout: float
    ) -> list[tuple[WorkerProc, dict[str, Any]]]:
        """Retire the old workers side by side; each new worker is marked `took_over` as soon
        as all its old peers have handed over (none resumed). The outcomes, in `old`'s order."""
        target_of = dict(pairs)
        pending = collections.Counter(target for _, target in pairs)
        outcomes: dict[WorkerProc, dict[str, Any]] = {}

        async def retire(o: WorkerProc) -> None:
            outcome = outcomes[o] = await self._retire(o, drain_timeout)
            target = target_of.get(o)
            if target is not None and not outcome.get("resumed"):
                pending[target] -= 1
                if pending[target] == 0:
                    target.took_over.set()

        async with trio.open_nursery() as nursery:
            for o in old:
                nursery.start_soon(retire, o)
        return [(o, outcomes.get(o, {})) for o in old]

    async def _retire(self, o: WorkerProc, drain_timeout: float) -> dict[str, Any]:
        """Wait for an old worker's DRAINED (or RESUMED: its new peer died) and its exit."""
        outcome: dict[str, Any] = {}
        with trio.move_on_after(drain_timeout + 10):
            try:
                while True:
                    body = await o.expect(Msg.DRAINED, Msg.RESUMED, Msg.COMMIT_ACK, timeout=drain_timeout + 10)
                    if "migrated" in body or "forced" in body:
                        outcome = body
                        break
                    if body.get("after_commit"):
                        return {"resumed": True}
            except StartFailed:
                pass
            await o.exited.wait()
            return outcome
        log.warning("worker.retire_timeout", pid=o.pid, action="kill")
        o.kill()
        return outcome

    # ------------------------------------------------------------ stop and signals

    async def drain(self) -> None:
        """Graceful stop: close the listeners (new connections are refused), let every worker
        finish its connections (up to drain_timeout), then exit."""
        if self.state in ("draining", "stopping", "stopped"):
            return
        self.state = "draining"
        log.info("keeper.draining", workers=len(self.all_workers))
        _run_hooks(self.on_stopping)
        if self.busy is not None and not self._committed and self._reload_scope is not None:
            log.info(f"{self.busy}.cancelled", reason="draining")
            self._reload_scope.cancel()
        while self.busy is not None:
            await self._idle.wait()
        for s in self.sockets.values():
            close_listener(s.sock)
        self.sockets.clear()
        await self._stop_workers(Msg.DRAIN, float(self.config.runtime.drain_timeout) + 5)

    async def stop_now(self) -> None:
        self.state = "stopping"
        await self._stop_workers(Msg.STOP, 5)

    async def _stop_workers(self, how: Msg, timeout: float) -> None:
        """Tell every worker to DRAIN or STOP, wait up to `timeout` for them, kill the rest."""
        for w in list(self.all_workers):
            await w.send(how)
        with trio.move_on_after(timeout):
            for w in list(self.all_workers):
                await w.exited.wait()
        for w in list(self.all_workers):
            w.kill()
        self.state = "stopped"
        self._stopped.set()

    async def _signals(self) -> None:
        signums = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
        with trio.open_signal_receiver(*signums) as signals:
            # A re-executed keeper blocks these across exec (so none can kill it meanwhile);
            # they are safe to take now.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, signums)
            assert self._nursery is not None
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGTERM:
                    log.info("signal", signal=name, action="drain")
                    self._nursery.start_soon(self.drain)
                elif signum == signal.SIGINT:
                    log.info("signal", signal=name, action="stop")
                    self._nursery.start_soon(self.stop_now)
                elif signum == signal.SIGHUP:
                    log.info("signal", signal=name, action="reload")
                    self._nursery.start_soon(self.reload, "reload")
                elif signum == signal.SIGUSR2:
                    log.info("signal", signal=name, action="upgrade")
                    self._nursery.start_soon(self.upgrade)
                elif signum == signal.SIGUSR1:
                    from proxy.log import reopen

                    try:
                        reopen()
                    except OSError as exc:
                        print(f"proxy: cannot reopen the log file: {exc}", file=sys.stderr)
                    for w in list(self.all_workers):
                        await w.send(Msg.REOPEN_LOGS)
                    log.info("signal", signal=name, action="reopen_logs")

    async def upgrade(self, reply: socket.socket | None = None) -> dict[str, Any]:
        """Hot upgrade: re-execute the keeper in place (same pid, sockets and workers kept), and
        the new keeper then starts a new generation, so new code runs everywhere."""
        if self.busy is not None or self.state != "serving":
            return await self.reload("upgrade")  # refused as busy, consistently
        from proxy.upgrade import reexec

        self._set_busy("upgrade")
        # The code on disk must at least start and accept the config before this process
        # replaces itself with it: a keeper that cannot come back would take everything down.
        try:
            check = await trio.run_process(
                [sys.executable, "-m", "proxy", "check", "-c", self.config_path], capture_stdout=True, capture_stderr=True, check=False
            )
        except OSError as exc:
            self._set_busy(None)
            log.error("upgrade.precheck_failed", error=str(exc))
            return {"kind": "upgrade", "result": "failed", "stage": "precheck", "generation": self.generation, "error": str(exc)}
        if self.state != "serving":  # a SIGTERM or drain arrived meanwhile: it wins
            self._set_busy(None)
            return {"kind": "upgrade", "result": "failed", "stage": "precheck", "generation": self.generation, "error": f"state is {self.state}"}
        if check.returncode != 0:
            self._set_busy(None)
            error = (check.stderr or check.stdout).decode(errors="replace").strip().splitlines()
            result = {"kind": "upgrade", "result": "failed", "stage": "precheck", "generation": self.generation, "error": "the new code refuses the config or does not start", "errors": error[-20:]}
            self.upgrades["failed"] += 1
            self.last_result = result
            log.error("upgrade.precheck_failed", detail=" | ".join(error[-5:]))
            return result
        reexec.prepare(self, reply)
        self._exec_requested = True
        self._stopped.set()
        return {"result": "reexec"}

    async def _after_reexec(self) -> None:
        """The second half of an upgrade, in the new keeper image: a new generation."""
        result = await self.reload("upgrade")
        fd, self._reply_fd = self._reply_fd, None
        if fd is not None:
            from proxy.admin.server import _response
            from proxy.upgrade.keeper_admin import reload_status

            sock = socket.socket(fileno=fd)
            try:
                sock.setblocking(True)
                sock.settimeout(5)
                sock.sendall(_response(reload_status(result), result, keep_alive=False))
            except OSError:
                pass
            finally:
                sock.close()

    def _reexec(self) -> None:
        from proxy.upgrade import reexec

        reexec.execute(self)

    # ------------------------------------------------------------ admin view

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "state": self.state,
            "uptime_seconds": round(time.monotonic() - self.started, 3),  # survives re-execs
            "generation": self.generation,
            "version": proxy.__version__,
            "listeners": len(self.config.listeners),
            "workers": [w.describe() for w in self.current],
            "retiring": [w.describe() for w in self.all_workers if w not in self.current and w.generation < self.generation],
            "busy": self.busy,
            "last_reload": self.last_result,
        }


# ---------------------------------------------------------------- helpers


def _reuseport(sock: socket.socket) -> bool:
    if sock.family == socket.AF_UNIX:
        return False
    return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))


def _same_port(address: Any, sock: socket.socket) -> Any:
    """`address` with the port the first socket of the group got (port 0 binds resolve once)."""
    from proxy.config.values import Address

    port = sock.getsockname()[1]
    host = address.host
    return Address.parse(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")


async def _first_of(*events: trio.Event) -> None:
    """Wait until one of `events` is set."""
    async with trio.open_nursery() as nursery:

        async def wait(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel()

        for event in events:
            nursery.start_soon(wait, event)


async def _first_gone(workers: list[WorkerProc], seconds: float) -> WorkerProc | None:
    """Watch `workers` for `seconds`; the first one that went away, or None."""
    gone: list[WorkerProc] = []
    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:

            async def watch(w: WorkerProc) -> None:
                await w.gone.wait()
                gone.append(w)
                nursery.cancel_scope.cancel()

            for w in workers:
                nursery.start_soon(watch, w)
    return gone[0] if gone else None


def _run_hooks(hooks: list[Callable[..., None]], *args: Any) -> None:
    for hook in hooks:
        try:
            hook(*args)
        except Exception:
            log.error("hook.failed", exc_info=True, hook=getattr(hook, "__name__", repr(hook)))

