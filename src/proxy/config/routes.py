"""Route table config (Envoy/MOSN style): virtual hosts, routes, matches, actions, retries.

    routes:
      main:
        virtual_hosts:
          - name: api
            domains: ["api.example.com", "*.example.com", "*"]
            routes:
              - match: {prefix: /v1/, headers: [{name: x-canary, exact: "1"}]}
                cluster: api-canary
                retry: {on: [5xx, reset], attempts: 2, per_try_timeout: 1s}

The structs check each value's type and range; what spans fields (exactly one action, one
path matcher, regexes that compile, known clusters, unique domains) is checked on the raw
config by `proxy.config.semantic_routes.check_routes`. `proxy.router.route_table` compiles a
`RouteTable` for matching.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from proxy.config.base import Name, _Model
from proxy.config.values import Duration, PositiveDuration

# An HTTP field name (RFC 9110 token); matched case-insensitively, sent lower-case.
HeaderName = Annotated[str, msgspec.Meta(min_length=1, max_length=256, pattern=r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")]
# Methods are case-sensitive tokens; upper case keeps `get` from silently never matching.
Method = Annotated[str, msgspec.Meta(min_length=1, max_length=32, pattern=r"^[A-Z][A-Z0-9_\-]*$")]
Status = Annotated[int, msgspec.Meta(ge=100, le=599)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
# Zero is allowed for one cluster of several (a canary at 0% while rolling out, as in Envoy and
# Istio); the weights of a route must add up to more than zero (semantic check).
ClusterWeight = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]
RetryOn = Literal["5xx", "gateway-error", "connect-failure", "reset", "retriable-status-codes", "retriable-4xx"]


class HeaderValue(_Model):
    """A header to add. `value` may use %variables% (proxy.variables); `append: true` adds
    another value, false replaces any value the header already has."""

    name: HeaderName
    value: str
    append: bool = False


class Header(_Model):
    """A literal header (direct responses)."""

    name: HeaderName
    value: str


class _ValueCondition(_Model):
    """Exactly one of exact | prefix | suffix | regex (a full match) | present; `invert` negates
    the result. Shared by header and variable matchers, which differ only in what is matched."""

    exact: str | None = None
    prefix: str | None = None
    suffix: str | None = None
    regex: str | None = None
    present: bool | None = None
    invert: bool = False


class HeaderMatcher(_ValueCondition, kw_only=True):
    """A request header; with several headers of one name, their values are joined with ","."""

    name: HeaderName


class QueryParameterMatcher(_Model):
    """Exactly one of exact | regex (a full match) | present, against the first value of the
    parameter, percent-decoded."""

    name: Annotated[str, msgspec.Meta(min_length=1)]
    exact: str | None = None
    regex: str | None = None
    present: bool | None = None


class VariableMatcher(_ValueCondition, kw_only=True):
    """MOSN's variable matcher: `variable` is a template of %variables% (e.g.
    "%downstream_remote_ip%" or "%request_header(x-user)%-%method%"), rendered per request;
    an empty rendering counts as absent."""

    variable: Annotated[str, msgspec.Meta(min_length=1)]


class Match(_Model):
    """Exactly one of prefix | path (exact) | regex (a full match on the path, without the
    query); every header, query parameter and method condition must hold too."""

    prefix: str | None = None
    path: str | None = None
    regex: str | None = None
    case_sensitive: bool = True
    headers: list[HeaderMatcher] = []
    query_parameters: list[QueryParameterMatcher] = []
    variables: list[VariableMatcher] = []
    methods: Annotated[list[Method], msgspec.Meta(min_length=1)] | None = None


class WeightedCluster(_Model):
    name: Name
    weight: ClusterWeight


class DirectResponse(_Model):
    status: Status
    body: str = ""
    headers: list[Header] = []


class Redirect(_Model):
    """Parts of the request URL to replace; the rest is kept. `path` and `prefix_rewrite`
    exclude each other."""

    scheme: Literal["http", "https"] | None = None
    host: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    port: Port | None = None
    path: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    prefix_rewrite: str | None = None
    code: Literal[301, 302, 303, 307, 308] = 301
    strip_query: bool = False


class RegexRewrite(_Model):
    """Every match of `pattern` in the path is replaced by `substitution` (`\\1` for groups)."""

    pattern: Annotated[str, msgspec.Meta(min_length=1)]
    substitution: str


class Backoff(_Model):
    base_interval: Duration = Duration(0.025)
    # None: 10 × base_interval, as Envoy.
    max_interval: Duration | None = None


class Retry(_Model):
    on: Annotated[list[RetryOn], msgspec.Meta(min_length=1)]
    retriable_status_codes: list[Status] = []
    # Retries, not counting the first try (Envoy's num_retries).
    attempts: Annotated[int, msgspec.Meta(ge=0, le=10)] = 1
    per_try_timeout: PositiveDuration | None = None
    backoff: Backoff = Backoff()


class Route(_Model):
    match: Match
    # Shown in logs and as %route_name%; optional, as in Envoy.
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    # Exactly one action:
    cluster: Name | None = None
    weighted_clusters: Annotated[list[WeightedCluster], msgspec.Meta(min_length=1)] | None = None
    cluster_header: HeaderName | None = None
    direct_response: DirectResponse | None = None
    redirect: Redirect | None = None
    # Forwarding options (cluster, weighted_clusters, cluster_header):
    prefix_rewrite: str | None = None
    regex_rewrite: RegexRewrite | None = None
    host_rewrite: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    # The whole request, retries included (Envoy's default); null means none ("0s", Envoy's
    # way to say none, is refused: it reads as "time out at once").
    timeout: PositiveDuration | None = PositiveDuration(15.0)
    retry: Retry | None = None
    allow_upgrades: list[HeaderName] = msgspec.field(default_factory=lambda: ["websocket"])
    allow_connect: bool = False
    request_headers_to_add: list[HeaderValue] = []
    request_headers_to_remove: list[HeaderName] = []
    response_headers_to_add: list[HeaderValue] = []
    response_headers_to_remove: list[HeaderName] = []


class VirtualHost(_Model):
    name: Name
    # "host", "host:port", "[v6]", "[v6]:port", "*.suffix" / "*-suffix" (optionally with
    # ":port"), "prefix.*", or "*" (the default).
    domains: Annotated[list[Annotated[str, msgspec.Meta(min_length=1)]], msgspec.Meta(min_length=1)]
    routes: list[Route] = []
    request_headers_to_add: list[HeaderValue] = []
    request_headers_to_remove: list[HeaderName] = []
    response_headers_to_add: list[HeaderValue] = []
    response_headers_to_remove: list[HeaderName] = []


class RouteTable(_Model):
    virtual_hosts: Annotated[list[VirtualHost], msgspec.Meta(min_length=1)]
    request_headers_to_add: list[HeaderValue] = []
    request_headers_to_remove: list[HeaderName] = []
    response_headers_to_add: list[HeaderValue] = []
    response_headers_to_remove: list[HeaderName] = []


# --- domains --------------------------------------------------------------------------------------

EXACT = "exact"
SUFFIX = "suffix"  # "*.example.com", "*-bar.example.com": the part after '*'
PREFIX = "prefix"  # "www.example.*": the part before '*'
DEFAULT = "default"  # "*"


class Domain(msgspec.Struct, frozen=True):
    """A virtual host domain, parsed: its kind, the lower-case host part to compare (without
    the '*'), and the port it requires (None: any port)."""

    kind: str
    host: bytes
    port: int | None


def split_host_port(host: bytes) -> tuple[bytes, bytes | None]:
    """b'example.com:80' -> (b'example.com', b'80'); b'[::1]:80' -> (b'[::1]', b'80');
    a host without a (numeric) port -> (host, None)."""
    if host[:1] == b"[":
        end = host.find(b"]")
        if end > 0:
            rest = host[end + 1 :]
            if rest[:1] == b":" and rest[1:].isdigit():
                return host[: end + 1], rest[1:]
            return host[: end + 1], None
        return host, None
    name, sep, port = host.rpartition(b":")
    if sep and port.isdigit() and b":" not in name:
        return name, port
    return host, None


def parse_domain(text: str) -> Domain:
    """Parse a `domains` entry; raises ValueError saying what is wrong with it."""
    raw = text.strip().lower()
    if not raw:
        raise ValueError("a domain must not be empty")
    try:
        data = raw.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"domain {text!r} is not ASCII; write international names in punycode (xn--...)") from None
    if any(c in raw for c in " /?#@\t"):
        raise ValueError(f"invalid domain {text!r}: expected a host name, optionally with ':port'")
    if data.startswith(b"[") and b"]" not in data:
        raise ValueError(f"invalid domain {text!r}: missing ']' after the IPv6 address")
    name, port_text = split_host_port(data)
    if port_text is None and name.rpartition(b":")[1] and not name.startswith(b"["):
        if b":" in name.rpartition(b":")[0]:
            raise ValueError(f"invalid domain {text!r}: write IPv6 addresses in brackets, e.g. '[::1]' or '[::1]:8080'")
        raise ValueError(f"invalid domain {text!r}: the port must be a number")
    port = None
    if port_text is not None:
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise ValueError(f"invalid domain {text!r}: port {port} is out of range 1-65535")
    if name.endswith(b".") and len(name) > 1:
        name = name[:-1]  # 'example.com.' is 'example.com'
    if not name:
        raise ValueError(f"invalid domain {text!r}: no host name")
    stars = name.count(b"*")
    if stars == 0:
        return Domain(EXACT, name, port)
    if stars == 1 and name == b"*":
        return Domain(DEFAULT, b"", None) if port is None else Domain(SUFFIX, b"", port)
    if stars == 1 and name.startswith(b"*"):
        return Domain(SUFFIX, name[1:], port)
    if stars == 1 and name.endswith(b"*"):
        return Domain(PREFIX, name[:-1], port)
    raise ValueError(f"invalid domain {text!r}: a wildcard '*' may only be the first or the last character")
