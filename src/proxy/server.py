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

from proxy import native
from proxy import stats as stats_mod
from proxy.config.model import Config
from proxy.log import get_logger, reopen
from proxy.network.listener import (
    BindError,
    accept_loop,
    bind,
    bound_address,
    close_listener,
)
from proxy.network import edge_epoll
from proxy.network import pipes as pipes_mod
from proxy.network.parking import PARKING
from proxy.network.sockio import coalesce_sends
from proxy.network.tcp_proxy import TcpProxy
from proxy.stats import ListenerStats
from proxy.upgrade.migration import release
from proxy.upstream.cluster import Cluster
from proxy.upstream.pool import PoolManager

log = get_logger("server")

class ListenerRuntime:
    """A listener at run time: its config, listening sockets and stats. Usually one socket;
    under a keeper, a worker may be given several of one listener (its own SO_REUSEPORT
    socket plus those of workers the new generation no longer has)."""

    __slots__ = ("address", "config", "socks", "stats")

    def __init__(self, config: Any, sock: socket.socket) -> None:
        self.config = config
        self.socks = [sock]
        self.stats = ListenerStats()
        self.address = bound_address(sock)

    @property
    def sock(self) -> socket.socket:
        return self.socks[0]


def raise_fd_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit: a proxy holds two fds (four with splice
    pipes) per connection, and the usual soft limit of 1024 is far too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Worker:
    def __init__(self, config: Config, inherited: dict[str, list[socket.socket]] | None = None) -> None:
        """`inherited`: listening sockets by listener name, from a keeper. The worker then binds
        nothing (the keeper owns the sockets and serves the admin socket and metrics listener)
        and never closes a listener for good: it only drops its own copies."""
        self.config = config
        self.inherited = inherited
        self.handlers: dict[str, Any] = {}  # listener name -> TcpProxy | HttpConnectionManager
        self.clusters = {c.name: Cluster(c) for c in config.clusters}
        self.pools = PoolManager()
        self.route_tables = _compile_route_tables(config)
        self.filter_chains = {lc.name: _build_chain(lc) for lc in config.listeners if lc.protocol != "tcp"}
        self.access_logs: dict[str, list[Any]] = {}
        self.http_managers: list[Any] = []
        self.tls_watches: list[Any] = []  # network.tls_watch.CertificateWatcher, one per TLS handler
        self.listeners: list[ListenerRuntime] = []
        self.state = "starting"
        self._stop_accepting = trio.Event()
        self._accept_scope: trio.CancelScope | None = None
        self._resume = trio.Event()
        self._connection_nursery: trio.Nursery | None = None
        self._root: trio.Nursery | None = None
        self.admin: Any = None  # AdminServer when config.admin.socket is set
        self.metrics: Any = None  # MetricsServer when config.admin.metrics is set
        self.started = time.monotonic()

    def bind_listeners(self) -> None:
        """Bind every listener up front so any failure is reported before serving starts."""
        if self.inherited is not None:
            for lc in self.config.listeners:
                socks = self.inherited.get(lc.name)
                if not socks:
                    raise BindError(f"listener {lc.name}: no socket from the keeper")
                lr = ListenerRuntime(lc, socks[0])
                lr.socks.extend(socks[1:])
                self.listeners.append(lr)
            return
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
            self._close_listeners()
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
            self._close_listeners()
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
        coalesce_sends()  # send_soon batches sends per scheduler pass (network/sockio.py)
        pipes_mod.POOL.configure(limit=self.config.runtime.splice_pipes)
        PARKING.open()  # before connections use up the fds (network/parking.py)
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
                self._connection_nursery = connection_nursery
                for lr in self.listeners:
                    self.handlers[lr.config.name] = self._handler_for(lr, connection_nursery)
                    for sock in lr.socks:
                        if sock.family != socket.AF_UNIX:
                            # Accepted sockets inherit it (Linux): no setsockopt per connection.
                            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    log.info("listener.started", listener=lr.config.name, address=lr.address, protocol=lr.config.protocol)
                first = True
                while not self._stop_accepting.is_set():
                    # The accept loops run in their own scope: a keeper pauses them during an
                    # upgrade's probation and resumes them if the new generation fails.
                    with trio.CancelScope() as self._accept_scope:
                        async with trio.open_nursery() as listener_nursery:
                            for lr in self.listeners:
                                handle = self.handlers[lr.config.name].handle
                                for sock in lr.socks:
                                    listener_nursery.start_soon(
                                        accept_loop, lr.config.name, sock, handle, connection_nursery, lr.stats, lr.config.max_connections
                                    )
                            if first:
                                first = False
                                self.state = "serving"
                                log.info("ready", pid=os.getpid(), listeners=len(self.listeners), build="compiled" if native.NATIVE else "python", epoll=edge_epoll.mode())
                                if native.STALE_BUILD:
                                    log.warning("native.build_stale", message="the compiled build does not match the sources; running the sources (slower): run scripts/build-native")
                                task_status.started(self)
                            await trio.sleep_forever()
                    if not self._stop_accepting.is_set():
                        await self._resume.wait()
                        self._resume = trio.Event()
                self._close_listeners()
                active = sum(lr.stats.downstream_cx_active for lr in self.listeners)
                log.info("draining", active_connections=active, drain_timeout=drain_timeout)
                connection_nursery.cancel_scope.deadline = trio.current_time() + drain_timeout
            if connection_nursery.cancel_scope.cancelled_caught:
                log.warning("drain.timeout", message="connections still open at drain_timeout were closed")
            self.state = "stopped"
            root.cancel_scope.cancel()

    def _close_listeners(self) -> None:
        for lr in self.listeners:
            for sock in lr.socks:
                if self.inherited is None:
                    close_listener(sock)
                else:
                    release(sock)  # the keeper's copy stays open (and its Unix socket file)

    def pause_accepting(self) -> None:
        """Stop the accept loops but keep the listening sockets open (upgrade probation)."""
        if self._accept_scope is not None:
            self._accept_scope.cancel()

    def resume_accepting(self) -> None:
        self._resume.set()

    def start_migration(self, migration: Any) -> None:
        """Hand live connections to the next generation as each reaches a safe point."""
        for handler in self.handlers.values():
            handler.start_migration(migration)

    def adopt(self, kind: str, listener: str, socks: list[socket.socket], state: dict[str, Any]) -> Callable[[], None] | None:
        """Take a connection handed over by the previous generation: returns the starter to call
        once ADOPTED is sent, or None if this worker has no such listener any more (the old
        worker then keeps the connection)."""
        handler = self.handlers.get(listener)
        nursery = self._connection_nursery
        if handler is None or nursery is None:
            return None
        protocol = next(lr for lr in self.listeners if lr.config.name == listener).config.protocol
        if (kind == "tcp") != (protocol == "tcp"):
            return None
        chooser = getattr(handler, "handler_for_state", None)
        if chooser is not None:  # filter chains: the chain the state names
            handler = chooser(state)
            if handler is None:
                return None
        elif state.get("chain") is not None:
            return None  # its chain is gone (the listener has none now): it finishes where it is
        if kind == "http1":
            return lambda: nursery.start_soon(handler.adopt, socks[0], state)
        if kind == "http2":
            serve = handler.adopt_http2(socks[0], state)
            return None if serve is None else lambda: nursery.start_soon(serve)
        if kind == "tunnel":
            return lambda: nursery.start_soon(handler.adopt_tunnel, socks[0], socks[1], state)
        return lambda: nursery.start_soon(handler.adopt, socks[0], socks[1], state)

    def certificate_errors(self) -> list[dict[str, Any]] | None:
        """Listeners whose changed TLS files could not be used (their old ones serve on);
        None when no listener has TLS."""
        watchers = self.tls_watches
        if not watchers:
            return None
        return [w.error for w in watchers if w.error is not None]

    def active_connections(self) -> int:
        return sum(lr.stats.downstream_cx_active for lr in self.listeners)

    def export_stats(self) -> dict[str, Any]:
        """Counters of every listener, cluster and host, to carry into the next generation."""
        return {
            "listeners": {lr.config.name: stats_mod.export(lr.stats) for lr in self.listeners},
            "clusters": {c.name: stats_mod.export(c.stats) for c in self.clusters.values()},
            "hosts": {f"{c.name}|{h.address}": stats_mod.export(h.stats) for c in self.clusters.values() for h in c.hosts},
        }

    def absorb_stats(self, data: dict[str, Any]) -> None:
        """Add the previous generation's counters (those it shares with this config)."""
        for lr in self.listeners:
            if lr.config.name in data.get("listeners", {}):
                stats_mod.absorb(lr.stats, data["listeners"][lr.config.name])
        for c in self.clusters.values():
            if c.name in data.get("clusters", {}):
                stats_mod.absorb(c.stats, data["clusters"][c.name])
            for h in c.hosts:
                key = f"{c.name}|{h.address}"
                if key in data.get("hosts", {}):
                    stats_mod.absorb(h.stats, data["hosts"][key])

    def _handler_for(self, lr: ListenerRuntime, connection_nursery: trio.Nursery) -> Any:
        lc = lr.config
        if not lc.filter_chains:
            return self._chain_handler(lr, lc, connection_nursery)
        # Filter chains: a handler per chain, from the listener's config with the chain's
        # fields applied, behind a dispatcher that picks one per connection.
        import msgspec

        from proxy.network.chain_dispatch import ChainDispatcher

        base = msgspec.structs.replace(lc, filter_chains=[])
        chains = []
        for name, chain in zip(lc.chain_names(), lc.filter_chains):
            # (a plaintext chain has no TLS to terminate: the listener's tls is not for it)
            tls = chain.tls or (lc.tls if chain.match.transport != "plaintext" else None)
            config = msgspec.structs.replace(base, cluster=chain.cluster or lc.cluster, route=chain.route or lc.route, tls=tls)
            handler = self._chain_handler(lr, config, connection_nursery, False)
            if lc.protocol != "tcp":
                handler.router.filter_chain = name  # (%filter_chain_name%)
            chains.append((name, handler))
        has_default = lc.cluster is not None if lc.protocol == "tcp" else lc.route is not None
        default = self._chain_handler(lr, base, connection_nursery, False) if has_default else None
        dispatcher = ChainDispatcher(lc, chains, default, lr.stats)
        if lc.protocol != "tcp":  # one watchdog task for all the chains (not a task each)
            from proxy.http.connection_manager import run_watchdogs

            assert self._root is not None
            self._root.start_soon(run_watchdogs, dispatcher.handlers())
        return dispatcher

    def _chain_handler(self, lr: ListenerRuntime, lc: Any, connection_nursery: trio.Nursery, watchdog: bool = True) -> Any:
        """The handler of a listener's connections (or of one of its filter chains')."""
        if lc.protocol == "tcp":
            proxy = TcpProxy(lc, self.clusters[lc.cluster], lr.stats, connection_nursery)
            self._watch_tls(proxy.tls_watch, lc.name)
            return proxy
        if lc.protocol != "tcp":  # http1, or a multiplexed codec (proxy.http.codecs)
            from proxy.http.access_log import AccessLogger
            from proxy.http.connection_manager import HttpConnectionManager

            logs = self.access_logs.get(lc.name)
            if logs is None:  # (one set per listener, shared by its chains)
                logs = self.access_logs[lc.name] = [AccessLogger(a.path, a.format) for a in lc.access_log]
            hcm = HttpConnectionManager(
                lc, self.route_tables[lc.route], self.clusters, self.pools, self.filter_chains[lc.name], logs, lr.stats, connection_nursery
            )
            if watchdog:
                assert self._root is not None
                self._root.start_soon(hcm.run_watchdog)
            self._watch_tls(hcm.tls_watch, lc.name)
            self.http_managers.append(hcm)
            return hcm
        raise ValueError(f"listener {lc.name}: unsupported protocol {lc.protocol}")

    def _watch_tls(self, watch: Any, name: str) -> None:
        """Run a handler's certificate watcher (rotation), if it has TLS."""
        if watch is not None:
            assert self._root is not None
            self._root.start_soon(watch.run, name=f"tls_watch:{name}")
            self.tls_watches.append(watch)

    def drain(self) -> None:
        """Stop accepting and let open connections finish (up to drain_timeout)."""
        if self.state == "serving":
            self.state = "draining"
        self._stop_accepting.set()
        self._resume.set()
        if self._accept_scope is not None:
            self._accept_scope.cancel()
        # (the same deadline _serve sets on the connection nursery, give or take a checkpoint)
        deadline = trio.current_time() + float(self.config.runtime.drain_timeout)
        for hcm in self.http_managers:
            hcm.drain(deadline)

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
