"""Helpers for the router tests: route tables from dicts or YAML, and their config issues."""

from __future__ import annotations

from textwrap import dedent
from typing import Any

import msgspec
import msgspec.inspect as mi

from proxy.config.errors import ConfigIssue, Issues
from proxy.config.loader import _parse_yaml, _Walker
from proxy.config.routes import RouteTable
from proxy.config.semantic_routes import check_routes
from proxy.config.values import decode_hook
from proxy.router.route_table import CompiledRouteTable

_TABLE_INFO = mi.type_info(RouteTable)


def decode(data: dict[str, Any]) -> RouteTable:
    return msgspec.convert(data, RouteTable, dec_hook=decode_hook)


def compile_table(data: dict[str, Any], name: str = "main") -> CompiledRouteTable:
    return CompiledRouteTable(decode(data), name)


def one_vhost(*routes: dict[str, Any], domains: tuple[str, ...] = ("*",), **extra: Any) -> CompiledRouteTable:
    """A table with one virtual host holding `routes`."""
    return compile_table({"virtual_hosts": [{"name": "vh", "domains": list(domains), "routes": list(routes), **extra}]})


def raw_issues(raw: dict[str, Any], filename: str = "test.yaml", lines: dict[Any, int] | None = None) -> list[ConfigIssue]:
    """The issues the structural walk of each route table and `check_routes` find in `raw`."""
    issues = Issues(filename, lines)
    tables = raw.get("routes") if isinstance(raw, dict) else None
    for name, table in (tables.items() if isinstance(tables, dict) else ()):
        _Walker(issues).check(_TABLE_INFO, table, ("routes", name))
    check_routes(raw, issues)
    return sorted(issues.items, key=lambda i: (i.line or 0, i.path))


def yaml_issues(text: str) -> list[ConfigIssue]:
    """As `raw_issues`, from YAML text, so issues carry lines."""
    issues = Issues("test.yaml")
    ok, raw = _parse_yaml(dedent(text), issues)
    assert ok, issues.items
    return raw_issues(raw, lines=issues.lines)


def issue_list(raw: dict[str, Any]) -> list[tuple[str, str]]:
    return [(i.path, i.message) for i in raw_issues(raw)]


CLUSTERS = [{"name": n, "hosts": [{"address": f"10.0.0.{i}:80"}]} for i, n in enumerate(["api", "web", "canary"], 1)]


def config(*routes: dict[str, Any], domains: tuple[str, ...] = ("*",), **table: Any) -> dict[str, Any]:
    """A raw config with clusters api, web, canary and a table `main` of one virtual host."""
    vhost = {"name": "vh", "domains": list(domains), "routes": list(routes)}
    return {"clusters": CLUSTERS, "routes": {"main": {"virtual_hosts": [vhost], **table}}}
