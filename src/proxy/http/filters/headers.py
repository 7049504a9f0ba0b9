"""Add, replace and remove request and response headers; values may use `%variables%`.

    filters:
      - type: headers
        config:
          request_headers_to_add:
            - {name: x-client-ip, value: "%downstream_remote_ip%"}      # replaces any x-client-ip
            - {name: x-tag, value: edge, append: true}                  # adds another x-tag line
          request_headers_to_remove: [x-debug]
          response_headers_to_add:
            - {name: x-served-by, value: "%listener%/%upstream_host%"}
          response_headers_to_remove: [server]

Removals come first, then additions in the order written (as in Envoy). `append: false` (the
default) replaces: existing values of that name are removed before the new one is added.
Names are matched case-insensitively. A value with variables that renders empty (the variable
is missing) is skipped, as Envoy does; a constant empty value is added as written. Use `%%` for
a literal '%'. Framing headers (content-length, transfer-encoding) may not be touched, nor
`host` removed. Response headers apply to local replies too.
"""

from __future__ import annotations

from typing import Any

from proxy.http.filter import LocalReply, Stream, StreamFilter
from proxy.http.filters import check_header_name, check_mapping, get_bool

_FRAMING = (b"content-length", b"transfer-encoding")
_UNSAFE = str.maketrans("", "", "\r\n\0")


def _encode(text: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


def _compile(text: str, path: str) -> Any:
    try:
        from proxy.variables import compile_template
    except ImportError:  # pragma: no cover - proxy.variables is part of the package
        if "%" in text:
            raise ValueError(f"{path}: %variables% are not available in this build") from None
        return None
    try:
        return compile_template(text)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


class _Add:
    """One header to add: `value` holds bytes for a constant, else `template` renders it."""

    __slots__ = ("name", "lower", "value", "template", "append")

    def __init__(self, entry: Any, path: str) -> None:
        check_mapping(entry, path, ("name", "value", "append"), required=("name", "value"))
        self.lower = check_header_name(entry["name"], f"{path}.name")
        if self.lower in _FRAMING:
            raise ValueError(f"{path}.name: {entry['name']!r} is set by the proxy from the message framing")
        self.name = entry["name"].encode("ascii")  # the case as written
        value = entry["value"]
        if not isinstance(value, str):  # as route header values: quote numbers in YAML
            raise ValueError(f"{path}.value: expected a string, got {value!r}")
        if any(c in value for c in "\r\n\0"):
            raise ValueError(f"{path}.value: must not contain CR, LF or NUL")
        self.append = get_bool(entry, "append", False, path)
        template = _compile(value, f"{path}.value")
        if template is None:  # no variables module: a plain constant
            self.template = None
            self.value: bytes | None = _encode(value)
        elif template.is_constant:
            self.template = None
            self.value = template.constant_bytes
        else:
            self.template = template
            self.value = None


def _adds(config: dict[str, Any], key: str) -> tuple[_Add, ...]:
    entries = config.get(key, [])
    if not isinstance(entries, list):
        raise ValueError(f"{key}: expected a list of {{name, value, append}} entries, got {entries!r}")
    return tuple(_Add(entry, f"{key}[{i}]") for i, entry in enumerate(entries))


def _removes(config: dict[str, Any], key: str) -> frozenset[bytes]:
    names = config.get(key, [])
    if not isinstance(names, list):
        raise ValueError(f"{key}: expected a list of header names, got {names!r}")
    result = set()
    for i, name in enumerate(names):
        lower = check_header_name(name, f"{key}[{i}]")
        if lower in _FRAMING or (lower == b"host" and key.startswith("request")):
            raise ValueError(f"{key}[{i}]: {name!r} cannot be removed")
        result.add(lower)
    return frozenset(result)


def _apply(headers: list[tuple[bytes, bytes]], remove: frozenset[bytes], add: tuple[_Add, ...], info: Any) -> None:
    """Mutate `headers` in place."""
    if remove:
        headers[:] = [h for h in headers if h[0].lower() not in remove]
    for entry in add:
        value = entry.value
        if value is None:
            value = entry.template.render_bytes(info)
            if not value:
                continue
            if b"\r" in value or b"\n" in value or b"\0" in value:
                value = value.decode("latin-1").translate(_UNSAFE).encode("latin-1")
        if not entry.append:
            lower = entry.lower
            headers[:] = [h for h in headers if h[0].lower() != lower]
        headers.append((entry.name, value))


class HeadersFilter(StreamFilter):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        check_mapping(
            config,
            "",
            ("request_headers_to_add", "request_headers_to_remove", "response_headers_to_add", "response_headers_to_remove"),
        )
        self.request_add = _adds(config, "request_headers_to_add")
        self.request_remove = _removes(config, "request_headers_to_remove")
        self.response_add = _adds(config, "response_headers_to_add")
        self.response_remove = _removes(config, "response_headers_to_remove")
        if not (self.request_add or self.request_remove or self.response_add or self.response_remove):
            raise ValueError("nothing to do: give request_headers_to_add/_remove and/or response_headers_to_add/_remove")

    async def on_request(self, stream: Stream) -> LocalReply | None:
        if self.request_add or self.request_remove:
            _apply(stream.request.headers, self.request_remove, self.request_add, stream.info)
        return None

    async def on_response(self, stream: Stream) -> None:
        response = stream.response
        if response is not None and (self.response_add or self.response_remove):
            _apply(response.headers, self.response_remove, self.response_add, stream.info)
