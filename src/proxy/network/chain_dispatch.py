"""The connection handler of a listener with filter chains: inspect, match, hand over.

    accept ─► ChainDispatcher.handle ─► tls_inspector.inspect (the first bytes: a ClientHello,
              or plaintext) ─► ChainMatcher.match ─► that chain's handler (a TcpProxy or an
              HttpConnectionManager built from the listener with the chain's fields), given
              the bytes the inspector read, to serve first

Each chain has a handler of its own, so everything a chain changes (cluster, route table,
certificates) is fixed when the config is built, and a chain's connections are served exactly
as a listener's would be: passthrough relays and plaintext HTTP connections move in a hot
upgrade as usual. Their handovers name the chain (`ChainMigration` adds it to the state), so
the next generation adopts each into the chain of that name; a chain that is gone refuses
them, and they finish in the old generation (Envoy drains the connections of a removed chain).
"""

from __future__ import annotations

import socket
from typing import Any

import trio

from proxy.log import get_logger
from proxy.network import tls_inspector
from proxy.network.filter_chains import PLAINTEXT, TLS, ChainMatcher
from proxy.upgrade import migration as migration_mod

log = get_logger("filter_chains")


class ChainMigration:
    """A migration as one chain's handler sees it: the same, with the chain's name in every
    handover's state."""

    __slots__ = ("inner", "chain")

    def __init__(self, inner: migration_mod.Migration, chain: str) -> None:
        self.inner = inner
        self.chain = chain

    @property
    def active(self) -> bool:
        return self.inner.active

    async def hand_over(self, kind: str, listener: str, socks: list[socket.socket], state: dict[str, Any]) -> bool:
        state["chain"] = self.chain
        return await self.inner.hand_over(kind, listener, socks, state)


class ChainDispatcher:
    def __init__(self, config: Any, chains: list[tuple[str, Any]], default: Any, stats: Any) -> None:
        """`chains`: (name, handler) in the config's order; `default`: the handler of the
        listener's own fields, or None. Handlers take `serve(sock, peer, first)`."""
        self.name = config.name
        self.stats = stats
        self.timeout = float(config.inspect_timeout)
        self.matcher = ChainMatcher([(c.match.server_names, c.match.alpn, c.match.transport) for c in config.filter_chains])
        self.chains = chains
        self.by_name = dict(chains)
        self.default = default

    def handlers(self) -> list[Any]:
        return [h for _, h in self.chains] + ([self.default] if self.default is not None else [])

    async def handle(self, sock: socket.socket, peer: Any) -> None:
        """Entry point per accepted connection. Never raises."""
        stats = self.stats
        stats.downstream_cx_total += 1
        stats.downstream_cx_active += 1
        handed = False
        try:
            handler = self.default
            first = b""
            if not self.matcher.needs_inspection:
                handler = self.chains[0][1]
            else:
                inspection = await tls_inspector.inspect(sock, self.timeout)
                first = inspection.data
                index = self._match(inspection)
                if index is None and inspection.outcome not in (tls_inspector.TLS, tls_inspector.PLAINTEXT):
                    return  # timed out, closed, or a ClientHello we cannot read: counted
                if index is not None:
                    handler = self.chains[index][1]
            if handler is None:
                stats.no_filter_chain_match += 1
                if log.is_debug():
                    log.debug("connection.no_filter_chain_match", listener=self.name)
                return
            stats.downstream_cx_active -= 1  # (the chain's handler counts it from here)
            handed = True
            await handler.serve(sock, peer, first)
        except trio.Cancelled:
            raise
        except Exception as exc:  # a bug of ours: it ends this connection, not the listener
            stats.downstream_cx_error += 1
            log.error("connection.failed", listener=self.name, error=repr(exc), exc_info=exc)
        finally:
            if not handed:
                stats.downstream_cx_active -= 1
                stats.downstream_cx_destroy += 1
                trio.lowlevel.notify_closing(sock)
                sock.close()

    def _match(self, inspection: tls_inspector.Inspection) -> int | None:
        """Count what the inspector found (Envoy's tls_inspector stats) and match a chain."""
        stats = self.stats
        outcome = inspection.outcome
        if outcome == tls_inspector.TLS:
            hello = inspection.hello
            assert hello is not None
            stats.tls_inspector_tls_found += 1
            if hello.server_name:
                stats.tls_inspector_sni_found += 1
            else:
                stats.tls_inspector_sni_not_found += 1
            if hello.alpn:
                stats.tls_inspector_alpn_found += 1
            else:
                stats.tls_inspector_alpn_not_found += 1
            return self.matcher.match(hello.server_name, TLS, hello.alpn)
        if outcome == tls_inspector.PLAINTEXT:
            stats.tls_inspector_tls_not_found += 1
            return self.matcher.match(None, PLAINTEXT, ())
        if outcome == tls_inspector.TIMEOUT:
            stats.downstream_pre_cx_timeout += 1
        elif outcome == tls_inspector.BAD:
            stats.tls_inspector_client_hello_bad += 1
            log.debug("tls_inspector.bad_client_hello", listener=self.name, reason=inspection.error)
        return None

    # ------------------------------------------------------------------ hot upgrade

    def start_migration(self, migration: migration_mod.Migration) -> None:
        for name, handler in self.chains:
            handler.start_migration(ChainMigration(migration, name))
        if self.default is not None:
            handler = self.default
            handler.start_migration(migration)

    def handler_for_state(self, state: dict[str, Any]) -> Any:
        """The handler that adopts a connection handed over with `state`: its chain's, the
        default's if it names none; None (refused) if that chain is gone."""
        chain = state.get("chain")
        if chain is None:
            return self.default
        return self.by_name.get(chain)
