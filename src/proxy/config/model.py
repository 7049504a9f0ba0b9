"""The typed, frozen config model: what a validated config file becomes.

Every struct forbids unknown keys. Two value types are parsed from strings by the loader
(`proxy.config.values`): `Duration` ("250ms", "5s", "2m", "1h", "1.5s"; `PositiveDuration`
refuses "0s": timeouts, where null, if allowed, means none) and `Address` ("host:port",
"[v6]:port", "unix:/path"). Cross-references (a listener's cluster) and
uniqueness (names) are checked after decoding, in `proxy.config.semantic`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from proxy.config.base import Name, PositiveInt, Weight, _Model
from proxy.config.routes import RouteTable
from proxy.config.values import Address, Duration, PositiveDuration

class Host(_Model):
    address: Address
    weight: Weight = 1
    metadata: dict[str, str] = {}


class ClusterHttp2Options(_Model):
    """HTTP/2 to a cluster's hosts (`protocol: http2`, or `downstream` for HTTP/2 clients).
    Keepalive, Envoy's connection_keepalive: a connection nothing has been received on for
    `keepalive_interval` gets a PING; if no frame at all arrives within `keepalive_timeout`
    the connection is closed (its streams fail as for a lost connection: 502, or a retry).
    Off unless both are set: a dead peer behind a NAT or a black hole is otherwise found only
    by the next request's timeout."""

    keepalive_interval: PositiveDuration | None = None
    keepalive_timeout: PositiveDuration | None = None


class ClusterTls(_Model):
    """TLS to a cluster's hosts (proxy.network.tls.ClientTls): the server's chain and its name
    are verified unless `verify: false`; the last session per host is offered again."""

    ca: str | None = None  # PEM bundle of trusted CAs; None: the system's trust store
    verify: bool = True  # false: any certificate is accepted (a warning at start)
    # SNI, and the name the certificate must carry; by default the host's address when it is a
    # DNS name (an IP address is then verified against the certificate's IP addresses).
    server_name: str | None = None
    # Offered by ALPN; by default what the connection speaks (http1: http/1.1, http2: h2,
    # downstream: the client's protocol). An HTTP connection refuses a server's other pick.
    alpn: list[str] | None = None
    cert: str | None = None  # a client certificate (PEM, the chain after it), for mTLS
    key: str | None = None  # its private key (unencrypted PEM)
    min_version: Literal["1.2", "1.3"] = "1.2"
    max_version: Literal["1.2", "1.3"] = "1.3"
    ciphers: str | None = None  # TLS 1.2 cipher list, OpenSSL syntax
    ciphersuites: str | None = None  # TLS 1.3 suites, `:`-separated
    session_reuse: bool = True  # offer the last session of a host on its next connection


class Cluster(_Model):
    name: Name
    hosts: Annotated[list[Host], msgspec.Meta(min_length=1)]
    lb: Literal["round_robin", "random"] = "round_robin"
    # Envoy's default. Linux resends a SYN that got no answer after 1 s (then 3 s, 7 s): a
    # shorter timeout turns one dropped SYN (a full accept queue) into a 502.
    connect_timeout: PositiveDuration = PositiveDuration(5.0)
    # HTTP connection pool, per host (Envoy's circuit breaker defaults are 1024 each).
    max_connections: PositiveInt = 1024
    max_pending_requests: PositiveInt = 1024  # requests waiting for a connection; overflow -> 503 UO
    max_requests_per_connection: PositiveInt | None = None
    idle_timeout: PositiveDuration = PositiveDuration(60.0)  # an unused pooled connection is closed after this
    # What the proxy speaks to the hosts: HTTP/1.1, HTTP/2 (prior-knowledge h2c, multiplexed),
    # whatever the client spoke (Envoy's USE_DOWNSTREAM_PROTOCOL), or, over TLS, what each
    # host picks by ALPN from h2 and http/1.1 on its first connection (`auto`).
    protocol: Literal["http1", "http2", "downstream", "auto"] = "http1"
    http2: ClusterHttp2Options = ClusterHttp2Options()
    tls: ClusterTls | None = None  # TLS to the hosts (within connect_timeout: TCP and handshake)


class ClientCertDetails(_Model):
    """What the proxy's own x-forwarded-client-cert element carries besides By and Hash
    (Envoy's set_current_client_cert_details)."""

    subject: bool = False
    uri: bool = False
    dns: bool = False
    cert: bool = False
    chain: bool = False


class HttpSettings(_Model):
    """HTTP/1.1 connection manager limits and behaviour for one listener."""

    max_request_line: Annotated[int, msgspec.Meta(ge=64)] = 8192  # -> 414
    max_header_bytes: Annotated[int, msgspec.Meta(ge=256)] = 65536  # -> 431
    max_header_count: PositiveInt = 100  # -> 431
    max_body_bytes: PositiveInt | None = None  # -> 413
    request_header_timeout: PositiveDuration = PositiveDuration(10.0)  # a request head must arrive within this (408)
    idle_timeout: PositiveDuration = PositiveDuration(300.0)  # keep-alive connection with no request in flight
    max_requests_per_connection: PositiveInt | None = None
    via: str | None = None  # e.g. "1.1 proxy": appended to Via both ways when set
    forwarded_headers: bool = True  # set X-Forwarded-For/-Proto/-Host
    request_id: bool = True  # set X-Request-Id when absent
    server_name: str = "proxy"  # Server header of local replies
    # x-forwarded-client-cert (XFCC) to the upstream, Envoy's forward_client_cert_details:
    # sanitize strips a client's; forward_only / append_forward / sanitize_set keep it, add
    # to it or replace it by ours when the client presented a certificate (and strip it
    # otherwise); always_forward_only passes it on untouched.
    forward_client_cert_details: Literal["sanitize", "forward_only", "append_forward", "sanitize_set", "always_forward_only"] = "sanitize"
    set_current_client_cert_details: ClientCertDetails = ClientCertDetails()


_WINDOW = Annotated[int, msgspec.Meta(ge=65535, le=2**31 - 1)]  # RFC 9113 §6.9.2 bounds


class Http2Options(_Model):
    """HTTP/2 for one listener (`protocol: http2` or `http`): what we advertise to clients and
    the bounds that keep one client from making us buffer or work without limit. The defaults
    are safe for a public listener; Envoy's names (http2_protocol_options)."""

    max_concurrent_streams: Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)] = 100  # more: REFUSED_STREAM
    initial_stream_window_size: _WINDOW = 1 << 20  # what one stream may make us buffer
    initial_connection_window_size: _WINDOW = 4 << 20  # all of a connection's streams together
    max_header_list_size: Annotated[int, msgspec.Meta(ge=1024, le=2**24)] = 65536  # decoded bytes
    # Control frames (PING and SETTINGS acks, RST_STREAMs) queued for a client that does not
    # read: past this the connection gets GOAWAY(ENHANCE_YOUR_CALM) (CVE-2019-9514).
    max_outbound_control_frames: PositiveInt = 1000
    # RFC 8441 extended CONNECT: WebSocket over an HTTP/2 stream (the route's allow_upgrades
    # still decides per route).
    allow_extended_connect: bool = True


class FilterConfig(_Model):
    type: str  # a built-in name (fault, ip_access, ...) or "package.module:Class"
    config: dict[str, Any] = {}


class AccessLog(_Model):
    path: str = "stdout"  # stdout | stderr | a file path (reopened on SIGUSR1)
    format: str | None = None  # %variables%; None -> the default format


class TlsCertificate(_Model):
    cert: str  # PEM file: the certificate, then the chain that signs it
    key: str  # PEM file: its private key (unencrypted; keep it readable by this user only)
    # The names it serves; by default the DNS names of its subjectAltName (else its CN).
    server_names: list[str] | None = None


class TlsIssuer(_Model):
    cert: str  # PEM: a CA certificate (basicConstraints CA:TRUE)
    key: str  # PEM: its private key (RSA or ECDSA)


class TlsProvider(_Model):
    type: str  # "package.module:Class", a proxy.network.tls_dynamic.CertificateProvider
    config: dict[str, Any] = {}


class TlsOnDemand(_Model):
    """Certificates for names no configured certificate serves (proxy.network.tls_dynamic):
    asked of the provider first, then minted by the issuer; cached per name."""

    provider: TlsProvider | None = None
    issuer: TlsIssuer | None = None
    key_type: Literal["ecdsa-p256", "rsa-2048"] = "ecdsa-p256"  # of minted certificates
    lifetime: PositiveDuration = PositiveDuration(86400.0)  # a minted certificate's validity
    # Only these names get one (exact, or `*.example.com` for one label under it); None: any.
    server_names: list[str] | None = None
    cache_size: PositiveInt = 1000  # names kept, least recently used dropped first
    cache_lifetime: PositiveDuration = PositiveDuration(3600.0)  # then fetched or minted anew


class ListenerTls(_Model):
    """TLS termination (proxy.network.tls): certificates chosen by the ClientHello's SNI."""

    certificates: list[TlsCertificate] = []  # at least one, unless on_demand serves every name
    # Offered by ALPN, in order of preference; by default what the protocol speaks
    # (http1: http/1.1; http2: h2; http: h2, http/1.1).
    alpn: list[str] | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"
    max_version: Literal["1.2", "1.3"] = "1.3"
    ciphers: str | None = None  # TLS 1.2 cipher list, OpenSSL syntax; None: OpenSSL's default
    ciphersuites: str | None = None  # TLS 1.3 suites, `:`-separated; None: OpenSSL's default
    groups: list[str] | None = None  # key exchange, in order (X25519, P-256, ...); None: OpenSSL's
    # An SNI no certificate names (or none at all): served the first certificate, or refused
    # with an unrecognized_name alert.
    unknown_server_name: Literal["default", "refuse"] = "default"
    handshake_timeout: PositiveDuration = PositiveDuration(10.0)
    on_demand: TlsOnDemand | None = None
    # Client certificates (mutual TLS): `request` asks for one and serves a client without
    # one; `require` refuses a client without one. Either way a certificate that does not
    # verify against `client_ca` (a PEM bundle) is refused with an alert.
    client_certificate: Literal["none", "request", "require"] = "none"
    client_ca: str | None = None
    # How many intermediate CAs may stand between a client certificate and a CA of client_ca
    # (OpenSSL's and nginx's ssl_verify_depth: 0, issued by one of them); None: OpenSSL's 100.
    verify_depth: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None
    # The certificate, key and client_ca files are polled this often and re-read when they
    # change (new handshakes get the new ones); None: only at start and on reload.
    watch_interval: PositiveDuration | None = PositiveDuration(5.0)


class FilterChainMatch(_Model):
    """What picks a filter chain, read from the connection's first bytes (the TLS inspector,
    proxy.network.tls_inspector): the ClientHello's SNI and ALPN, and whether it is TLS at all.
    Empty fields match anything; precedence and wildcards are Envoy's (proxy.network.filter_chains)."""

    server_names: list[str] = []  # exact names, or "*.example.com" (any name under example.com)
    alpn: list[str] = []  # any of these offered by the client
    transport: Literal["tls", "plaintext"] | None = None


class FilterChain(_Model):
    """One way of serving a listener's connections, picked by `match`. A field left out is the
    listener's (its cluster, route or tls); on a tcp listener a chain without tls passes the
    TLS through untouched (SNI routing without terminating)."""

    name: Name | None = None  # default chain0, chain1, ... (logs, hot-upgrade handovers)
    match: FilterChainMatch = FilterChainMatch()
    cluster: Name | None = None  # tcp listeners
    route: Name | None = None  # HTTP listeners
    tls: ListenerTls | None = None


class Listener(_Model):
    name: Name
    address: Address
    # tcp | http1 | http2 (prior-knowledge h2c) | http (HTTP/1.1 and HTTP/2 on one port, by the
    # connection preface) | a multiplexed codec "package.module:Codec" (proxy.http.codecs;
    # checked when the config is loaded)
    protocol: str
    # L4 listeners name the cluster their connections go to; HTTP listeners a route table.
    cluster: Name | None = None
    route: Name | None = None
    filters: list[FilterConfig] = []
    access_log: list[AccessLog] = []
    http: HttpSettings = HttpSettings()
    http2: Http2Options = Http2Options()
    # Above this many open downstream connections, new ones are accepted and closed at once
    # (Envoy's listener connection limit); None means no limit.
    max_connections: PositiveInt | None = None
    # No bytes in either direction for this long closes both sides (Envoy tcp_proxy: 1h).
    idle_timeout: PositiveDuration | None = PositiveDuration(3600.0)
    # Upstream connect attempts before the downstream is closed; each one goes to the next host.
    max_connect_attempts: Annotated[int, msgspec.Meta(ge=1, le=16)] = 3
    # How plaintext bytes are relayed: splice(2) through a pipe (zero-copy), or a userspace copy.
    # `auto` picks splice where the kernel has it.
    relay: Literal["auto", "splice", "copy"] = "auto"
    backlog: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 1024
    tls: ListenerTls | None = None
    # Filter chains (Envoy's filter_chains): each connection is served by the chain its first
    # bytes match; by the listener's own cluster/route/tls when none does (closed, and counted
    # in no_filter_chain_match, if the listener names neither).
    filter_chains: list[FilterChain] = []
    # How long the first bytes may take to show which chain (a whole ClientHello, or one byte
    # of plaintext): past it the connection is closed (Envoy's listener_filters_timeout).
    inspect_timeout: PositiveDuration = PositiveDuration(15.0)

    def chain_names(self) -> list[str]:
        return [c.name if c.name is not None else f"chain{i}" for i, c in enumerate(self.filter_chains)]


class Admin(_Model):
    # Unix control socket (mode 0600, peer uid checked) — served from the admin issue on.
    socket: str | None = None
    # Peer uids allowed on the admin socket besides root and the proxy's own uid (always allowed).
    allowed_uids: list[int] = []
    # Optional plain-HTTP listener for GET /metrics (Prometheus) and GET /ready: "host:port" only
    # (a bare port such as "9901" is not an address). Unauthenticated, so keep it on loopback
    # (e.g. 127.0.0.1:9901) or a private interface. Port 0 picks a free port (logged as
    # event=metrics.started address=...).
    metrics: Address | None = None


class Runtime(_Model):
    workers: PositiveInt | Literal["auto"] = 1
    # SIGTERM lets open connections finish for this long, then cancels them.
    drain_timeout: Duration = Duration(30.0)
    # Reload/upgrade: a new worker generation must be READY within this, or it is killed and
    # the old one serves on (tableflip's default).
    upgrade_timeout: PositiveDuration = PositiveDuration(60.0)
    # After READY the new generation accepts alone for this long before the old one commits its
    # live connections to it; a new worker that dies meanwhile is rolled back at once.
    upgrade_probation: Duration = Duration(1.0)
    # Splice pipes per worker, lent to a relay direction only while its bytes move and kept for
    # reuse once drained (HAProxy's maxpipes): an idle TCP pair costs its 2 socket fds. A burst
    # that finds none is copied through userspace; 0 copies every burst.
    splice_pipes: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 1024


class Diagnostics(_Model):
    # Holmes-like watcher (proxy.diagnostics): when a metric reaches its threshold, a dump file
    # `<directory>/<utc-timestamp>-<metric>.txt` is written (at most one per metric per cooldown).
    directory: str = "/var/tmp/proxy-diag"
    interval: PositiveDuration = PositiveDuration(1.0)
    cooldown: Duration = Duration(60.0)
    cpu_percent: Annotated[float, msgspec.Meta(gt=0)] | None = None
    rss_mb: Annotated[float, msgspec.Meta(gt=0)] | None = None
    connections: PositiveInt | None = None
    tasks: PositiveInt | None = None
    # seconds of sampling profile in each dump (0: none)
    profile_seconds: Annotated[float, msgspec.Meta(ge=0, le=60)] = 2.0


class Logging(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class Config(_Model):
    admin: Admin = Admin()
    runtime: Runtime = Runtime()
    logging: Logging = Logging()
    listeners: list[Listener] = []
    clusters: list[Cluster] = []
    routes: dict[Name, RouteTable] = {}
    diagnostics: Diagnostics | None = None

    def cluster(self, name: str) -> Cluster:
        for cluster in self.clusters:
            if cluster.name == name:
                return cluster
        raise KeyError(name)

