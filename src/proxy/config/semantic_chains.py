"""Checks of listeners' filter chains (proxy.network.filter_chains matches them): names unique,
server names well formed, no two chains with the same match, fields that fit the listener's
protocol, and references that exist. Their `tls` is checked with the listener's (semantic.py).
"""

from __future__ import annotations

import re
from typing import Any

from proxy.config.errors import Issues, PathTuple, format_path

# A DNS name as SNI carries it (RFC 6066: no trailing dot; we compare in lower case).
_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_NAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")


def check_chains(listeners: list[tuple[int, dict[str, Any]]], clusters: list[str], routes: Any, issues: Issues) -> None:
    tables = [k for k in routes if isinstance(k, str)] if isinstance(routes, dict) else []
    for index, listener in listeners:
        chains = listener.get("filter_chains")
        if not isinstance(chains, list):
            continue
        tcp = listener.get("protocol") == "tcp"
        base: PathTuple = ("listeners", index, "filter_chains")
        names: dict[str, PathTuple] = {}
        seen: dict[tuple[str, str, str], PathTuple] = {}
        for j, chain in enumerate(chains):
            if not isinstance(chain, dict):
                continue
            path = base + (j,)
            name = chain.get("name", f"chain{j}")
            if isinstance(name, str):
                if name in names:
                    issues.add(path + ("name",), f"duplicate filter chain name {name!r} (first at {format_path(names[name])})")
                else:
                    names[name] = path + ("name",)
            _fields(path, chain, listener, tcp, clusters, tables, issues)
            match = chain.get("match", {})
            if isinstance(match, dict):
                takes_tls = match.get("transport") == "tls" or bool(match.get("server_names")) or bool(match.get("alpn"))
                if not tcp and takes_tls and chain.get("tls") is None and listener.get("tls") is None:
                    issues.add(path, "this chain of an HTTP listener matches TLS connections: it needs a 'tls' (or the listener's) to terminate them")
                if match.get("transport") == "plaintext" and chain.get("tls") is not None:
                    issues.add(path + ("tls",), "this chain matches plaintext connections only: it has no TLS to terminate")
                for key in _match(path + ("match",), match, issues):
                    if key in seen:
                        issues.add(path + ("match",), f"the same match as {format_path(seen[key])} ({_describe(key)}): one of them could never be used")
                        break
                    seen[key] = path


def _fields(path: PathTuple, chain: dict[str, Any], listener: dict[str, Any], tcp: bool, clusters: list[str], tables: list[str], issues: Issues) -> None:
    """A chain names what its listener's protocol uses (or inherits it), and it exists."""
    wrong, right = ("route", "cluster") if tcp else ("cluster", "route")
    if chain.get(wrong) is not None:
        kind = "a tcp" if tcp else "an HTTP"
        issues.add(path + (wrong,), f"a filter chain of {kind} listener names a '{right}', not a '{wrong}'")
    value = chain.get(right)
    if value is None and listener.get(right) is None:
        issues.add(path, f"this filter chain needs a '{right}' (the listener names none to inherit)")
    defined = clusters if tcp else tables
    if isinstance(value, str) and value not in defined:
        kind = "cluster" if tcp else "route table"
        known = f"defined {kind}s: {', '.join(defined)}" if defined else f"no {kind}s are defined"
        issues.add(path + (right,), f"unknown {kind} {value!r}; {known}")


def _match(path: PathTuple, match: dict[str, Any], issues: Issues) -> list[tuple[str, str, str]]:
    """Check one match; return what it matches as (server name, transport, alpn) triples
    ("" for any), the unit two chains may not share (Envoy's rule)."""
    names = match.get("server_names", [])
    alpn = match.get("alpn", [])
    transport = match.get("transport")
    if not isinstance(names, list) or not isinstance(alpn, list) or not (transport is None or isinstance(transport, str)):
        return []  # the structural check reports it
    clean: list[str] = []
    for k, raw in enumerate(names):
        if not isinstance(raw, str):
            continue
        name = raw.lower().rstrip(".")
        bare = name[2:] if name.startswith("*.") else name
        if not _NAME.match(bare):
            hint = " (a wildcard is '*.' and a name, e.g. '*.example.com')" if "*" in name else ""
            issues.add(path + ("server_names", k), f"{raw!r} is not a server name{hint}")
            continue
        if name in clean:
            issues.add(path + ("server_names", k), f"{raw!r} is listed twice")
            continue
        clean.append(name)
    protocols = [p for p in alpn if isinstance(p, str)]
    for k, proto in enumerate(alpn):
        if isinstance(proto, str) and not 0 < len(proto.encode()) < 256:
            issues.add(path + ("alpn", k), "an ALPN protocol is 1 to 255 bytes")
    if transport == "plaintext" and (clean or protocols):
        issues.add(path, "a plaintext connection has no server name or ALPN: this match could never be met")
        return []
    return [(n, transport or "", p) for n in clean or [""] for p in dict.fromkeys(protocols) or [""]]


def _describe(key: tuple[str, str, str]) -> str:
    name, transport, alpn = key
    parts = [f"server name {name}" if name else "any server name", f"transport {transport}" if transport else "any transport"]
    parts.append(f"ALPN {alpn}" if alpn else "any ALPN")
    return ", ".join(parts)
