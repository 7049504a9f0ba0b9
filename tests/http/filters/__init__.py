"""Tests of the built-in stream filters; helpers to build streams without parsing bytes."""

from __future__ import annotations

from typing import Any

from proxy.codec.http1 import RequestHead, ResponseHead
from proxy.http.filter import Stream
from proxy.http.stream_info import StreamInfo


def make_request(
    headers: list[tuple[bytes, bytes]] | None = None,
    method: bytes = b"GET",
    target: bytes = b"/",
    content_length: int | None = None,
    chunked: bool = False,
) -> Any:
    return RequestHead(method, target, b"1.1", list(headers or []), True, chunked, content_length, False, None)


def make_response(status: int = 200, headers: list[tuple[bytes, bytes]] | None = None) -> Any:
    return ResponseHead(status, b"", b"1.1", list(headers or []), True, False, None)


def make_stream(address: str = "127.0.0.1", request: Any = None, **request_kwargs: Any) -> Stream:
    if request is None:
        request = make_request(**request_kwargs)
    remote = address if address == "unix" else (f"[{address}]:5000" if ":" in address else f"{address}:5000")
    info = StreamInfo(request, "web", remote, "127.0.0.1:8080")
    return Stream(request, info, address)


def names(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [name for name, _ in headers]
