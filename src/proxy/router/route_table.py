"""Route matching: a request's host, path, method, headers and query to a route. Pure.

`CompiledRouteTable(config)` does the work once per config: regexes compiled, domains parsed
into dicts, header templates compiled, retry policies built. Per request:

    match = table.match(method, host, path, query, headers)   # RouteMatch or None (404)
    match.route.action                                        # "cluster", "weighted_clusters", ...
    cluster = choose_cluster(match.route, headers, rng)
    target = rewrite_path(match.route, target)

Virtual host selection follows MOSN's priority, each level a dict lookup:
  1. exact host with the request's port ("api.example.com:8080")
  2. exact host, any port ("api.example.com")
  3. wildcard with the request's port ("*.example.com:8080"), longest first
  4. wildcard, any port: suffix wildcards ("*.example.com", "*-bar.example.com") longest first,
     then prefix wildcards ("www.example.*") longest first (Envoy's order)
  5. the default virtual host ("*")
Hosts compare case-insensitively, a trailing dot is ignored, `[v6]:port` literals are split at
the bracket. Results are cached per Host header value (bounded), so a busy table does one dict
lookup per request.

Routes of the chosen virtual host are tried in config order; the first whose match holds wins.

Header mutations are applied level by level, route, then virtual host, then table (Envoy's
default, most specific first); within a level removes come before adds. An add that replaces
(`append: false`) at a later level overrides an earlier one, so on conflict the table level
wins, as in Envoy without `most_specific_header_mutations_wins`. A value that renders empty
is not added (Envoy's behaviour without `keep_empty_value`).
"""

from __future__ import annotations

import bisect
import random
import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote_to_bytes

from proxy.config.routes import (
    DEFAULT,
    EXACT,
    SUFFIX,
    HeaderValue,
    QueryParameterMatcher,
    Route,
    RouteTable,
    VirtualHost,
    parse_domain,
    split_host_port,
)
from proxy.router.retry import RetryPolicy
from proxy.variables import Template, compile_template

Headers = list[tuple[bytes, bytes]]
Render = Callable[[Template], bytes]

# Route actions.
CLUSTER = "cluster"
WEIGHTED_CLUSTERS = "weighted_clusters"
CLUSTER_HEADER = "cluster_header"
DIRECT_RESPONSE = "direct_response"
REDIRECT = "redirect"
FORWARDING_ACTIONS = frozenset({CLUSTER, WEIGHTED_CLUSTERS, CLUSTER_HEADER})

# Path match kinds.
_PATH_PREFIX, _PATH_EXACT, _PATH_REGEX = 0, 1, 2
# Header / query condition kinds.
_EXACT, _PREFIX, _SUFFIX, _REGEX, _PRESENT = 0, 1, 2, 3, 4

# Distinct Host values remembered per table; a flood of random hosts only refills it.
HOST_CACHE_SIZE = 4096
_NOT_CACHED: Any = object()

_DEFAULT_PORTS = {b"http": 80, b"https": 443}


# --- compiled pieces ------------------------------------------------------------------------------


class HeaderMutation:
    """One level's (route, virtual host or table) header removes and adds."""

    __slots__ = ("removes", "adds")

    def __init__(self, removes: frozenset[bytes], adds: tuple[tuple[bytes, Template, bool], ...]) -> None:
        self.removes = removes  # lower-case names
        self.adds = adds  # (lower-case name, value template, append)

    @classmethod
    def build(cls, removes: Iterable[str], adds: Iterable[HeaderValue]) -> HeaderMutation | None:
        mutation = cls(
            frozenset(name.lower().encode("ascii") for name in removes),
            tuple((h.name.lower().encode("ascii"), compile_template(h.value), h.append) for h in adds),
        )
        return mutation if mutation.removes or mutation.adds else None

    def __repr__(self) -> str:
        return f"HeaderMutation(removes={sorted(self.removes)}, adds={[(n, t.text, a) for n, t, a in self.adds]})"


class WeightedClusters:
    """Picks a cluster with probability weight / total weight."""

    __slots__ = ("names", "weights", "cumulative", "total")

    def __init__(self, names: tuple[str, ...], weights: tuple[int, ...]) -> None:
        self.names = names
        self.weights = weights
        self.cumulative: list[int] = []
        total = 0
        for weight in weights:
            total += weight
            self.cumulative.append(total)
        self.total = total

    def pick(self, rng: random.Random) -> str:
        index = bisect.bisect_right(self.cumulative, rng.random() * self.total)
        return self.names[min(index, len(self.names) - 1)]


class DirectResponseAction:
    __slots__ = ("status", "body", "headers")

    def __init__(self, status: int, body: bytes, headers: tuple[tuple[bytes, bytes], ...]) -> None:
        self.status = status
        self.body = body
        self.headers = headers  # lower-case names


class RedirectAction:
    __slots__ = ("scheme", "host", "port", "path", "prefix_rewrite", "code", "strip_query")

    def __init__(
        self,
        scheme: bytes | None,
        host: bytes | None,
        port: int | None,
        path: bytes | None,
        prefix_rewrite: bytes | None,
        code: int,
        strip_query: bool,
    ) -> None:
        self.scheme = scheme
        self.host = host
        self.port = port
        self.path = path
        self.prefix_rewrite = prefix_rewrite
        self.code = code
        self.strip_query = strip_query


class _Condition:
    """A header or query parameter condition over a {lower-case name: value} map."""

    __slots__ = ("name", "kind", "value", "regex", "invert")

    def __init__(self, name: bytes, kind: int, value: Any, regex: re.Pattern[bytes] | None, invert: bool) -> None:
        self.name = name
        self.kind = kind
        self.value = value  # bytes; for _PRESENT, the bool wanted
        self.regex = regex
        self.invert = invert

    def test(self, values: dict[bytes, bytes]) -> bool:
        found = values.get(self.name)
        kind = self.kind
        if kind == _PRESENT:
            ok = (found is not None) == self.value
        elif found is None:
            ok = False
        elif kind == _EXACT:
            ok = found == self.value
        elif kind == _PREFIX:
            ok = found.startswith(self.value)
        elif kind == _SUFFIX:
            ok = found.endswith(self.value)
        else:
            ok = self.regex.fullmatch(found) is not None  # type: ignore[union-attr]
        return ok != self.invert


def _header_condition(m: Any, name: bytes | None = None) -> _Condition:
    """A HeaderMatcher's condition (or a VariableMatcher's, keyed by `name`)."""
    if name is None:
        name = m.name.lower().encode("ascii")
    if m.exact is not None:
        return _Condition(name, _EXACT, m.exact.encode(), None, m.invert)
    if m.prefix is not None:
        return _Condition(name, _PREFIX, m.prefix.encode(), None, m.invert)
    if m.suffix is not None:
        return _Condition(name, _SUFFIX, m.suffix.encode(), None, m.invert)
    if m.regex is not None:
        return _Condition(name, _REGEX, None, re.compile(m.regex.encode()), m.invert)
    # `present`, or no condition at all: Envoy's "the header is present".
    return _Condition(name, _PRESENT, m.present is not False, None, m.invert)


def _query_condition(m: QueryParameterMatcher) -> _Condition:
    name = m.name.encode()
    if m.exact is not None:
        return _Condition(name, _EXACT, m.exact.encode(), None, False)
    if m.regex is not None:
        return _Condition(name, _REGEX, None, re.compile(m.regex.encode()), False)
    return _Condition(name, _PRESENT, m.present is not False, None, False)


def _variables_hold(conditions: tuple[tuple[Template, _Condition], ...], info: Any) -> bool:
    if info is None:
        return False
    for template, condition in conditions:
        value = template.render_bytes(info, missing="")
        if not condition.test({condition.name: value} if value else {}):
            return False
    return True


def _all_hold(conditions: tuple[_Condition, ...], values: dict[bytes, bytes]) -> bool:
    for condition in conditions:
        if not condition.test(values):
            return False
    return True


def _header_map(headers: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """{lower-case name: value}; repeated headers joined with ',' (Envoy's header matching)."""
    values: dict[bytes, bytes] = {}
    for name, value in headers:
        name = name.lower()
        old = values.get(name)
        values[name] = value if old is None else old + b"," + value
    return values


def _query_map(query: bytes) -> dict[bytes, bytes]:
    """{name: first value}, percent-decoded ('+' stays '+', as in Envoy)."""
    values: dict[bytes, bytes] = {}
    for part in query.split(b"&"):
        if not part:
            continue
        name, _, value = part.partition(b"=")
        if b"%" in name:
            name = unquote_to_bytes(name)
        if b"%" in value:
            value = unquote_to_bytes(value)
        values.setdefault(name, value)
    return values


# --- routes and virtual hosts ---------------------------------------------------------------------


class RouteMatch:
    """The route a request matched and its virtual host. One per route, built at compile time."""

    __slots__ = ("route", "virtual_host")

    def __init__(self, route: CompiledRoute, virtual_host: CompiledVirtualHost) -> None:
        self.route = route
        self.virtual_host = virtual_host

    def __repr__(self) -> str:
        return f"RouteMatch(virtual_host={self.virtual_host.name!r}, route={self.route!r})"


class CompiledRoute:
    """A route, ready to match and act. `action` says which of the action fields is set."""

    __slots__ = (
        "config",
        "name",
        "index",
        "path_kind",
        "path_value",
        "path_regex",
        "case_sensitive",
        "methods",
        "header_conditions",
        "query_conditions",
        "variable_conditions",
        "action",
        "cluster",
        "weighted_clusters",
        "cluster_header",
        "direct_response",
        "redirect",
        "prefix_rewrite",
        "regex_rewrite",
        "host_rewrite",
        "timeout",
        "retry",
        "allow_upgrades",
        "allow_connect",
        "request_mutations",
        "response_mutations",
        "result",
    )

    def __init__(self, config: Route, index: int, vhost: VirtualHost, table: RouteTable) -> None:
        self.config = config
        self.index = index  # position in its virtual host
        self.name = config.name or ""
        m = config.match
        self.case_sensitive = m.case_sensitive
        self.path_regex: re.Pattern[bytes] | None = None
        if m.regex is not None:
            self.path_kind = _PATH_REGEX
            self.path_value = b""
            self.path_regex = re.compile(m.regex.encode(), 0 if m.case_sensitive else re.IGNORECASE)
        else:
            self.path_kind = _PATH_PREFIX if m.path is None else _PATH_EXACT
            value = (m.prefix if m.path is None else m.path) or ""
            self.path_value = (value if m.case_sensitive else value.lower()).encode()
        self.methods = None if m.methods is None else frozenset(method.encode("ascii") for method in m.methods)
        self.header_conditions = tuple(_header_condition(h) for h in m.headers)
        self.query_conditions = tuple(_query_condition(q) for q in m.query_parameters)
        # (template, condition keyed b"0", b"1", ...): rendered per request, only for routes that have them
        self.variable_conditions = tuple(
            (compile_template(v.variable), _header_condition(v, name=str(i).encode())) for i, v in enumerate(m.variables)
        )

        self.cluster: str | None = config.cluster
        self.weighted_clusters: WeightedClusters | None = None
        self.cluster_header: bytes | None = None
        self.direct_response: DirectResponseAction | None = None
        self.redirect: RedirectAction | None = None
        if config.cluster is not None:
            self.action = CLUSTER
        elif config.weighted_clusters is not None:
            self.action = WEIGHTED_CLUSTERS
            self.weighted_clusters = WeightedClusters(
                tuple(w.name for w in config.weighted_clusters), tuple(w.weight for w in config.weighted_clusters)
            )
        elif config.cluster_header is not None:
            self.action = CLUSTER_HEADER
            self.cluster_header = config.cluster_header.lower().encode("ascii")
        elif config.direct_response is not None:
            self.action = DIRECT_RESPONSE
            d = config.direct_response
            headers = tuple((h.name.lower().encode("ascii"), h.value.encode()) for h in d.headers)
            self.direct_response = DirectResponseAction(d.status, d.body.encode(), headers)
        elif config.redirect is not None:
            self.action = REDIRECT
            r = config.redirect
            self.redirect = RedirectAction(
                scheme=None if r.scheme is None else r.scheme.encode(),
                host=None if r.host is None else r.host.encode(),
                port=r.port,
                path=None if r.path is None else r.path.encode(),
                prefix_rewrite=None if r.prefix_rewrite is None else r.prefix_rewrite.encode(),
                code=r.code,
                strip_query=r.strip_query,
            )
        else:
            raise ValueError(f"route {index} of virtual host {vhost.name!r} has no action")

        self.prefix_rewrite = None if config.prefix_rewrite is None else config.prefix_rewrite.encode()
        self.regex_rewrite: tuple[re.Pattern[bytes], bytes] | None = None
        if config.regex_rewrite is not None:
            rewrite = config.regex_rewrite
            self.regex_rewrite = (re.compile(rewrite.pattern.encode()), rewrite.substitution.encode())
        self.host_rewrite = None if config.host_rewrite is None else config.host_rewrite.encode()
        self.timeout: float | None = None if config.timeout is None else float(config.timeout)
        self.retry = None if config.retry is None else RetryPolicy.from_config(config.retry)
        self.allow_upgrades = frozenset(token.lower().encode("ascii") for token in config.allow_upgrades)
        self.allow_connect = config.allow_connect
        levels = (config, vhost, table)  # most specific first: Envoy's default order
        self.request_mutations = tuple(
            m for m in (HeaderMutation.build(c.request_headers_to_remove, c.request_headers_to_add) for c in levels) if m is not None
        )
        self.response_mutations = tuple(
            m for m in (HeaderMutation.build(c.response_headers_to_remove, c.response_headers_to_add) for c in levels) if m is not None
        )
        self.result: RouteMatch  # set by the virtual host

    @property
    def forwards(self) -> bool:
        """True when the route sends the request to a cluster."""
        return self.action in FORWARDING_ACTIONS

    def __repr__(self) -> str:
        label = f"{self.name!r} " if self.name else ""
        return f"<CompiledRoute {label}#{self.index} {self.action}>"


class CompiledVirtualHost:
    __slots__ = ("config", "name", "domains", "routes")

    def __init__(self, config: VirtualHost, table: RouteTable) -> None:
        self.config = config
        self.name = config.name
        self.domains = tuple(config.domains)
        routes = []
        for index, route_config in enumerate(config.routes):
            route = CompiledRoute(route_config, index, config, table)
            route.result = RouteMatch(route, self)
            routes.append(route)
        self.routes: tuple[CompiledRoute, ...] = tuple(routes)

    def __repr__(self) -> str:
        return f"<CompiledVirtualHost {self.name!r}>"


class CompiledRouteTable:
    """A route table, compiled for matching. Raises ValueError for a config that
    `check_routes` would have refused (a bad regex, a bad domain)."""

    def __init__(self, config: RouteTable, name: str = "") -> None:
        self.config = config
        self.name = name
        self.virtual_hosts = tuple(CompiledVirtualHost(vh, config) for vh in config.virtual_hosts)
        self._exact: dict[bytes, CompiledVirtualHost] = {}
        self._exact_port: dict[tuple[bytes, int], CompiledVirtualHost] = {}
        self._suffix: dict[bytes, CompiledVirtualHost] = {}
        self._suffix_port: dict[tuple[bytes, int], CompiledVirtualHost] = {}
        self._prefix: dict[bytes, CompiledVirtualHost] = {}
        self._prefix_port: dict[tuple[bytes, int], CompiledVirtualHost] = {}
        self._default: CompiledVirtualHost | None = None
        for vhost in self.virtual_hosts:
            for text in vhost.domains:
                domain = parse_domain(text)
                if domain.kind == DEFAULT:
                    self._default = self._default or vhost
                    continue
                if domain.kind == EXACT:
                    table: dict[Any, CompiledVirtualHost] = self._exact if domain.port is None else self._exact_port
                elif domain.kind == SUFFIX:
                    table = self._suffix if domain.port is None else self._suffix_port
                else:  # PREFIX
                    table = self._prefix if domain.port is None else self._prefix_port
                key: Any = domain.host if domain.port is None else (domain.host, domain.port)
                table.setdefault(key, vhost)  # a duplicate is a config error; the first wins
        # Wildcard lengths, longest first: a lookup slices the host at each length.
        self._suffix_lengths = sorted({len(k) for k in self._suffix} | {len(h) for h, _ in self._suffix_port}, reverse=True)
        self._prefix_lengths = sorted({len(k) for k in self._prefix} | {len(h) for h, _ in self._prefix_port}, reverse=True)
        self._ports = bool(self._exact_port or self._suffix_port or self._prefix_port)
        # MOSN: with only a default virtual host, the Host header is not looked at.
        self._only_default = self._default if not (self._exact or self._exact_port or self._suffix_lengths or self._prefix_lengths) else None
        self._cache: dict[bytes, CompiledVirtualHost | None] = {}

    def select_virtual_host(self, host: bytes | str) -> CompiledVirtualHost | None:
        """The virtual host for a Host header value (None: no virtual host, a 404)."""
        if self._only_default is not None:
            return self._only_default
        if isinstance(host, str):
            host = host.encode("latin-1", "replace")
        vhost = self._cache.get(host, _NOT_CACHED)
        if vhost is _NOT_CACHED:
            vhost = self._lookup(host)
            if len(self._cache) >= HOST_CACHE_SIZE:
                self._cache.clear()
            self._cache[host] = vhost
        return vhost  # type: ignore[no-any-return]

    def _lookup(self, host: bytes) -> CompiledVirtualHost | None:
        name, port_text = split_host_port(host.strip().lower())
        if name.endswith(b".") and len(name) > 1:
            name = name[:-1]
        port = int(port_text) if port_text is not None and self._ports else None
        if port is not None:
            vhost = self._exact_port.get((name, port))
            if vhost is not None:
                return vhost
        vhost = self._exact.get(name)
        if vhost is not None:
            return vhost
        size = len(name)
        if port is not None:
            for length in self._suffix_lengths:
                if size > length:
                    vhost = self._suffix_port.get((name[size - length :], port))
                    if vhost is not None:
                        return vhost
            for length in self._prefix_lengths:
                if size > length:
                    vhost = self._prefix_port.get((name[:length], port))
                    if vhost is not None:
                        return vhost
        for length in self._suffix_lengths:
            if size > length:  # the '*' stands for at least one character
                vhost = self._suffix.get(name[size - length :])
                if vhost is not None:
                    return vhost
        for length in self._prefix_lengths:
            if size > length:
                vhost = self._prefix.get(name[:length])
                if vhost is not None:
                    return vhost
        return self._default

    def match(self, method: bytes, host: bytes, path: bytes, query: bytes, headers: Headers, info: Any = None) -> RouteMatch | None:
        """The first route (in config order) of the request's virtual host that matches, or
        None. `path` is without the query; `query` is what follows '?' (b"" if none). `info`
        (the request's StreamInfo) feeds variable matchers; without it they never match."""
        vhost = self.select_virtual_host(host)
        if vhost is None:
            return None
        lowered: bytes | None = None
        header_values: dict[bytes, bytes] | None = None
        query_values: dict[bytes, bytes] | None = None
        for route in vhost.routes:
            kind = route.path_kind
            if kind == _PATH_PREFIX:
                if route.case_sensitive:
                    if not path.startswith(route.path_value):
                        continue
                else:
                    if lowered is None:
                        lowered = path.lower()
                    if not lowered.startswith(route.path_value):
                        continue
            elif kind == _PATH_EXACT:
                if route.case_sensitive:
                    if path != route.path_value:
                        continue
                else:
                    if lowered is None:
                        lowered = path.lower()
                    if lowered != route.path_value:
                        continue
            elif route.path_regex.fullmatch(path) is None:  # type: ignore[union-attr]
                continue
            if route.methods is not None and method not in route.methods:
                continue
            if route.header_conditions:
                if header_values is None:
                    header_values = _header_map(headers)
                if not _all_hold(route.header_conditions, header_values):
                    continue
            if route.query_conditions:
                if query_values is None:
                    query_values = _query_map(query)
                if not _all_hold(route.query_conditions, query_values):
                    continue
            if route.variable_conditions and not _variables_hold(route.variable_conditions, info):
                continue
            return route.result
        return None

    def __repr__(self) -> str:
        return f"<CompiledRouteTable {self.name!r} virtual_hosts={[v.name for v in self.virtual_hosts]}>"


# --- actions ----------------------------------------------------------------------------------------


def choose_cluster(route: CompiledRoute, headers: Headers, rng: random.Random) -> str | None:
    """The cluster this request goes to: the route's, a weighted pick, or the one a request
    header names (None if that header is missing or empty, or the route does not forward)."""
    action = route.action
    if action == CLUSTER:
        return route.cluster
    if action == WEIGHTED_CLUSTERS:
        return route.weighted_clusters.pick(rng)  # type: ignore[union-attr]
    if action == CLUSTER_HEADER:
        wanted = route.cluster_header
        for name, value in headers:
            if name == wanted or name.lower() == wanted:
                value = value.strip()
                return value.decode("latin-1") if value else None
        return None
    return None


def rewrite_path(route: CompiledRoute, target: bytes) -> bytes:
    """The request target to send upstream: the route's prefix or regex rewrite applied to the
    path, the query string (from '?') kept as it was."""
    if route.prefix_rewrite is None and route.regex_rewrite is None:
        return target
    path, sep, query = target.partition(b"?")
    if route.prefix_rewrite is not None:
        path = route.prefix_rewrite + path[len(route.path_value) :]
    else:
        pattern, substitution = route.regex_rewrite  # type: ignore[misc]
        path = pattern.sub(substitution, path)
    if not path.startswith(b"/"):
        path = b"/" + path
    return path + sep + query


def redirect_location(route: CompiledRoute, scheme: bytes, host: bytes, path: bytes, query: bytes) -> tuple[int, bytes]:
    """(status, Location) for a redirect route, from the request's scheme, Host, path (without
    the query) and query. Unset redirect fields keep the request's part. The port is dropped
    when it is the default of the scheme it ends up with, or when the scheme changes and it was
    the old scheme's default; a path with '?' brings its own query."""
    r = route.redirect
    if r is None:
        raise ValueError(f"{route!r} is not a redirect")
    new_scheme = r.scheme or scheme
    if r.host is not None:
        name, port_text = split_host_port(r.host)
        from_request = False
    else:
        name, port_text = split_host_port(host)
        from_request = True
    port = int(port_text) if port_text is not None else None
    if r.port is not None:
        port = r.port
    elif from_request and port is not None and new_scheme != scheme and port == _DEFAULT_PORTS.get(scheme):
        port = None
    if port is not None and port == _DEFAULT_PORTS.get(new_scheme):
        port = None
    if r.path is not None:
        new_path, sep, path_query = r.path.partition(b"?")
        new_query = path_query if sep else (b"" if r.strip_query else query)
    else:
        new_path = path
        if r.prefix_rewrite is not None:
            new_path = r.prefix_rewrite + path[len(route.path_value) :]
        new_query = b"" if r.strip_query else query
    location = new_path or b"/"
    if new_query:
        location += b"?" + new_query
    if name:
        authority = name if port is None else name + b":" + str(port).encode()
        location = new_scheme + b"://" + authority + location
    return r.code, location


# --- header mutations -------------------------------------------------------------------------------


def apply_header_mutations(
    headers: Headers, removes: frozenset[bytes], adds: tuple[tuple[bytes, Template, bool], ...], render: Render
) -> Headers:
    """Apply one level's removes, then its adds, to `headers` in place (and return it).
    `render(template)` expands a value with variables; constant values skip it."""
    if removes:
        headers[:] = [h for h in headers if h[0].lower() not in removes]
    for name, template, append in adds:
        value = template.constant_bytes
        if value is None:
            value = render(template)
        if not value:
            continue
        if not append:
            for existing, _ in headers:
                if existing.lower() == name:
                    headers[:] = [h for h in headers if h[0].lower() != name]
                    break
        headers.append((name, value))
    return headers


def mutate_headers(headers: Headers, mutations: tuple[HeaderMutation, ...], render: Render) -> Headers:
    """Apply a route's `request_mutations` or `response_mutations` (route, virtual host, table)."""
    for mutation in mutations:
        apply_header_mutations(headers, mutation.removes, mutation.adds, render)
    return headers
