"""The HTTP stream filter API: per-listener chains of Python filters around the router.

A filter is a class built once per listener from its config; its hooks are called per request:

    class AddTenant(StreamFilter):
        def __init__(self, config: dict) -> None:
            self.header = config.get("header", "x-tenant").encode()

        async def on_request(self, stream: Stream) -> LocalReply | None:
            if header_value(stream.request.headers, self.header) is None:  # proxy.codec.http1
                return LocalReply(400, "missing tenant")      # answer locally, stop here
            return None                                        # continue down the chain

        async def on_response(self, stream: Stream) -> None:
            stream.response.headers.append((b"x-filtered", b"1"))

Listed in config as `filters: [{type: mypkg.filters:AddTenant, config: {header: x-tenant}}]`.

The three outcomes of Envoy's decoder filters map onto an async hook: return None to continue,
return a LocalReply to answer locally (later filters and the router are skipped), or *stop* by
awaiting inside the hook (a delay, a call out): the chain resumes when the hook returns.

Request hooks run in chain order, response hooks in reverse. Only the hooks a filter overrides
are called: the chain is split per hook when it is built, so an unused hook costs nothing.
Body hooks see each chunk and may replace it (return bytes) or answer locally (before the
response has started). Header fields are (bytes, bytes) tuples; a filter may also leave lists,
str (sent as latin-1) or bytearray: the chain makes heads canonical after its filters ran.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mypy_extensions import mypyc_attr

from proxy.plugins import PluginError, load_class, split_target

if TYPE_CHECKING:
    from proxy.codec.http1 import RequestHead, ResponseHead
    from proxy.http.stream_info import StreamInfo


class LocalReply:
    """A response made by the proxy itself (a filter, the router, a limit)."""

    __slots__ = ("status", "body", "headers", "flag", "close")

    def __init__(
        self,
        status: int,
        body: str | bytes = b"",
        headers: list[tuple[bytes, bytes]] | None = None,
        flag: str | None = None,
        close: bool = False,
    ) -> None:
        self.status = status
        self.body = body.encode() if isinstance(body, str) else body
        self.headers = canonical_headers(headers) if headers else []
        self.flag = flag  # response flag recorded for the access log
        self.close = close  # close the downstream connection after the reply


class Stream:
    """What a filter sees of one request. `request`/`response` heads are mutable."""

    __slots__ = ("request", "response", "info", "route", "downstream_address")

    def __init__(self, request: RequestHead, info: StreamInfo, downstream_address: str) -> None:
        self.request = request
        self.response: ResponseHead | None = None
        self.info = info
        self.route: Any = None  # the matched route, once routing happened
        self.downstream_address = downstream_address  # the client IP (no port), for ACL-style filters

    @property
    def state(self) -> dict[str, Any]:
        """Per-request scratch space shared by filters."""
        if self.info.filter_state is None:
            self.info.filter_state = {}
        return self.info.filter_state


@mypyc_attr(allow_interpreted_subclasses=True)  # filters are Python classes
class StreamFilter:
    """Base class: override the hooks you need. One instance serves every request of a listener,
    so keep per-request state on `stream.state`, not on `self`."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    async def on_request(self, stream: Stream) -> LocalReply | None:
        return None

    async def on_request_body(self, stream: Stream, data: bytes, end: bool) -> bytes | LocalReply:
        return data

    async def on_response(self, stream: Stream) -> None:
        return None

    async def on_response_body(self, stream: Stream, data: bytes, end: bool) -> bytes:
        return data


def _as_bytes(value: Any) -> bytes:
    if type(value) is bytes:
        return value
    if isinstance(value, str):
        return value.encode("latin-1")  # what an HTTP/1 field can carry
    return bytes(value)  # bytearray, memoryview, bytes subclasses


def canonical_headers(headers: Any) -> list[tuple[bytes, bytes]]:
    """Headers as the codec takes them: a list of (bytes, bytes) tuples. Filters may leave
    lists for tuples, str or bytearray for bytes; the compiled codec (scripts/build-native)
    checks types where Python would have let them through. The common case costs one pass."""
    if type(headers) is list:
        for field in headers:
            if type(field) is not tuple or len(field) != 2 or type(field[0]) is not bytes or type(field[1]) is not bytes:
                break
        else:
            return headers
    return [(_as_bytes(name), _as_bytes(value)) for name, value in headers]


# (`Any`: compiled code checks a field's declared type as it reads it, and these fields are
# exactly the ones a filter may have left in another type.)
def _canonical_request(head: Any) -> None:
    head.headers = canonical_headers(head.headers)
    if type(head.method) is not bytes:
        head.method = _as_bytes(head.method)
    if type(head.target) is not bytes:
        head.target = _as_bytes(head.target)


def _canonical_response(head: Any) -> None:
    head.headers = canonical_headers(head.headers)
    if type(head.reason) is not bytes:
        head.reason = b"" if head.reason is None else _as_bytes(head.reason)


def _overrides(filt: StreamFilter, hook: str) -> bool:
    return getattr(type(filt), hook) is not getattr(StreamFilter, hook)


class FilterChain:
    """A listener's filters, split per hook."""

    __slots__ = ("filters", "request", "request_body", "response", "response_body")

    def __init__(self, filters: list[StreamFilter]) -> None:
        self.filters = filters
        self.request = [f for f in filters if _overrides(f, "on_request")]
        self.request_body = [f for f in filters if _overrides(f, "on_request_body")]
        self.response = [f for f in reversed(filters) if _overrides(f, "on_response")]
        self.response_body = [f for f in reversed(filters) if _overrides(f, "on_response_body")]

    def __bool__(self) -> bool:
        return bool(self.filters)

    async def run_request(self, stream: Stream) -> LocalReply | None:
        for f in self.request:
            reply = await f.on_request(stream)
            if reply is not None:
                return reply
        _canonical_request(stream.request)
        return None

    async def run_request_body(self, stream: Stream, data: bytes, end: bool) -> bytes | LocalReply:
        for f in self.request_body:
            result = await f.on_request_body(stream, data, end)
            if isinstance(result, LocalReply):
                return result
            data = result
        return data

    async def run_response(self, stream: Stream) -> None:
        for f in self.response:
            await f.on_response(stream)
        if stream.response is not None:
            _canonical_response(stream.response)

    async def run_response_body(self, stream: Stream, data: bytes, end: bool) -> bytes:
        for f in self.response_body:
            data = await f.on_response_body(stream, data, end)
        return data


BUILTINS: dict[str, str] = {
    "fault": "proxy.http.filters.fault:FaultFilter",
    "ip_access": "proxy.http.filters.ip_access:IpAccessFilter",
    "payload_limit": "proxy.http.filters.payload_limit:PayloadLimitFilter",
    "local_rate_limit": "proxy.http.filters.local_rate_limit:LocalRateLimitFilter",
    "headers": "proxy.http.filters.headers:HeadersFilter",
}


class FilterLoadError(Exception):
    pass


def load_filter_class(type_name: str) -> Callable[[dict[str, Any]], StreamFilter]:
    """Resolve a built-in name or a `package.module:Class` dotted path."""
    target = split_target(BUILTINS.get(type_name, type_name))
    if target is None:
        raise FilterLoadError(f"unknown filter type {type_name!r}: use a built-in ({', '.join(BUILTINS)}) or 'package.module:Class'")
    try:
        return load_class(*target, StreamFilter, f"filter {type_name!r}", "a StreamFilter subclass")  # type: ignore[no-any-return]
    except PluginError as exc:
        raise FilterLoadError(str(exc)) from exc


def build_chain(configs: list[Any]) -> FilterChain:
    """Build a listener's chain from its `filters:` config; raises FilterLoadError (or the
    filter's own ValueError for a bad config) naming the filter."""
    filters = []
    for index, fc in enumerate(configs):
        cls = load_filter_class(fc.type)
        try:
            filters.append(cls(dict(fc.config)))
        except Exception as exc:  # a third-party filter may raise anything: name it
            raise FilterLoadError(f"filters[{index}] ({fc.type}): bad config: {exc}") from exc
    return FilterChain(filters)


def load_config(path: str) -> tuple[Any, str]:
    """Read and check a config file the way `proxy run` will use it: the model, plus every
    listener's filter chain built once, so a filter that does not load or rejects its config
    is a config error with its path. Returns (config, the text read). `proxy check`, the
    start and every reload go through here."""
    from proxy.config import ConfigError, ConfigIssue, read
    from proxy.http import codecs

    config, text = read(path)
    issues = []
    for i, listener in enumerate(config.listeners):
        if listener.protocol not in (codecs.L4, codecs.HTTP1):
            try:
                codecs.load_server_codec(listener.protocol)
            except codecs.CodecLoadError as exc:
                issues.append(ConfigIssue(f"listeners[{i}].protocol", str(exc), None, path))
        for j, fc in enumerate(listener.filters):
            try:
                build_chain([fc])
            except FilterLoadError as bad_filter:
                issues.append(ConfigIssue(f"listeners[{i}].filters[{j}]", str(bad_filter).split(": ", 1)[-1], None, path))
    if issues:
        raise ConfigError(issues)
    return config, text
