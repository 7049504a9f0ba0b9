"""The worker root: builds clusters and listeners from a config and runs the nursery tree.

    worker root nursery
    ├─ signals task             SIGTERM drain, SIGINT fast stop, SIGUSR1 reopen logs
    ├─ admin socket, metrics listener, diagnostics watcher, HTTP timeout watchdogs
    ├─ upstream nursery         connection-pool idle sweeper (health checkers later)
    └─ connection nursery       one task per connection (+ a relay's second direction)
       └─ listener nursery      accept loops, cancelled first when draining

Draining (SIGTERM or `Worker.drain()`): the listener nursery is cancelled and the listening
sockets closed at once, so new connections are refused; open connections get until
`drain_timeout` to finish on their own, then the connection nursery is cancelled; then exit.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import trio

from proxy.config.model import Config
from proxy.log import get_logger, reopen
from proxy.network.listener import accept_loop, bind, bound_address, close_listener
from proxy.network.tcp_proxy import TcpProxy
from proxy.stats import ListenerStats
from proxy.upstream.cluster import Cluster
from proxy.upstream.pool import PoolManager

log = get_logger("server")

# Lifecycle hooks for the command line (the `--daemon` readiness pipe, sd_notify): plain callables
# run right after the worker logs `ready`, and once when draining starts. A failing hook is logged.
on_ready: list[Callable[[], None]] = []
on_stopping: list[Callable[[], None]] = []


def _run_hooks(hooks: list[Callable[[], None]]) -> None:
    for hook in hooks:
        try:
            hook()
        except Exception:
            log.error("hook.failed", exc_info=True, hook=getattr(hook, "__name__", repr(hook)))


class ListenerRuntime:
    """A listener at run time: its config, bound socket and stats."""

    __slots__ = ("config", "sock", "stats", "address")

    def __init__(self, config: Any, sock: socket.socket) -> None:
        self.config = config
        self.sock = sock
        self.stats = ListenerStats()
        self.address = bound_address(sock)


def raise_fd_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit: a proxy holds two fds (four with splice
    pipes) per connection, and the usual soft limit of 1024 is far too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Worker:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.clusters = {c.name: Cluster(c) for c in config.clusters}
        self.pools = PoolManager()
        self.route_tables = _compile_route_tables(config)
        self.filter_chains = {lc.name: _build_chain(lc) for lc in config.listeners if lc.protocol != "tcp"}
        self.access_logs: dict[str, list[Any]] = {}
        self.http_managers: list[Any] = []
        self.listeners: list[ListenerRuntime] = []
        self.state = "starting"
        self._stop_accepting = trio.Event()
        self._root: trio.Nursery | None = None
        self.admin: Any = None  # AdminServer when config.admin.socket is set
        self.metrics: Any = None  # MetricsServer when config.admin.metrics is set
        self.started = time.monotonic()

    def bind_listeners(self) -> None:
        """Bind every listener up front so any failure is reported before serving starts."""
        try:
            for lc in self.config.listeners:
                self.listeners.append(ListenerRuntime(lc, bind(lc.address, lc.backlog)))
            # admin: the control socket (mode 0600, peer uid checked), bound up front too
            if self.config.admin.socket and self.admin is None:
                from proxy.admin.server import AdminServer

                self.admin = AdminServer(self, self.config.admin.socket, self.config.admin.allowed_uids)
                self.admin.bind()
            # admin.metrics: the plain-HTTP /metrics and /ready listener
            if self.config.admin.metrics is not None and self.metrics is None:
                from proxy.admin.metrics_server import MetricsServer

                self.metrics = MetricsServer(self, self.config.admin.metrics)
                self.metrics.bind()
        except BaseException:
            for lr in self.listeners:
                close_listener(lr.sock)
            self.listeners.clear()
            if self.admin is not None:
                self.admin.close()
            if self.metrics is not None:
                self.metrics.close()
            self.admin = None
            self.metrics = None
            raise

    async def run(self, *, task_status: trio.TaskStatus[Worker] = trio.TASK_STATUS_IGNORED) -> None:
        if not self.listeners:
            self.bind_listeners()
        try:
            await self._serve(task_status)
        finally:
            for lr in self.listeners:
                close_listener(lr.sock)
            if self.admin is not None:
                self.admin.close()
            if self.metrics is not None:
                self.metrics.close()
            self.pools.close_all()
            for logs in self.access_logs.values():
                for logger in logs:
                    logger.close()
        log.info("stopped")

    async def _serve(self, task_status: trio.TaskStatus[Worker]) -> None:
        drain_timeout = float(self.config.runtime.drain_timeout)
        async with trio.open_nursery() as root:
            self._root = root
            root.start_soon(self._handle_signals)
            root.start_soon(self.pools.run_sweeper)
            if self.admin is not None:
                root.start_soon(self.admin.serve, name="AdminServer.serve")
            if self.metrics is not None:
                root.start_soon(self.metrics.serve, name="MetricsServer.serve")
            if self.config.diagnostics is not None:
                from proxy.diagnostics import Watcher

                root.start_soon(Watcher(self.config.diagnostics, self).run)
            async with trio.open_nursery() as connection_nursery:
                async with trio.open_nursery() as listener_nursery:
                    for lr in self.listeners:
                        handler = self._handler_for(lr, connection_nursery)
                        listener_nursery.start_soon(
                            accept_loop, lr.config.name, lr.sock, handler, connection_nursery, lr.stats, lr.config.max_connections
                        )
                        log.info("listener.started", listener=lr.config.name, address=lr.address, protocol=lr.config.protocol)
                    self.state = "serving"
                    log.info("ready", pid=os.getpid(), listeners=len(self.listeners))
                    _run_hooks(on_ready)
                    task_status.started(self)
                    await self._stop_accepting.wait()
                    listener_nursery.cancel_scope.cancel()
                for lr in self.listeners:
                    close_listener(lr.sock)
                active = sum(lr.stats.downstream_cx_active for lr in self.listeners)
                log.info("draining", active_connections=active, drain_timeout=drain_timeout)
                _run_hooks(on_stopping)
                connection_nursery.cancel_scope.deadline = trio.current_time() + drain_timeout
            if connection_nursery.cancel_scope.cancelled_caught:
                log.warning("drain.timeout", message="connections still open at drain_timeout were closed")
            self.state = "stopped"
            root.cancel_scope.cancel()

    def _handler_for(self, lr: ListenerRuntime, connection_nursery: trio.Nursery) -> Any:
        lc = lr.config
        if lc.protocol == "tcp":
            return TcpProxy(lc, self.clusters[lc.cluster], lr.stats, connection_nursery).handle
        if lc.protocol == "http1":
            from proxy.http.access_log import AccessLogger
            from proxy.http.connection_manager import HttpConnectionManager

            logs = [AccessLogger(a.path, a.format) for a in lc.access_log]
            self.access_logs[lc.name] = logs
            hcm = HttpConnectionManager(
                lc, self.route_tables[lc.route], self.clusters, self.pools, self.filter_chains[lc.name], logs, lr.stats, connection_nursery
            )
            assert self._root is not None
            self._root.start_soon(hcm.run_watchdog)
            self.http_managers.append(hcm)
            return hcm.handle
        raise ValueError(f"listener {lc.name}: unsupported protocol {lc.protocol}")

    def drain(self) -> None:
        """Stop accepting and let open connections finish (up to drain_timeout)."""
        if self.state == "serving":
            self.state = "draining"
        self._stop_accepting.set()
        for hcm in self.http_managers:
            hcm.drain()

    def stop_now(self) -> None:
        self.state = "stopping"
        if self._root is not None:
            self._root.cancel_scope.cancel()

    async def _handle_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) as signals:
            async for signum in signals:
                if signum == signal.SIGTERM:
                    log.info("signal", signal="SIGTERM", action="drain")
                    self.drain()
                elif signum == signal.SIGINT:
                    log.info("signal", signal="SIGINT", action="stop")
                    self.stop_now()
                elif signum == signal.SIGUSR1:
                    reopen()
                    from proxy.http.access_log import reopen_all

                    reopen_all()
                    log.info("signal", signal="SIGUSR1", action="reopen_logs")


def _compile_route_tables(config: Config) -> dict[str, Any]:
    if not config.routes:
        return {}
    from proxy.router.route_table import CompiledRouteTable

    return {name: CompiledRouteTable(table) for name, table in config.routes.items()}


def _build_chain(listener: Any) -> Any:
    from proxy.http.filter import build_chain

    return build_chain(listener.filters)


def run_worker(config: Config) -> int:
    """Run a worker in this process until it stops; return the exit code."""
    raise_fd_limit()
    worker = Worker(config)  # raises FilterLoadError for a filter that cannot be built
    worker.bind_listeners()
    trio.run(worker.run)
    return 0
