"""Checks across route tables: one action and one path matcher per route, regexes and
%variable% templates that compile, known clusters and route tables, unique virtual host names
and domains, weights that add up.

Like `proxy.config.semantic`, it runs on the raw parsed config, also after structural errors,
and skips whatever does not have the right shape (that is reported already).
"""

from __future__ import annotations

import difflib
import re
from typing import Any

import msgspec

from proxy.config.errors import Issues, PathTuple, format_path
from proxy.config.routes import Domain, HeaderMatcher, Match, QueryParameterMatcher, Redirect, Route, VariableMatcher, parse_domain
from proxy.config.values import Duration
from proxy.variables import compile_template

ACTIONS = ("cluster", "weighted_clusters", "cluster_header", "direct_response", "redirect")
PATH_MATCHERS = ("prefix", "path", "regex")
HEADER_MATCHERS = ("exact", "prefix", "suffix", "regex", "present")
QUERY_MATCHERS = ("exact", "regex", "present")
# Route keys that only mean something when the route forwards to a cluster.
FORWARDING_OPTIONS = ("prefix_rewrite", "regex_rewrite", "host_rewrite", "timeout", "retry")
REDIRECT_PARTS = ("scheme", "host", "port", "path", "prefix_rewrite", "strip_query")
# What a cluster name may look like (model.Name); other values are reported by the structural check.
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")


def _keys(struct: type[msgspec.Struct]) -> frozenset[str]:
    return frozenset(field.encode_name for field in msgspec.structs.fields(struct))


_ROUTE_KEYS, _MATCH_KEYS, _HEADER_KEYS, _QUERY_KEYS, _REDIRECT_KEYS, _VARIABLE_KEYS = (
    _keys(s) for s in (Route, Match, HeaderMatcher, QueryParameterMatcher, Redirect, VariableMatcher)
)


def _typo(value: dict[str, Any], known: frozenset[str]) -> bool:
    """True if `value` has an unknown key: a misspelt key (reported by the structural check)
    likely explains a missing one, so "needs one of" would only repeat it."""
    return any(key not in known for key in value)


def check_routes(raw: Any, issues: Issues) -> None:
    """Report every problem in `raw["routes"]` and in listeners' `route` references."""
    if not isinstance(raw, dict):
        return
    clusters = _names(raw.get("clusters"))
    tables = raw.get("routes")
    tables = tables if isinstance(tables, dict) else {}
    for index, listener in _items(raw.get("listeners")):
        route = listener.get("route")
        if isinstance(route, str) and route not in tables:
            issues.add(("listeners", index, "route"), _unknown("route table", route, [k for k in tables if isinstance(k, str)]))
    for name, table in tables.items():
        if isinstance(table, dict):
            _table(("routes", name), table, clusters, issues)


def _items(value: Any) -> list[tuple[int, dict[str, Any]]]:
    if not isinstance(value, list):
        return []
    return [(index, item) for index, item in enumerate(value) if isinstance(item, dict)]


def _names(value: Any) -> list[str]:
    names: list[str] = []
    for _, item in _items(value):
        name = item.get("name")
        if isinstance(name, str) and name not in names:
            names.append(name)
    return names


def _unknown(kind: str, name: str, defined: list[str]) -> str:
    if not defined:
        return f"unknown {kind} {name!r}; no {kind}s are defined"
    message = f"unknown {kind} {name!r}; defined {kind}s: {', '.join(defined)}"
    close = difflib.get_close_matches(name, defined, n=1, cutoff=0.6)
    if close:
        message += f" (did you mean {close[0]!r}?)"
    return message


def _one_of(value: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    """The keys of `keys` set (not null) in `value`."""
    return [key for key in keys if value.get(key) is not None]


def _choices(keys: tuple[str, ...]) -> str:
    quoted = [f"'{key}'" for key in keys]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _and(keys: list[str]) -> str:
    quoted = [f"'{key}'" for key in keys]
    return ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _regex(value: Any, path: PathTuple, issues: Issues) -> re.Pattern[bytes] | None:
    """Compile a regex as the router does (over bytes); report it if it does not compile."""
    if not isinstance(value, str):
        return None
    try:
        return re.compile(value.encode())
    except re.error as exc:
        issues.add(path, f"invalid regex {value!r}: {exc}")
        return None


def _table(base: PathTuple, table: dict[str, Any], clusters: list[str], issues: Issues) -> None:
    _mutations(base, table, issues)
    names: dict[str, PathTuple] = {}
    domains: dict[Domain, tuple[PathTuple, Any]] = {}
    for v_index, vhost in _items(table.get("virtual_hosts")):
        v_path = base + ("virtual_hosts", v_index)
        name = vhost.get("name")
        if isinstance(name, str):
            if name in names:
                issues.add(v_path + ("name",), f"duplicate virtual host name {name!r} (first at {format_path(names[name])})")
            else:
                names[name] = v_path + ("name",)
        d_list = vhost.get("domains")
        for d_index, text in enumerate(d_list if isinstance(d_list, list) else []):
            if not isinstance(text, str):
                continue
            d_path = v_path + ("domains", d_index)
            try:
                domain = parse_domain(text)
            except ValueError as exc:
                issues.add(d_path, str(exc))
                continue
            if domain in domains:
                first_path, first_vhost = domains[domain]
                if first_path[: len(v_path)] == v_path:
                    issues.add(d_path, f"duplicate domain {text!r} (first at {format_path(first_path)})")
                else:
                    issues.add(d_path, f"domain {text!r} is already in virtual host {first_vhost!r} ({format_path(first_path)})")
            else:
                domains[domain] = (d_path, name)
        _mutations(v_path, vhost, issues)
        for r_index, route in _items(vhost.get("routes")):
            _route(v_path + ("routes", r_index), route, clusters, issues)


def _route(base: PathTuple, route: dict[str, Any], clusters: list[str], issues: Issues) -> None:
    match = route.get("match")
    match = match if isinstance(match, dict) else {}
    if "match" in route:
        _match(base + ("match",), match, issues)
    prefix_match = isinstance(match.get("prefix"), str)

    actions = _one_of(route, ACTIONS)
    if not actions:
        if not _typo(route, _ROUTE_KEYS):
                issues.add(base, f"a route needs an action: one of {_choices(ACTIONS)}")
    elif len(actions) > 1:
        issues.add(base, f"a route takes exactly one action, got {_and(actions)}")
    elif actions[0] in ("direct_response", "redirect"):
        for key in FORWARDING_OPTIONS:
            if key in route:
                issues.add(base + (key,), f"'{key}' applies only to routes that forward to a cluster, not to a {actions[0].replace('_', ' ')}")

    cluster = route.get("cluster")
    if isinstance(cluster, str) and _NAME.match(cluster) and cluster not in clusters:
        issues.add(base + ("cluster",), _unknown("cluster", cluster, clusters))
    weighted = route.get("weighted_clusters")
    if isinstance(weighted, list):
        _weighted(base + ("weighted_clusters",), weighted, clusters, issues)

    if route.get("prefix_rewrite") is not None:
        if route.get("regex_rewrite") is not None:
            issues.add(base + ("regex_rewrite",), "'prefix_rewrite' and 'regex_rewrite' exclude each other")
        elif not prefix_match and match:
            issues.add(base + ("prefix_rewrite",), "'prefix_rewrite' needs a 'prefix' match; use 'regex_rewrite' with a 'path' or 'regex' match")
    rewrite = route.get("regex_rewrite")
    if isinstance(rewrite, dict):
        pattern = _regex(rewrite.get("pattern"), base + ("regex_rewrite", "pattern"), issues)
        substitution = rewrite.get("substitution")
        if pattern is not None and isinstance(substitution, str):
            problem = _substitution_problem(pattern, substitution.encode())
            if problem:
                issues.add(base + ("regex_rewrite", "substitution"), f"invalid substitution {substitution!r}: {problem}")

    redirect = route.get("redirect")
    if isinstance(redirect, dict):
        _redirect(base + ("redirect",), redirect, prefix_match, bool(match), issues)
    retry = route.get("retry")
    if isinstance(retry, dict):
        _retry(base + ("retry",), retry, issues)
    _mutations(base, route, issues)


def _match(base: PathTuple, match: dict[str, Any], issues: Issues) -> None:
    _one_kind(base, match, PATH_MATCHERS, _MATCH_KEYS, "a match", issues)
    for key in ("prefix", "path"):
        value = match.get(key)
        if isinstance(value, str) and not value.startswith("/"):
            issues.add(base + (key,), f"{key} {value!r} must start with '/'")
    _regex(match.get("regex"), base + ("regex",), issues)
    for index, header in _items(match.get("headers")):
        _condition(base + ("headers", index), header, HEADER_MATCHERS, _HEADER_KEYS, "a header matcher", issues)
    for index, param in _items(match.get("query_parameters")):
        _condition(base + ("query_parameters", index), param, QUERY_MATCHERS, _QUERY_KEYS, "a query parameter matcher", issues)
    for index, var in _items(match.get("variables")):
        _condition(base + ("variables", index), var, HEADER_MATCHERS, _VARIABLE_KEYS, "a variable matcher", issues)
        template = var.get("variable")
        if isinstance(template, str):
            try:
                compile_template(template)
            except ValueError as exc:
                issues.add(base + ("variables", index, "variable"), str(exc))


def _one_kind(base: PathTuple, value: dict[str, Any], keys: tuple[str, ...], known: frozenset[str], what: str, issues: Issues) -> None:
    """`value` must set exactly one of `keys` (unless a misspelt key already explains it)."""
    kinds = _one_of(value, keys)
    if not kinds:
        if not _typo(value, known):
            issues.add(base, f"{what} needs one of {_choices(keys)}")
    elif len(kinds) > 1:
        issues.add(base, f"{what} takes one of {_choices(keys)}, got {_and(kinds)}")


def _condition(base: PathTuple, value: dict[str, Any], keys: tuple[str, ...], known: frozenset[str], what: str, issues: Issues) -> None:
    _one_kind(base, value, keys, known, what, issues)
    _regex(value.get("regex"), base + ("regex",), issues)


def _weighted(base: PathTuple, weighted: list[Any], clusters: list[str], issues: Issues) -> None:
    seen: dict[str, PathTuple] = {}
    total = 0
    valid = True
    for index, item in _items(weighted):
        name = item.get("name")
        path = base + (index, "name")
        if isinstance(name, str) and _NAME.match(name):
            if name in seen:
                issues.add(path, f"duplicate cluster {name!r} (first at {format_path(seen[name])})")
            else:
                seen[name] = path
                if name not in clusters:
                    issues.add(path, _unknown("cluster", name, clusters))
        weight = item.get("weight")
        if isinstance(weight, int) and not isinstance(weight, bool) and weight >= 0:
            total += weight
        else:
            valid = False  # reported by the structural check
    if valid and weighted and len(weighted) == len(_items(weighted)) and total == 0:
        issues.add(base, "the weights add up to 0; give at least one cluster a weight above 0")


def _substitution_problem(pattern: re.Pattern[bytes], substitution: bytes) -> str | None:
    """Why `substitution` is not a valid replacement for `pattern` (bad group, bad escape)."""
    compile_repl = getattr(re, "_compile_repl", None)  # Python 3.11: (repl, pattern)
    compile_template = getattr(re, "_compile_template", None)  # 3.12+: (pattern, repl)
    try:
        if compile_template is not None:
            compile_template(pattern, substitution)
        elif compile_repl is not None:
            compile_repl(substitution, pattern)
    except re.error as exc:
        return str(exc)
    return None


def _redirect(base: PathTuple, redirect: dict[str, Any], prefix_match: bool, has_match: bool, issues: Issues) -> None:
    changes = [key for key in _one_of(redirect, REDIRECT_PARTS) if key != "strip_query" or redirect[key] is True]
    if not changes and not _typo(redirect, _REDIRECT_KEYS):  # it would send the client back to the same URL
        issues.add(base, f"a redirect must change something: set {_choices(REDIRECT_PARTS)}")
    path = redirect.get("path")
    if isinstance(path, str) and not path.startswith("/"):
        issues.add(base + ("path",), f"path {path!r} must start with '/'")
    if redirect.get("prefix_rewrite") is not None:
        if path is not None:
            issues.add(base + ("prefix_rewrite",), "'path' and 'prefix_rewrite' exclude each other")
        elif has_match and not prefix_match:
            issues.add(base + ("prefix_rewrite",), "'prefix_rewrite' needs a 'prefix' match")
    host = redirect.get("host")
    if isinstance(host, str) and any(c in host for c in "/?#@ \t"):
        issues.add(base + ("host",), f"invalid host {host!r}: expected a host name, optionally with ':port'")


def _duration(value: Any) -> float | None:
    try:
        return float(Duration.parse(value))
    except (ValueError, TypeError):
        return None


def _retry(base: PathTuple, retry: dict[str, Any], issues: Issues) -> None:
    on = retry.get("on")
    on = on if isinstance(on, list) else []
    codes = retry.get("retriable_status_codes")
    if "retriable-status-codes" in on and not codes:
        issues.add(base, "'on' has 'retriable-status-codes' but 'retriable_status_codes' lists none")
    if codes and isinstance(retry.get("on"), list) and "retriable-status-codes" not in on:
        issues.add(base + ("retriable_status_codes",), "has no effect unless 'on' includes 'retriable-status-codes'")
    backoff = retry.get("backoff")
    if isinstance(backoff, dict):
        base_interval = _duration(backoff.get("base_interval", "25ms"))
        max_interval = _duration(backoff.get("max_interval")) if "max_interval" in backoff else None
        if base_interval is not None and max_interval is not None and max_interval < base_interval:
            issues.add(base + ("backoff", "max_interval"), "max_interval must not be less than base_interval")


def _mutations(base: PathTuple, level: dict[str, Any], issues: Issues) -> None:
    """Header adds and removes at one level: templates compile; Host is left to host_rewrite."""
    for key in ("request_headers_to_add", "response_headers_to_add"):
        for index, header in _items(level.get(key)):
            value = header.get("value")
            if isinstance(value, str):
                try:
                    compile_template(value)
                except ValueError as exc:
                    issues.add(base + (key, index, "value"), str(exc))
            name = header.get("name")
            if key.startswith("request") and isinstance(name, str) and name.lower() == "host":
                issues.add(base + (key, index, "name"), "the Host header cannot be set here; use the route's 'host_rewrite'")
    removes = level.get("request_headers_to_remove")
    for index, name in enumerate(removes if isinstance(removes, list) else []):
        if isinstance(name, str) and name.lower() == "host":
            issues.add(base + ("request_headers_to_remove", index), "the Host header cannot be removed")
