"""Routing: the pure route table and retry state; the router stream filter builds on them."""

from proxy.router.retry import RetryPolicy, RetryState
from proxy.router.route_table import (
    CompiledRoute,
    CompiledRouteTable,
    CompiledVirtualHost,
    HeaderMutation,
    RouteMatch,
    apply_header_mutations,
    choose_cluster,
    mutate_headers,
    redirect_location,
    rewrite_path,
)

__all__ = [
    "CompiledRoute",
    "CompiledRouteTable",
    "CompiledVirtualHost",
    "HeaderMutation",
    "RetryPolicy",
    "RetryState",
    "RouteMatch",
    "apply_header_mutations",
    "choose_cluster",
    "mutate_headers",
    "redirect_location",
    "rewrite_path",
]
