"""The L4 TCP proxy: the terminal handler of a `protocol: tcp` listener.

For each downstream connection: pick a host of the cluster (its balancer), connect with the
cluster's connect timeout, and on failure move on to the next host, up to
`max_connect_attempts`; when every attempt fails the downstream is closed. Then relay bytes
both ways (`relay.Relay`) until both directions end.

TLS: with `tls` (the listener's or its filter chain's), the client's TLS is terminated first
(network/tls_io.accept_tls) and the plaintext copied to and from the upstream (the bytes must
be opened and sealed: no splice). Such a connection cannot move in a hot upgrade (OpenSSL
holds its state): it goes on in the old generation until it ends or the drain_timeout. Without
`tls`, TLS passes through untouched (a filter chain picked by SNI, network/chain_dispatch).

Hot upgrade: `start_migration` stops every live relay at a safe point and hands it (both
sockets, kind "tcp") to the next generation, whose `adopt` carries on relaying; a relay whose
handover is refused resumes here. A connection that finishes connecting upstream during a
migration is handed over before it relays anything.
"""

from __future__ import annotations

import socket
from typing import Any

import trio

from proxy.config.model import Listener as ListenerConfig
from proxy.log import get_logger
from proxy.network import relay as relay_mod
from proxy.network import fds
from proxy.network.connect import ConnectFailed, connect
from proxy.network.fds import OutOfDescriptors
from proxy.network.sockio import SockIO
from proxy.network.tls_io import TlsError, TlsHandshakeFailed, connect_tls
from proxy.network.tls_relay import TlsRelay
from proxy.stats import ListenerStats
from proxy.upgrade import migration as migration_mod
from proxy.upstream.cluster import Cluster
from proxy.upstream.connect_log import connect_failed
from proxy.upstream.host import Host

log = get_logger("tcp_proxy")


class TcpProxy:
    """Connection handler for one tcp listener."""

    def __init__(
        self,
        config: ListenerConfig,
        cluster: Cluster,
        stats: ListenerStats,
        connection_nursery: trio.Nursery,
    ) -> None:
        self.name = config.name
        self.cluster = cluster
        self.stats = stats
        self.nursery = connection_nursery
        self.idle_timeout = float(config.idle_timeout) if config.idle_timeout is not None else None
        self.max_connect_attempts = config.max_connect_attempts
        self.splice = config.relay != "copy" and relay_mod.HAVE_SPLICE
        self.tcp = not config.address.is_unix
        self.migration: migration_mod.Migration = migration_mod.NO_MIGRATION
        # live relays, for a migration (a TlsRelay declines to move: it drains here)
        self.relays: dict[Any, Host | None] = {}
        self.tls_side: Any = None  # network.tls_accept.ListenerTlsSide: handshakes, rotation
        self.tls_watch: Any = None
        if config.tls is not None:
            from proxy.network.tls_accept import ListenerTlsSide  # (pyOpenSSL only where a listener has TLS)

            self.tls_side = ListenerTlsSide(config, stats, self.name)
            self.tls_watch = self.tls_side.watch
            self.handle = self._handle_tls  # type: ignore[method-assign]

    async def serve(self, down: socket.socket, peer: Any, first: bytes) -> None:
        """A connection a filter chain dispatcher inspected (and counted): `first`, the bytes
        it read, are served first."""
        await self.handle(down, peer, first, True)

    async def handle(self, down: socket.socket, peer: Any, first: bytes = b"", counted: bool = False) -> None:
        """Entry point per accepted connection. Never raises: a failing connection is counted and
        logged, and must not take the listener down. `first`: bytes read already (by the TLS
        inspector), relayed upstream first; `counted`: in downstream_cx_total already."""
        stats = self.stats
        if not counted:
            stats.downstream_cx_total += 1
        stats.downstream_cx_active += 1
        if first:
            stats.downstream_rx_bytes_total += len(first)  # (read by the inspector, not the relay)
        owned_by_relay = False
        try:
            if self.tcp:
                relay_mod.tune_tcp_socket(down, self.splice)
            up, host, tls, early = await self._connect_upstream(peer)
            if up is None:
                stats.downstream_cx_no_upstream += 1
                return
            relay: Any
            if tls is not None:  # TLS to the host: copied, sealed and opened here
                relay = TlsRelay(SockIO(down), tls, idle_timeout=self.idle_timeout, on_close=self._relay_closed(host), pending=(first, early))
            else:
                relay = relay_mod.Relay(
                    down,
                    up,
                    splice=self.splice,
                    idle_timeout=self.idle_timeout,
                    on_close=self._relay_closed(host),
                    stats=stats,
                    pending=(first, b""),
                )
            owned_by_relay = True
            self.relays[relay] = host
            if self.migration.active:
                relay.stop(self._handover(host))  # connected during a migration: hand over at once
            await relay.run(self.nursery)
        except OutOfDescriptors:
            # No fd came within the connect timeout (network/fds.py); nothing was dialled.
            stats.downstream_cx_fd_exhausted += 1
            fds.drop_unread(down)  # closed below with a FIN
        except trio.Cancelled:
            raise
        except Exception as exc:
            stats.downstream_cx_error += 1
            log.error("connection.failed", listener=self.name, peer=_peer(peer), error=repr(exc), exc_info=exc)
        finally:
            if not owned_by_relay:
                trio.lowlevel.notify_closing(down)
                down.close()
                stats.downstream_cx_active -= 1
                stats.downstream_cx_destroy += 1

    async def _handle_tls(self, down: socket.socket, peer: Any, first: bytes = b"", counted: bool = False) -> None:
        """`handle` for a listener (or chain) that terminates TLS: the handshake, then the
        plaintext copied both ways (a TlsRelay, which declines a hot upgrade: it drains)."""
        stats = self.stats
        if not counted:
            stats.downstream_cx_total += 1
        stats.downstream_cx_active += 1
        io: Any = None
        owned_by_relay = False
        try:
            if self.tcp:
                relay_mod.tune_tcp_socket(down, False)
            done = await self.tls_side.handshake(down, first)
            if done is None:
                return  # (counted)
            io, early = done
            up, host, up_tls, up_early = await self._connect_upstream(peer)
            if up is None:
                stats.downstream_cx_no_upstream += 1
                return
            relay = TlsRelay(
                io,
                up_tls if up_tls is not None else SockIO(up),
                idle_timeout=self.idle_timeout,
                on_close=self._relay_closed(host),
                pending=(early, up_early),
            )
            owned_by_relay = True
            self.relays[relay] = host
            await relay.run(self.nursery)
        except OutOfDescriptors:
            stats.downstream_cx_fd_exhausted += 1
            fds.drop_unread(down)
        except trio.Cancelled:
            raise
        except Exception as exc:
            stats.downstream_cx_error += 1
            log.error("connection.failed", listener=self.name, peer=_peer(peer), error=repr(exc), exc_info=exc)
        finally:
            if not owned_by_relay:
                if io is not None:
                    stats.downstream_rx_bytes_total += io.bytes_received
                    stats.downstream_tx_bytes_total += io.bytes_sent
                    io.close()  # (close_notify first, when nothing is left unsent)
                else:
                    trio.lowlevel.notify_closing(down)
                    down.close()
                stats.downstream_cx_active -= 1
                stats.downstream_cx_destroy += 1

    # ------------------------------------------------------------------ hot upgrade

    def start_migration(self, migration: migration_mod.Migration) -> None:
        """Hand every live connection over to the next generation (each at its next safe
        point); connections that connect upstream from now on are handed over right away."""
        self.migration = migration
        for relay, host in list(self.relays.items()):
            relay.stop(self._handover(host))

    def _handover(self, host: Host | None) -> relay_mod.Handover:
        migration = self.migration
        name = self.name
        address = str(host.address) if host is not None else None

        async def hand_over(relay: relay_mod.Relay) -> bool:
            state = {"host": address, **relay.migration_state()}
            return await migration.hand_over("tcp", name, [relay.down, relay.up], state)

        return hand_over

    async def adopt(self, down: socket.socket, up: socket.socket, state: dict[str, Any]) -> None:
        """The new generation's side: relay a connection the previous one handed over (kind
        "tcp"), its carried bytes first. Never raises, like `handle`."""
        stats = self.stats
        try:
            carried = relay_mod.carried(state)
            address = state.get("host")
            for sock in (down, up):
                sock.setblocking(False)
                if sock.family != socket.AF_UNIX:
                    relay_mod.tune_tcp_socket(sock, self.splice)
        except (KeyError, TypeError, ValueError, OSError) as exc:  # a bad state, or a dead socket
            stats.downstream_cx_error += 1
            log.error("connection.adopt_failed", listener=self.name, error=repr(exc), exc_info=exc)
            for sock in (down, up):
                trio.lowlevel.notify_closing(sock)
                sock.close()
            return
        stats.downstream_cx_active += 1
        stats.downstream_cx_migrated_in += 1
        self.cluster.stats.upstream_cx_active += 1
        host = next((h for h in self.cluster.hosts if str(h.address) == address), None)
        if host is not None:
            host.stats.cx_active += 1
        relay = relay_mod.Relay(
            down, up, splice=self.splice, idle_timeout=self.idle_timeout, on_close=self._relay_closed(host), stats=stats, **carried
        )
        self.relays[relay] = host
        if self.migration.active:
            relay.stop(self._handover(host))
        await relay.run(self.nursery)

    async def _connect_upstream(self, peer: Any) -> tuple[socket.socket | None, Host | None, Any, bytes]:
        """A connected socket to a host (the next on failure), its TlsIO when the cluster has
        TLS (a failed handshake is a failed connect), and the plaintext that came with it."""
        cluster = self.cluster
        cstats = cluster.stats
        tried: list[Host] = []
        for _ in range(self.max_connect_attempts):
            host = cluster.balancer.choose(tried) or cluster.balancer.choose()
            if host is None:
                log.warning("upstream.no_host", listener=self.name, cluster=cluster.name)
                return None, None, None, b""
            tried.append(host)
            cstats.upstream_cx_total += 1
            host.stats.cx_total += 1
            deadline = trio.current_time() + cluster.connect_timeout
            try:
                sock = await connect(host, cluster.connect_timeout, self.splice and cluster.tls is None)
            except OutOfDescriptors:
                cstats.upstream_cx_total -= 1  # no connection was begun after all
                host.stats.cx_total -= 1
                raise
            except ConnectFailed as exc:
                host.stats.cx_connect_fail += 1
                if exc.reason == "timeout":
                    cstats.upstream_cx_connect_timeout += 1
                else:
                    cstats.upstream_cx_connect_fail += 1
                connect_failed(host, cluster.name, exc.reason, trio.current_time(), listener=self.name)
                continue
            tls: Any = None
            early = b""
            if cluster.tls is not None:
                try:
                    tls = await connect_tls(sock, cluster.tls, host, None, deadline)
                    early = tls.tls.read()  # what came behind the handshake (a server that speaks first)
                except TlsError as broken:
                    trio.lowlevel.notify_closing(sock)
                    sock.close()
                    host.stats.cx_connect_fail += 1
                    cstats.upstream_cx_connect_fail += 1
                    connect_failed(host, cluster.name, f"TLS: {broken}", trio.current_time(), listener=self.name)
                    continue
                except TlsHandshakeFailed as failed:
                    trio.lowlevel.notify_closing(sock)
                    sock.close()
                    host.stats.cx_connect_fail += 1
                    cstats.upstream_cx_connect_fail += 1
                    connect_failed(host, cluster.name, failed.reason, trio.current_time(), listener=self.name)
                    continue
                except BaseException:
                    trio.lowlevel.notify_closing(sock)
                    sock.close()
                    raise
            cstats.upstream_cx_active += 1
            host.stats.cx_active += 1
            return sock, host, tls, early
        cstats.upstream_cx_connect_attempts_exceeded += 1
        log.warning("upstream.all_attempts_failed", listener=self.name, cluster=cluster.name, peer=_peer(peer), attempts=len(tried))
        return None, None, None, b""

    def _relay_closed(self, host: Host | None) -> Any:
        stats = self.stats
        cstats = self.cluster.stats
        relays = self.relays

        def closed(relay: Any) -> None:  # a Relay or a TlsRelay
            relays.pop(relay, None)
            relay_mod.count_downstream_close(stats, relay)
            cstats.upstream_cx_active -= 1
            if host is not None:
                host.stats.cx_active -= 1
            if relay.outcome == relay_mod.IDLE_TIMEOUT:
                stats.downstream_cx_idle_timeout += 1
            elif relay.outcome == relay_mod.RESET:
                stats.downstream_cx_reset += 1
            elif relay.outcome == relay_mod.ERROR:
                stats.downstream_cx_error += 1
                log.error("relay.failed", listener=self.name, error=repr(relay.error), exc_info=relay.error)
            if log.is_debug():
                log.debug("connection.closed", listener=self.name, outcome=relay.outcome, rx=relay.rx_bytes, tx=relay.tx_bytes)

        return closed


def _peer(peer: Any) -> str:
    if isinstance(peer, tuple):
        return f"{peer[0]}:{peer[1]}"
    return str(peer) or "unix"
