"""Which downstream codec serves an HTTP-family listener, by its `protocol`.

`http1` is the HTTP/1.1 connection of proxy.http.http1_server. Anything else names a
multiplexed server codec (proxy.codec.mux.ServerCodec): a built-in name, or a
`package.module:Class` dotted path, the way filters are named, so a deployment (or a test) can
bring its own protocol to the same router, filters, clusters and logs (MOSN's XProtocol idea).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from proxy.codec.mux import ServerCodec
from proxy.plugins import PluginError, load_class, split_target

if TYPE_CHECKING:
    from proxy.codec.http2 import Http2Settings

HTTP1 = "http1"
HTTP2 = "http2"
AUTO_HTTP = "http"  # HTTP/1.1 and HTTP/2 on one port, by the connection preface
L4 = "tcp"
# Built-in multiplexed codecs by name.
BUILTINS: dict[str, str] = {HTTP2: "proxy.codec.http2:ServerConnection"}  # prior-knowledge h2c


class CodecLoadError(Exception):
    pass


def names() -> list[str]:
    """The protocol names a listener may use (besides a dotted path)."""
    return [L4, HTTP1, *BUILTINS, *([AUTO_HTTP] if HTTP2 in BUILTINS else [])]


def is_known(protocol: str) -> bool:
    if protocol == AUTO_HTTP:
        return HTTP2 in BUILTINS
    return protocol in (L4, HTTP1) or protocol in BUILTINS or ":" in protocol


def load_server_codec(protocol: str) -> Callable[[], ServerCodec]:
    """The codec class a listener's `protocol` names; raises CodecLoadError saying why not."""
    if protocol == AUTO_HTTP:
        protocol = HTTP2  # (its HTTP/1.1 side is http1_server's)
    target = split_target(BUILTINS.get(protocol, protocol))
    if target is None:
        raise CodecLoadError(f"unknown protocol {protocol!r}: use {', '.join(names())} or 'package.module:Codec'")
    try:
        return load_class(*target, ServerCodec, f"protocol {protocol!r}", "a proxy.codec.mux.ServerCodec")  # type: ignore[no-any-return]
    except PluginError as exc:
        raise CodecLoadError(str(exc)) from exc


def server_codec_factory(listener: Any) -> Callable[[], ServerCodec]:
    """A zero-argument maker of the listener's server codec, with the listener's settings
    bound where the codec is ours (HTTP/2: `http2:` and `http.max_header_count`)."""
    from proxy.codec.http2 import ServerConnection

    codec = load_server_codec(listener.protocol)
    if codec is ServerConnection:
        return _WithSettings(ServerConnection, http2_settings(listener))  # type: ignore[return-value]
    return codec


class _WithSettings:
    """A codec class with its settings bound: `()` makes a connection, `from_state(state)`
    restores one (a hot upgrade's adopted connection gets the listener's budgets too)."""

    def __init__(self, codec: Any, settings: Any) -> None:
        self.codec = codec
        self.settings = settings

    def __call__(self) -> ServerCodec:
        return self.codec(self.settings)  # type: ignore[no-any-return]

    def from_state(self, state: dict[str, Any]) -> ServerCodec:
        return self.codec.from_state(state, self.settings)  # type: ignore[no-any-return]


def http2_settings(listener: Any) -> Http2Settings:
    """The HTTP/2 codec settings of a listener's config."""
    from proxy.codec.http2 import Http2Settings

    h2 = listener.http2
    return Http2Settings(
        max_concurrent_streams=h2.max_concurrent_streams,
        initial_stream_window_size=h2.initial_stream_window_size,
        initial_connection_window_size=h2.initial_connection_window_size,
        max_header_list_size=h2.max_header_list_size,
        max_header_fields=listener.http.max_header_count,
        max_outbound_control_frames=h2.max_outbound_control_frames,
        enable_connect_protocol=h2.allow_extended_connect,
    )
