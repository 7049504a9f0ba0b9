"""Named per-request values (MOSN's variables) and the `%name%` templates that use them.

A template is compiled once, from config (access-log formats, route header values), into a
format string and a tuple of getters; rendering is one pass over the getters. A template
without variables is constant: `Template.constant` / `constant_bytes` hold its value, and
callers skip rendering altogether.

    %method%                      a plain variable
    %request_header(x-foo)%       a variable with an argument (header names are case-insensitive)
    %%                            a literal '%'

Getters read a duck-typed `info` object (the stream's StreamInfo): `request` (a RequestHead
with .method .target .http_version .headers), `response` (a ResponseHead with .status
.headers, or None), addresses, names, timings and counters; see `_ATTRIBUTES`. A getter
returns a str, or None when the value is missing; the caller chooses how a missing value
renders (`missing=`): "-" in access logs, "" in header values. Bytes from the wire decode as
Latin-1, which is lossless, and `render_bytes` encodes back the same way.

Other modules add variables with `register` / `register_function`; an unknown name is a
ValueError when the template is compiled, never a surprise per request.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

Getter = Callable[[Any], "str | None"]
GetterFactory = Callable[[str], Getter]

_VARIABLES: dict[str, Getter] = {}
_FUNCTIONS: dict[str, GetterFactory] = {}

# `%name%` or `%name(arg)%`; anything else between two '%' is an error.
_TOKEN = re.compile(r"([a-z_][a-z0-9_]*)(?:\(([^()%]*)\))?")
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def register(name: str, getter: Getter) -> None:
    """Add a variable `%name%`; `getter(info)` returns its value as str, or None if missing."""
    if not _TOKEN.fullmatch(name) or "(" in name:
        raise ValueError(f"invalid variable name {name!r}")
    _VARIABLES[name] = getter


def register_function(name: str, factory: GetterFactory) -> None:
    """Add a variable with an argument, `%name(arg)%`: `factory(arg)` returns the getter and
    raises ValueError for a bad argument (reported when the template is compiled)."""
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"invalid variable name {name!r}")
    _FUNCTIONS[name] = factory


def variable_names() -> list[str]:
    """Every known variable, functions written as `name(...)`, sorted."""
    return sorted(list(_VARIABLES) + [f"{name}(...)" for name in _FUNCTIONS])


def _encode(text: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:  # a config literal beyond Latin-1
        return text.encode("utf-8")


class Template:
    """A compiled `%variable%` template. Build it with `compile_template`."""

    __slots__ = ("text", "variables", "constant", "constant_bytes", "_format", "_getters")

    def __init__(self, text: str, fmt: str, getters: tuple[Getter, ...], variables: tuple[str, ...]) -> None:
        self.text = text
        self.variables = variables  # the variable tokens used, as written (`request_header(x-a)`)
        self._format = fmt  # literals with '%' doubled and a '%s' per variable
        self._getters = getters
        self.constant: str | None = None if getters else fmt % ()
        self.constant_bytes: bytes | None = None if self.constant is None else _encode(self.constant)

    @property
    def is_constant(self) -> bool:
        return self.constant is not None

    def render(self, info: Any, missing: str = "-") -> str:
        """The text with every variable expanded; a missing value becomes `missing`."""
        if self.constant is not None:
            return self.constant
        values = []
        for get in self._getters:
            value = get(info)
            values.append(missing if value is None else value)
        return self._format % tuple(values)

    def render_bytes(self, info: Any, missing: str = "") -> bytes:
        """As `render`, encoded for a header value; a missing value is empty by default."""
        if self.constant_bytes is not None:
            return self.constant_bytes
        return _encode(self.render(info, missing))

    def __repr__(self) -> str:
        return f"Template({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Template) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def compile_template(text: str) -> Template:
    """Compile `text`; raises ValueError naming the unknown variable or the bad syntax."""
    parts: list[str] = []
    getters: list[Getter] = []
    names: list[str] = []
    pos = 0
    while True:
        start = text.find("%", pos)
        if start < 0:
            parts.append(text[pos:].replace("%", "%%"))
            break
        parts.append(text[pos:start])
        if text.startswith("%%", start):
            parts.append("%%")
            pos = start + 2
            continue
        end = text.find("%", start + 1)
        if end < 0:
            raise ValueError(f"unterminated variable at column {start + 1} in {text!r}; write '%%' for a literal '%'")
        token = text[start + 1 : end]
        getters.append(_getter(token, text))
        names.append(token)
        parts.append("%s")
        pos = end + 1
    return Template(text, "".join(parts), tuple(getters), tuple(names))


def _getter(token: str, text: str) -> Getter:
    match = _TOKEN.fullmatch(token)
    if match is None:
        raise ValueError(f"invalid variable %{token}% in {text!r}; write '%%' for a literal '%'")
    name, arg = match.group(1), match.group(2)
    if arg is None:
        getter = _VARIABLES.get(name)
        if getter is None:
            hint = f"; it takes an argument: %{name}(...)%" if name in _FUNCTIONS else ""
            raise ValueError(f"unknown variable %{name}%{hint}; known variables: {', '.join(variable_names())}")
        return getter
    factory = _FUNCTIONS.get(name)
    if factory is None:
        hint = f"; %{name}% takes no argument" if name in _VARIABLES else ""
        raise ValueError(f"unknown variable %{name}(...)%{hint}; known variables: {', '.join(variable_names())}")
    try:
        return factory(arg.strip())
    except ValueError as exc:
        raise ValueError(f"invalid variable %{token}%: {exc}") from None


# --- getters ----------------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    """A value as text: bytes decode as Latin-1; None and "" are missing."""
    if value is None or value == "" or value == b"":
        return None
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def header_value(headers: Any, name: bytes) -> str | None:
    """The value of header `name` (lower-case) in a list of (name, value) pairs, matched
    case-insensitively; repeated headers are joined with ", " (RFC 9110 §5.3). None if absent."""
    found: list[bytes] = []
    for key, value in headers or ():
        if key == name or key.lower() == name:
            found.append(value)
    if not found:
        return None
    if len(found) == 1:
        return found[0].decode("latin-1")
    return b", ".join(found).decode("latin-1")


def _request_header_getter(name: bytes) -> Getter:
    def get(info: Any) -> str | None:
        request = getattr(info, "request", None)
        return None if request is None else header_value(request.headers, name)

    return get


def _response_header_getter(name: bytes) -> Getter:
    def get(info: Any) -> str | None:
        response = getattr(info, "response", None)
        return None if response is None else header_value(response.headers, name)

    return get


def _header_argument(arg: str) -> bytes:
    if not _HEADER_NAME.match(arg):
        raise ValueError(f"{arg!r} is not a header name")
    return arg.lower().encode("ascii")


def _target(info: Any) -> Any:
    request = getattr(info, "request", None)
    return None if request is None else request.target


def _method(info: Any) -> str | None:
    request = getattr(info, "request", None)
    return None if request is None else _text(request.method)


def _path(info: Any) -> str | None:
    target = _target(info)
    if target is None:
        return None
    sep = b"?" if isinstance(target, bytes) else "?"
    return _text(target.partition(sep)[0])  # type: ignore[arg-type]


def _query(info: Any) -> str | None:
    target = _target(info)
    if target is None:
        return None
    sep = b"?" if isinstance(target, bytes) else "?"
    _, found, query = target.partition(sep)  # type: ignore[arg-type]
    return _text(query) if found else None


def _attribute(name: str) -> Getter:
    def get(info: Any) -> str | None:
        return _text(getattr(info, name, None))

    return get


def _number(name: str) -> Getter:
    def get(info: Any) -> str | None:
        value = getattr(info, name, None)
        return None if value is None else str(int(value))

    return get


def _milliseconds(name: str) -> Getter:
    def get(info: Any) -> str | None:
        value = getattr(info, name, None)
        return None if value is None else str(int(value * 1000))

    return get


def _remote_ip(info: Any) -> str | None:
    address = _text(getattr(info, "downstream_remote_address", None))
    return None if address is None else strip_port(address)


def strip_port(address: str) -> str:
    """'1.2.3.4:5' -> '1.2.3.4', '[::1]:5' -> '::1'; anything without a port stays as it is."""
    if address.startswith("["):
        end = address.find("]")
        return address[1:end] if end > 0 else address
    host, sep, port = address.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return host
    return address


# One formatted second, reused: access logs render start_time for every request.
_last_second: list[Any] = [None, ""]


def _start_time(info: Any) -> str | None:
    start = getattr(info, "start_time", None)
    if start is None:
        return None
    second = int(start)
    if _last_second[0] != second:
        _last_second[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _last_second[0] = second
    return f"{_last_second[1]}.{int((start - second) * 1000):03d}Z"


def _flags(info: Any) -> str | None:
    flags = getattr(info, "response_flags", None)
    return flags or None


# The StreamInfo attributes read as plain text.
_ATTRIBUTES = (
    "protocol",
    "downstream_remote_address",
    "downstream_local_address",
    "listener",
    "route_name",
    "cluster",
    "upstream_host",
    "upstream_local_address",
    "request_id",
    "upstream_transport_failure_reason",  # why the upstream connect failed (TLS: the verify error)
)

for _name in _ATTRIBUTES:
    register(_name, _attribute(_name))
for _name in ("bytes_received", "bytes_sent", "response_code"):
    register(_name, _number(_name))
register("method", _method)
register("path", _path)
register("query", _query)
register("request_uri", lambda info: _text(_target(info)))
register("host", _request_header_getter(b"host"))
register("user_agent", _request_header_getter(b"user-agent"))
register("x_forwarded_for", _request_header_getter(b"x-forwarded-for"))
register("downstream_remote_ip", _remote_ip)
register("start_time", _start_time)
register("duration", _milliseconds("duration"))
register("upstream_service_time", _milliseconds("upstream_service_time"))
register("response_flags", _flags)
register("filter_chain_name", _attribute("filter_chain"))  # Envoy's FILTER_CHAIN_NAME
register("grpc_status", lambda info: None if getattr(info, "grpc_status", None) is None else str(info.grpc_status))
# TLS of the client connection (Envoy's REQUESTED_SERVER_NAME, DOWNSTREAM_TLS_VERSION, ...);
# missing on a plaintext connection.
register("requested_server_name", lambda info: None if getattr(info, "tls", None) is None else info.tls.server_name)
register("downstream_tls_version", lambda info: None if getattr(info, "tls", None) is None else info.tls.version)
register("downstream_tls_cipher", lambda info: None if getattr(info, "tls", None) is None else info.tls.cipher)
register("downstream_alpn", lambda info: None if getattr(info, "tls", None) is None else info.tls.alpn)


# The client's certificate on a mutual-TLS connection (Envoy's DOWNSTREAM_PEER_*), parsed once
# per connection when first asked for (network.tls.TlsSession.peer); missing without one.
def _peer(info: Any) -> Any:
    tls = getattr(info, "tls", None)
    return None if tls is None else tls.peer


def _peer_field(name: str, many: bool = False) -> Getter:
    def get(info: Any) -> str | None:
        peer = _peer(info)
        if peer is None:
            return None
        value = getattr(peer, name)
        return (",".join(value) or None) if many else value

    return get


def _peer_verified(info: Any) -> str | None:
    # (a certificate that fails verification ends the handshake: none is ever "FAILED" here)
    tls = getattr(info, "tls", None)
    if tls is None:
        return None
    return "NONE" if tls.peer is None else "SUCCESS"


for _name in ("subject", "issuer", "fingerprint_256", "serial"):
    register(f"downstream_peer_{_name}", _peer_field(_name))
register("downstream_peer_uri_san", _peer_field("uri_sans", many=True))
register("downstream_peer_dns_san", _peer_field("dns_sans", many=True))
register("downstream_peer_cert", _peer_field("pem"))
register("downstream_peer_verified", _peer_verified)
register_function("request_header", lambda arg: _request_header_getter(_header_argument(arg)))
register_function("response_header", lambda arg: _response_header_getter(_header_argument(arg)))
del _name
