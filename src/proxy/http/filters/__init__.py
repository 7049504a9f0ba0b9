"""Built-in HTTP stream filters (see `proxy.http.filter.BUILTINS` and docs/filters.md).

This package also holds the small config-checking helpers the built-ins share. Each filter's
constructor checks its whole config and raises ValueError with the offending key's path, so
`build_chain` can report e.g. "filters[0] (fault): bad config: abort.status: ...".
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from proxy.codec.http1 import header_value  # re-exported for the filters
from proxy.config.values import Duration

__all__ = [
    "check_mapping",
    "get_bool",
    "get_int",
    "get_percentage",
    "get_duration",
    "get_str_list",
    "check_header_name",
    "header_value",
]

_MISSING = object()
# RFC 9110 token characters: what a header field name may be made of.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def check_mapping(value: Any, path: str, allowed: Iterable[str], required: Iterable[str] = ()) -> dict[str, Any]:
    """`value` must be a mapping whose keys are all in `allowed` and include every `required`."""
    where = f"{path}: " if path else ""
    if not isinstance(value, dict):
        raise ValueError(f"{where}expected a mapping, got {type(value).__name__}")
    allowed = tuple(allowed)
    unknown = [k for k in value if k not in allowed]
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        raise ValueError(f"{where}unknown key{'s' if len(unknown) > 1 else ''} {names}; allowed: {', '.join(allowed)}")
    for key in required:
        if key not in value:
            raise ValueError(f"{where}missing required key {key!r}")
    return value


def _path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def get_bool(config: dict[str, Any], key: str, default: bool, path: str = "") -> bool:
    value = config.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{_path(path, key)}: expected true or false, got {value!r}")
    return value


def get_int(
    config: dict[str, Any], key: str, default: Any = _MISSING, *, path: str = "", minimum: int | None = None, maximum: int | None = None
) -> int:
    value = config.get(key, default)
    if value is _MISSING:
        raise ValueError(f"{_path(path, key)}: required")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{_path(path, key)}: expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{_path(path, key)}: must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{_path(path, key)}: must be at most {maximum}, got {value}")
    return value


def get_percentage(config: dict[str, Any], key: str, default: float = 100.0, path: str = "") -> float:
    """A percentage 0-100 (int or float)."""
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise ValueError(f"{_path(path, key)}: expected a percentage from 0 to 100, got {value!r}")
    return float(value)


def get_duration(config: dict[str, Any], key: str, default: Any = _MISSING, *, path: str = "", positive: bool = True) -> float:
    value = config.get(key, default)
    if value is _MISSING:
        raise ValueError(f"{_path(path, key)}: required")
    if isinstance(value, Duration):
        seconds = float(value)
    else:
        try:
            seconds = float(Duration.parse(value))
        except ValueError as exc:
            raise ValueError(f"{_path(path, key)}: {exc}") from None
    if positive and seconds <= 0:
        raise ValueError(f"{_path(path, key)}: must be greater than zero, got {value!r}")
    return seconds


def get_str_list(config: dict[str, Any], key: str, path: str = "") -> list[str] | None:
    """A list of strings, or None when the key is absent."""
    if key not in config:
        return None
    value = config[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{_path(path, key)}: expected a list of strings, got {value!r}")
    return value


def check_header_name(value: Any, path: str) -> bytes:
    """A header name from config, lower-cased for case-insensitive comparison."""
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise ValueError(f"{path}: {value!r} is not a valid header name")
    return value.lower().encode("ascii")


