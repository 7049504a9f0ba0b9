"""Which filter chain serves a connection, from what its first bytes said (sans-IO).

Envoy's filter_chain_match, narrowed to what a ClientHello tells: the server name first
(chains naming it exactly, else the chains of the longest wildcard that covers it, else the
chains that name no server), then the transport (chains naming it, else those that name
none), then ALPN (the first protocol the client offers that a chain lists, else the chains
that list none). As in Envoy, a step never goes back: a name matched exactly whose chains
all want another transport is no match, even if a wildcard chain would have fit. No match
means the listener's own default chain (or a closed connection, without one).

`*.example.com` covers every name under example.com (`a.example.com`, `a.b.example.com`),
not `example.com` itself; the longest covering wildcard wins. The config check
(proxy.config.semantic_chains) has made sure no two chains share a match.
"""

from __future__ import annotations

from collections.abc import Sequence

TLS = "tls"
PLAINTEXT = "plaintext"


class ChainMatcher:
    __slots__ = ("exact", "wildcard", "unnamed", "transports", "alpns", "needs_inspection")

    def __init__(self, matches: Sequence[tuple[Sequence[str], Sequence[str], str | None]]) -> None:
        """`matches`: per chain, in order, its (server_names, alpn, transport)."""
        self.exact: dict[str, list[int]] = {}
        self.wildcard: dict[str, list[int]] = {}  # the covered domain ("example.com") -> chains
        self.unnamed: list[int] = []
        self.transports: list[str | None] = []
        self.alpns: list[frozenset[str]] = []
        for index, (names, alpn, transport) in enumerate(matches):
            for name in names:
                name = name.lower().rstrip(".")
                if name.startswith("*."):
                    self.wildcard.setdefault(name[2:], []).append(index)
                else:
                    self.exact.setdefault(name, []).append(index)
            if not names:
                self.unnamed.append(index)
            self.transports.append(transport)
            self.alpns.append(frozenset(alpn))
        # A chain that matches on nothing takes every connection: nothing to read first.
        self.needs_inspection = any(names or alpn or transport for names, alpn, transport in matches)

    def match(self, server_name: str | None, transport: str, alpn: Sequence[str]) -> int | None:
        """The index of the chain for a connection, or None."""
        candidates = self._by_name(server_name)
        if not candidates:
            return None
        transports = self.transports
        narrowed = [i for i in candidates if transports[i] == transport]
        if not narrowed:
            narrowed = [i for i in candidates if transports[i] is None]
            if not narrowed:
                return None
        alpns = self.alpns
        for proto in alpn:  # the client's order of preference
            for i in narrowed:
                if proto in alpns[i]:
                    return i
        for i in narrowed:
            if not alpns[i]:
                return i
        return None

    def _by_name(self, server_name: str | None) -> list[int]:
        if server_name:
            chains = self.exact.get(server_name)
            if chains:
                return chains
            if self.wildcard:
                dot = server_name.find(".")
                while dot >= 0:  # a.b.example.com: b.example.com, then example.com, then com
                    chains = self.wildcard.get(server_name[dot + 1 :])
                    if chains:
                        return chains
                    dot = server_name.find(".", dot + 1)
        return self.unnamed
