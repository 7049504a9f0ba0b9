"""Config value types parsed from strings: durations (any, or above zero) and addresses.

Each parser raises ValueError with a message fit to show an operator; the loader adds the
path and line. `decode_hook` lets msgspec build these types while converting.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h)\s*$")
_UNIT_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class Duration(float):
    """A duration in seconds, written in config as "250ms", "5s", "2m", "1h"."""

    __slots__ = ()

    @classmethod
    def parse(cls, value: Any) -> Duration:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"expected a duration like '250ms', '5s' or '2m', got {type(value).__name__}")
        if isinstance(value, (int, float)):
            # A bare number is ambiguous (seconds? ms?): ask for a unit, as Envoy does for strings.
            raise ValueError(f"duration {value!r} needs a unit, e.g. '{value}s' or '{value}ms'")
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"invalid duration {value!r}: expected a number and a unit (us, ms, s, m, h), e.g. '250ms'")
        return cls(float(match.group(1)) * _UNIT_SECONDS[match.group(2)])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({float(self)}s)"


class ZeroDuration(ValueError):
    """A zero where only a duration above zero makes sense."""


class PositiveDuration(Duration):
    """A Duration above zero: timeouts and intervals where "0s" would be a bug (a connect that
    can never succeed, a busy loop) or ambiguous (Envoy reads 0 as "no timeout"; here that is
    null, where a timeout may be off)."""

    __slots__ = ()

    @classmethod
    def parse(cls, value: Any) -> PositiveDuration:
        duration = super().parse(value)
        if duration <= 0:
            raise ZeroDuration(f"duration {value!r} must be more than 0")
        return cls(duration)


class Address:
    """Where to listen or connect: TCP host:port (IPv4/IPv6/name) or a Unix socket path."""

    __slots__ = ("text", "family", "host", "port", "path")

    def __init__(self, text: str, family: int, host: str = "", port: int = 0, path: str = "") -> None:
        self.text = text
        self.family = family
        self.host = host
        self.port = port
        self.path = path

    @property
    def is_unix(self) -> bool:
        return self.family == socket.AF_UNIX

    @property
    def sockaddr(self) -> Any:
        """The address as the socket module wants it."""
        return self.path if self.is_unix else (self.host, self.port)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Address) and (self.family, self.host, self.port, self.path) == (
            other.family,
            other.host,
            other.port,
            other.path,
        )

    def __hash__(self) -> int:
        return hash((self.family, self.host, self.port, self.path))

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Address({self.text!r})"

    @classmethod
    def parse(cls, value: Any) -> Address:
        if not isinstance(value, str):
            raise ValueError(f"expected an address string ('host:port', '[v6]:port' or 'unix:/path'), got {type(value).__name__}")
        text = value.strip()
        if text.startswith("unix:"):
            path = text[len("unix:") :]
            if not path.startswith("/"):
                raise ValueError(f"invalid address {value!r}: a unix socket path must be absolute, e.g. 'unix:/run/proxy.sock'")
            if len(path.encode()) > 107:
                raise ValueError(f"invalid address {value!r}: unix socket path longer than 107 bytes")
            return cls(text, socket.AF_UNIX, path=path)
        if text.startswith("["):
            end = text.find("]")
            if end < 0 or text[end + 1 : end + 2] != ":":
                raise ValueError(f"invalid address {value!r}: expected '[v6-address]:port'")
            host, port_text = text[1:end], text[end + 2 :]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"invalid address {value!r}: {host!r} is not an IPv6 address") from None
            return cls(text, socket.AF_INET6, host=host, port=_parse_port(value, port_text))
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"invalid address {value!r}: expected 'host:port', '[v6]:port' or 'unix:/path'")
        if ":" in host:
            raise ValueError(f"invalid address {value!r}: write IPv6 addresses in brackets, e.g. '[::1]:8080'")
        port = _parse_port(value, port_text)
        try:
            ipaddress.IPv4Address(host)
            family = socket.AF_INET
        except ValueError:
            if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9\-.]*[A-Za-z0-9])?", host):
                raise ValueError(f"invalid address {value!r}: {host!r} is neither an IP address nor a host name") from None
            family = socket.AF_UNSPEC  # a name: resolved when used
        return cls(text, family, host=host, port=port)


def _parse_port(value: str, port_text: str) -> int:
    if not port_text.isdigit():
        raise ValueError(f"invalid address {value!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"invalid address {value!r}: port {port} is out of range 0-65535")
    return port


CUSTOM_TYPES: dict[type, Any] = {Duration: Duration.parse, PositiveDuration: PositiveDuration.parse, Address: Address.parse}


def decode_hook(type_: type, value: Any) -> Any:
    """msgspec dec_hook: build Duration and Address from their config strings."""
    parser = CUSTOM_TYPES.get(type_)
    if parser is None:
        raise NotImplementedError(type_)
    return parser(value)
