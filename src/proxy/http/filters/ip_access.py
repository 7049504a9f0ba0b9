"""Allow or deny requests by client IP (CIDR lists, IPv4 and IPv6).

    filters:
      - type: ip_access
        config:
          allow: [10.0.0.0/8, "2001:db8::/32", 192.0.2.7]   # a bare address means /32 or /128
          deny: [10.1.0.0/16]
          deny_unix: false

Rules: a client in `deny` is refused (deny wins over allow); when `allow` is given, a client
not in it is refused; otherwise it is let through. IPv4-mapped IPv6 clients (::ffff:10.0.0.1,
seen on dual-stack sockets) are matched as their IPv4 address. Clients on a Unix socket
(downstream address "unix" or "unix:...") have no IP: they are allowed unless `deny_unix: true`.
An address that cannot be parsed is refused. A refusal is a local 403 flagged UAEX.

Networks are grouped by prefix length, so a lookup costs one set probe per distinct prefix
length, and decisions are cached per client address (bounded).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from proxy.http.filter import LocalReply, Stream, StreamFilter
from proxy.http.filters import check_mapping, get_bool, get_str_list
from proxy.http.stream_info import UNAUTHORIZED

CACHE_SIZE = 4096

_Table = tuple[tuple[int, frozenset[int]], ...]  # (shift, network prefixes) per prefix length


def _parse_networks(values: list[str], key: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    networks = []
    for index, text in enumerate(values):
        try:
            networks.append(ipaddress.ip_network(text.strip(), strict=True))
        except ValueError as exc:
            hint = ""
            if "host bits set" in str(exc):
                hint = f" (did you mean {ipaddress.ip_network(text.strip(), strict=False)}?)"
            raise ValueError(f"{key}[{index}]: invalid CIDR {text!r}: {exc}{hint}") from None
    return networks


def _table(networks: list[Any], version: int) -> _Table:
    bits = 32 if version == 4 else 128
    by_length: dict[int, set[int]] = {}
    for net in networks:
        if net.version == version:
            shift = bits - net.prefixlen
            by_length.setdefault(shift, set()).add(int(net.network_address) >> shift)
    # Widest networks first: they are the likeliest to match.
    return tuple((shift, frozenset(prefixes)) for shift, prefixes in sorted(by_length.items(), reverse=True))


def _match(table: _Table, ip: int) -> bool:
    for shift, prefixes in table:
        if ip >> shift in prefixes:
            return True
    return False


class IpAccessFilter(StreamFilter):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        check_mapping(config, "", ("allow", "deny", "deny_unix"))
        allow = get_str_list(config, "allow")
        deny = get_str_list(config, "deny")
        self.deny_unix = get_bool(config, "deny_unix", False)
        if allow is None and deny is None and not self.deny_unix:
            raise ValueError("give 'allow' and/or 'deny' (lists of CIDRs), or 'deny_unix: true'")
        allow_nets = _parse_networks(allow, "allow") if allow is not None else []
        deny_nets = _parse_networks(deny, "deny") if deny is not None else []
        # allow: [] is valid and denies every IP client (only unix peers may pass).
        self.has_allow = allow is not None
        self.allow4, self.allow6 = _table(allow_nets, 4), _table(allow_nets, 6)
        self.deny4, self.deny6 = _table(deny_nets, 4), _table(deny_nets, 6)
        self._cache: dict[str, bool] = {}

    def allowed(self, address: str) -> bool:
        """Whether a client at `address` (an IP string, or "unix...") may pass."""
        decision = self._cache.get(address)
        if decision is None:
            decision = self._decide(address)
            cache = self._cache
            if len(cache) >= CACHE_SIZE:
                del cache[next(iter(cache))]  # drop the oldest entry
            cache[address] = decision
        return decision

    def _decide(self, address: str) -> bool:
        if address == "unix" or address.startswith("unix:"):
            return not self.deny_unix
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False  # fail closed
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        value = int(ip)
        if ip.version == 4:
            deny, allow = self.deny4, self.allow4
        else:
            deny, allow = self.deny6, self.allow6
        if _match(deny, value):
            return False
        if self.has_allow:
            return _match(allow, value)
        return True

    async def on_request(self, stream: Stream) -> LocalReply | None:
        if self.allowed(stream.downstream_address):
            return None
        return LocalReply(403, "forbidden", flag=UNAUTHORIZED)
