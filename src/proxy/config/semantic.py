"""Checks across the config tree: unique names, cluster references, address clashes (listening
addresses that cannot all be bound).

They run on the raw parsed data, also when the structural check found errors, so one run shows
everything; every check looks only at the parts that have the right shape and skips the rest
(their structural errors are already reported).
"""

from __future__ import annotations

import difflib
import ipaddress
import socket
from typing import Any

from proxy.config.semantic_chains import check_chains
from proxy.config.semantic_routes import check_routes
from proxy.config.errors import Issues, PathTuple, format_path
from proxy.config.values import Address, Duration
from proxy.http import codecs


def check(raw: Any, issues: Issues) -> None:
    """Report every semantic problem in `raw` (the parsed, not yet converted, config)."""
    if not isinstance(raw, dict):
        return
    listeners = _items(raw.get("listeners"))
    clusters = _items(raw.get("clusters"))
    _unique_names(listeners, ("listeners",), "listener", issues)
    cluster_names = _unique_names(clusters, ("clusters",), "cluster", issues)
    _listener_clusters(listeners, cluster_names, issues)
    _listener_addresses(listeners, raw.get("admin"), issues)
    _listener_tls(listeners, issues)
    _listener_xfcc(listeners, issues)
    check_chains(listeners, cluster_names, raw.get("routes"), issues)
    _host_addresses(clusters, issues)
    _cluster_http2(clusters, issues)
    _cluster_tls(clusters, issues)
    _admin(raw.get("admin"), issues)
    check_routes(raw, issues)


def _listener_tls(listeners: list[tuple[int, dict[str, Any]]], issues: Issues) -> None:
    """Every certificate loads, its key is its own, and TLS sits on a protocol that has it
    (the listener's `tls`, and its filter chains')."""
    with_tls: list[tuple[PathTuple, dict[str, Any], dict[str, Any]]] = []
    for index, listener in listeners:
        if isinstance(listener.get("tls"), dict):
            with_tls.append((("listeners", index, "tls"), listener, listener["tls"]))
        for j, chain in _items(listener.get("filter_chains")):
            if isinstance(chain.get("tls"), dict):
                with_tls.append((("listeners", index, "filter_chains", j, "tls"), listener, chain["tls"]))
    if not with_tls:
        return  # (and pyOpenSSL, ~10 MB of RSS, stays unimported)
    from OpenSSL import SSL

    from proxy.network.tls import TlsConfigError, load_certificate

    for base, listener, tls in with_tls:
        protocol = listener.get("protocol")
        if protocol not in ("tcp", "http1", "http2", "http"):
            issues.add(base, f"TLS termination is for tcp, http1, http2 and http listeners, not {protocol!r}")
        certificates = _items(tls.get("certificates"))
        on_demand = tls.get("on_demand")
        if not certificates and not isinstance(on_demand, dict):
            issues.add(base + ("certificates",), "give at least one certificate (or on_demand)")
        if isinstance(on_demand, dict):
            _tls_on_demand(base + ("on_demand",), on_demand, issues)
        for j, cert in certificates:
            if not isinstance(cert.get("cert"), str) or not isinstance(cert.get("key"), str):
                continue  # the structural check reports it
            names = cert.get("server_names")
            try:
                load_certificate(cert["cert"], cert["key"], names if isinstance(names, list) else None)
            except TlsConfigError as exc:
                issues.add(base + ("certificates", j), str(exc))
        for key, setter in (("ciphers", "set_cipher_list"), ("ciphersuites", "set_tls13_ciphersuites")):
            value = tls.get(key)
            if isinstance(value, str):
                try:
                    getattr(SSL.Context(SSL.TLS_SERVER_METHOD), setter)(value.encode())
                except (SSL.Error, ValueError):
                    issues.add(base + (key,), f"OpenSSL takes none of {value!r}")
        groups = tls.get("groups")
        if isinstance(groups, list) and groups and all(isinstance(g, str) for g in groups):
            from proxy.network.tls import set_groups

            try:
                set_groups(SSL.Context(SSL.TLS_SERVER_METHOD), groups)
            except ValueError as exc:
                issues.add(base + ("groups",), str(exc))
        lo, hi = tls.get("min_version", "1.2"), tls.get("max_version", "1.3")
        if lo == "1.3" and hi == "1.2":
            issues.add(base, "min_version 1.3 is above max_version 1.2")
        _client_certificates(base, tls, issues)


def _client_certificates(base: PathTuple, tls: dict[str, Any], issues: Issues) -> None:
    """client_ca goes with client_certificate request or require, and loads."""
    from proxy.network.tls import TlsConfigError, load_client_ca

    mode = tls.get("client_certificate", "none")
    ca = tls.get("client_ca")
    if mode in ("request", "require"):
        if ca is None:
            issues.add(base + ("client_ca",), f"client_certificate: {mode} needs client_ca (a PEM bundle of the CAs client certificates chain to)")
        elif isinstance(ca, str):
            try:
                load_client_ca(ca)
            except TlsConfigError as exc:
                issues.add(base + ("client_ca",), str(exc))
    elif mode == "none":
        for key in ("client_ca", "verify_depth"):
            if tls.get(key) is not None:
                issues.add(base + (key,), f"{key} applies only with client_certificate: request or require")


def _listener_xfcc(listeners: list[tuple[int, dict[str, Any]]], issues: Issues) -> None:
    """Envoy's rule: set_current_client_cert_details only where the proxy sets an XFCC."""
    for index, listener in listeners:
        http = listener.get("http")
        if not isinstance(http, dict) or not isinstance(http.get("set_current_client_cert_details"), dict):
            continue
        mode = http.get("forward_client_cert_details", "sanitize")
        if any(v is True for v in http["set_current_client_cert_details"].values()) and mode not in ("append_forward", "sanitize_set"):
            issues.add(
                ("listeners", index, "http", "set_current_client_cert_details"),
                f"applies only with forward_client_cert_details append_forward or sanitize_set, not {mode!r}",
            )


def _tls_on_demand(path: tuple[Any, ...], on_demand: dict[str, Any], issues: Issues) -> None:
    """A provider that loads, an issuer that is a CA with its own key, and a cache that expires
    before what it holds does."""
    from proxy import plugins
    from proxy.network import tls_dynamic
    from proxy.network.tls import TlsConfigError, load_issuer

    provider, issuer = on_demand.get("provider"), on_demand.get("issuer")
    if provider is None and issuer is None:
        issues.add(path, "give a provider, an issuer, or both")
    if isinstance(provider, dict) and isinstance(provider.get("type"), str):
        target = plugins.split_target(provider["type"])
        if target is None:
            issues.add(path + ("provider", "type"), f"{provider['type']!r} is not package.module:Class")
        else:
            try:
                plugins.load_class(*target, tls_dynamic.CertificateProvider, f"certificate provider {provider['type']!r}", "a CertificateProvider subclass")
            except plugins.PluginError as exc:
                issues.add(path + ("provider", "type"), str(exc))
    if isinstance(issuer, dict) and isinstance(issuer.get("cert"), str) and isinstance(issuer.get("key"), str):
        try:
            load_issuer(issuer["cert"], issuer["key"])
        except TlsConfigError as exc:
            issues.add(path + ("issuer",), str(exc))
    try:
        lifetime = Duration.parse(on_demand.get("lifetime", "24h"))
        cache_lifetime = Duration.parse(on_demand.get("cache_lifetime", "1h"))
    except (TypeError, ValueError):
        return  # (the structural check reports it)
    if cache_lifetime > lifetime:
        issues.add(path + ("cache_lifetime",), "longer than the certificates' lifetime: the cache would serve expired ones")


def _cluster_tls(clusters: list[tuple[int, dict[str, Any]]], issues: Issues) -> None:
    """TLS to the hosts: the files load (a CA bundle, a client key that is its certificate's),
    OpenSSL takes the ciphers, and every host has a name to verify."""
    for index, cluster in clusters:
        if cluster.get("protocol") == "auto" and not isinstance(cluster.get("tls"), dict):
            issues.add(("clusters", index, "protocol"), "protocol auto picks HTTP/2 or HTTP/1.1 by ALPN, which needs the cluster's tls")
    with_tls = [(index, cluster, cluster["tls"]) for index, cluster in clusters if isinstance(cluster.get("tls"), dict)]
    if not with_tls:
        return  # (and pyOpenSSL stays unimported)
    from OpenSSL import SSL

    from proxy.network.tls import TlsConfigError, check_ca_bundle, load_key_pair

    for index, cluster, tls in with_tls:
        path = ("clusters", index, "tls")
        ca = tls.get("ca")
        if isinstance(ca, str):
            try:
                check_ca_bundle(ca)
            except TlsConfigError as exc:
                issues.add(path + ("ca",), str(exc))
        cert, key = tls.get("cert"), tls.get("key")
        if isinstance(cert, str) and isinstance(key, str):
            try:
                load_key_pair(cert, key)
            except TlsConfigError as exc:
                issues.add(path, str(exc))
        elif isinstance(cert, str) or isinstance(key, str):
            issues.add(path, "a client certificate needs both 'cert' and 'key'")
        for name, setter in (("ciphers", "set_cipher_list"), ("ciphersuites", "set_tls13_ciphersuites")):
            value = tls.get(name)
            if isinstance(value, str):
                try:
                    getattr(SSL.Context(SSL.TLS_CLIENT_METHOD), setter)(value.encode())
                except (SSL.Error, ValueError):
                    issues.add(path + (name,), f"OpenSSL takes none of {value!r}")
        if tls.get("min_version", "1.2") == "1.3" and tls.get("max_version", "1.3") == "1.2":
            issues.add(path, "min_version 1.3 is above max_version 1.2")
        alpn = tls.get("alpn")
        if isinstance(alpn, list) and any(not isinstance(p, str) or not p or len(p) > 255 for p in alpn):
            issues.add(path + ("alpn",), "ALPN protocol names are 1 to 255 characters")
        if tls.get("verify", True) is True and not tls.get("server_name"):
            for host_index, host in _items(cluster.get("hosts")):
                address = _address(host.get("address"))
                if address is not None and address.is_unix:
                    issues.add(
                        ("clusters", index, "hosts", host_index, "address"),
                        "a unix host has no name to verify its certificate against: set tls.server_name (or tls.verify: false)",
                    )


def _cluster_http2(clusters: list[tuple[int, dict[str, Any]]], issues: Issues) -> None:
    """Keepalive takes both durations (a PING without a deadline detects nothing, a deadline
    without PINGs has nothing to time), and only HTTP/2 connections have it."""
    for index, cluster in clusters:
        options = cluster.get("http2")
        if not isinstance(options, dict):
            continue
        interval, timeout = options.get("keepalive_interval"), options.get("keepalive_timeout")
        path = ("clusters", index, "http2")
        if timeout is not None and interval is None:
            issues.add(path + ("keepalive_timeout",), "keepalive_timeout needs a keepalive_interval (when to send the PING)")
        elif interval is not None and timeout is None:
            issues.add(path + ("keepalive_interval",), "keepalive_interval needs a keepalive_timeout (how long to wait for the PING's answer)")
        if (interval is not None or timeout is not None) and cluster.get("protocol", "http1") == "http1":
            issues.add(path, "HTTP/2 keepalive needs the cluster's protocol to be http2 or downstream, or auto (HTTP/1.1 connections have no PING)")


def _items(value: Any) -> list[tuple[int, dict[str, Any]]]:
    """(index, item) for the mapping items of a list; anything else is a structural error."""
    if not isinstance(value, list):
        return []
    return [(index, item) for index, item in enumerate(value) if isinstance(item, dict)]


def _unique_names(items: list[tuple[int, dict[str, Any]]], base: PathTuple, kind: str, issues: Issues) -> list[str]:
    """Report repeated names; return the distinct names in order of definition."""
    first: dict[str, PathTuple] = {}
    for index, item in items:
        name = item.get("name")
        if not isinstance(name, str):
            continue
        path = base + (index, "name")
        if name in first:
            issues.add(path, f"duplicate {kind} name {name!r} (first at {format_path(first[name])})")
        else:
            first[name] = path
    return list(first)


def _listener_clusters(listeners: list[tuple[int, dict[str, Any]]], clusters: list[str], issues: Issues) -> None:
    for index, listener in listeners:
        cluster = listener.get("cluster")
        protocol = listener.get("protocol")
        if isinstance(protocol, str) and not codecs.is_known(protocol):
            issues.add(("listeners", index, "protocol"), f"unknown protocol {protocol!r}; use {', '.join(codecs.names())} or 'package.module:Codec'")
        elif isinstance(protocol, str) and protocol != "tcp" and listener.get("route") is None and not listener.get("filter_chains"):
            issues.add(("listeners", index), f"an {protocol} listener needs a 'route' (a route table name)")
        if protocol == "tcp" and cluster is None and not listener.get("filter_chains"):
            issues.add(("listeners", index), "a tcp listener needs a 'cluster'")
        elif isinstance(cluster, str) and cluster not in clusters:
            if clusters:
                message = f"unknown cluster {cluster!r}; defined clusters: {', '.join(clusters)}"
                close = difflib.get_close_matches(cluster, clusters, n=1, cutoff=0.6)
                if close:
                    message += f" (did you mean {close[0]!r}?)"
            else:
                message = f"unknown cluster {cluster!r}; no clusters are defined"
            issues.add(("listeners", index, "cluster"), message)


def _listener_addresses(listeners: list[tuple[int, dict[str, Any]]], admin: Any, issues: Issues) -> None:
    """Listening addresses that cannot all be bound: one address twice, or a wildcard beside
    an address of its family on the same port. The admin metrics listener is one of them."""
    bound: list[tuple[PathTuple, Address, tuple[Any, ...]]] = []
    candidates: list[tuple[PathTuple, Any]] = [(("listeners", index, "address"), listener.get("address")) for index, listener in listeners]
    if isinstance(admin, dict):
        candidates.append((("admin", "metrics"), admin.get("metrics")))
    for path, value in candidates:
        address = _address(value)
        if address is None or (not address.is_unix and address.port == 0):
            continue  # port 0: the kernel picks a free port for each listener
        key = _address_key(address)
        for first_path, first, first_key in bound:
            if key == first_key:
                issues.add(path, f"duplicate listener address {address.text!r} (first at {format_path(first_path)})")
                break
            if _wildcard_clash(first, first_key, address, key):
                wildcard = (first if _is_wildcard(first_key) else address).host
                family = _FAMILY_NAMES[address.family]
                issues.add(
                    path,
                    f"{address.text!r} cannot be bound beside {first.text!r} (at {format_path(first_path)}): "
                    f"{f'[{wildcard}]' if family == 'IPv6' else wildcard} takes port {address.port} on every {family} address",
                )
                break
        else:
            bound.append((path, address, key))


_FAMILY_NAMES: dict[int, str] = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}


def _is_wildcard(key: tuple[Any, ...]) -> bool:
    return key[0] in _FAMILY_NAMES and key[1].is_unspecified


def _wildcard_clash(a: Address, a_key: tuple[Any, ...], b: Address, b_key: tuple[Any, ...]) -> bool:
    """Linux refuses to bind a wildcard and another address of its family on one port (even
    with SO_REUSEADDR; SO_REUSEPORT, set only with several workers, would let both bind, so
    the config would break when the worker count drops to 1). IPv4 and IPv6 never clash:
    IPv6 listeners bind with IPV6_V6ONLY (proxy.network.listener), so [::]:80 leaves
    0.0.0.0:80 free. Host names are resolved only when bound: not checked here."""
    if a.family not in _FAMILY_NAMES or a.family != b.family or a.port != b.port:
        return False
    return _is_wildcard(a_key) or _is_wildcard(b_key)


def _host_addresses(clusters: list[tuple[int, dict[str, Any]]], issues: Issues) -> None:
    for cluster_index, cluster in clusters:
        first: dict[tuple[Any, ...], PathTuple] = {}
        for host_index, host in _items(cluster.get("hosts")):
            address = _address(host.get("address"))
            if address is None:
                continue
            path = ("clusters", cluster_index, "hosts", host_index, "address")
            if not address.is_unix and address.port == 0:
                issues.add(path, f"host address {address.text!r} has port 0; give the port to connect to")
                continue
            key = _address_key(address)
            if key in first:
                issues.add(path, f"duplicate host address {address.text!r} (first at {format_path(first[key])})")
            else:
                first[key] = path


def _admin(admin: Any, issues: Issues) -> None:
    if not isinstance(admin, dict):
        return
    sock = admin.get("socket")
    if isinstance(sock, str) and not sock.startswith("/"):
        hint = " (write the path without 'unix:')" if sock.startswith("unix:/") else ""
        issues.add(("admin", "socket"), f"admin socket must be an absolute path, got {sock!r}{hint}")
    elif isinstance(sock, str) and len(sock.encode()) > 107:  # sun_path; a relative one is resolved by now
        issues.add(("admin", "socket"), f"admin socket path is longer than 107 bytes: {sock!r}")
    metrics = _address(admin.get("metrics"))
    if metrics is not None and metrics.is_unix:
        issues.add(("admin", "metrics"), f"admin metrics must be a TCP 'host:port' address, got {metrics.text!r}")


def _address(value: Any) -> Address | None:
    if not isinstance(value, str):
        return None
    try:
        return Address.parse(value)
    except ValueError:
        return None  # reported by the structural check


def _address_key(address: Address) -> tuple[Any, ...]:
    """Equal for spellings of one address: '[::1]:80' and '[0::1]:80', 'Example.com:80' and 'example.com:80'."""
    if address.is_unix:
        return (socket.AF_UNIX, address.path)
    host: Any = address.host.lower().rstrip(".")
    if address.family in (socket.AF_INET, socket.AF_INET6):
        host = ipaddress.ip_address(address.host)
    return (address.family, host, address.port)
