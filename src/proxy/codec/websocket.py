"""WebSocket frame boundaries, for a proxy that relays the frames unparsed (sans-IO).

A tunnel after `101 Switching Protocols` is relayed as bytes. A WebSocket over terminated TLS
cannot move to the next generation in a hot upgrade (OpenSSL holds its state), so at the drain
deadline the proxy ends it as a server going away would: a Close frame with 1001 to each side
(RFC 6455 §7.4.1), written between two frames, never inside one. This tracks where frames end
in one direction of the relay and makes those Close frames; it decodes only frame headers
(RFC 6455 §5.2), never payloads.
"""

from __future__ import annotations

import os

GOING_AWAY = 1001
_OPCODE_CLOSE = 0x8


class FrameBoundaries:
    """Where the frames of one direction end, as its bytes are relayed."""

    __slots__ = ("_header", "_remaining")

    def __init__(self) -> None:
        self._header = bytearray()  # a frame header that has arrived in part
        self._remaining = 0  # payload bytes of the current frame still to come

    @property
    def at_boundary(self) -> bool:
        """Whether everything fed so far ends at the end of a frame."""
        return self._remaining == 0 and not self._header

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Account for `data`, relayed."""
        view = memoryview(data)
        at = 0
        while at < len(view):
            at = self._step(view, at)

    def to_boundary(self, data: bytes | bytearray | memoryview) -> int | None:
        """How many bytes of `data` finish the frame in progress (0 at a boundary), accounted
        for; None if it does not end within `data` (all of it accounted for)."""
        view = memoryview(data)
        at = 0
        while not self.at_boundary:
            if at == len(view):
                return None
            at = self._step(view, at)
        return at

    def _step(self, view: memoryview, at: int) -> int:
        """Take the next piece of `view` from `at` (payload bytes, or one header byte)."""
        if self._remaining:
            step = min(self._remaining, len(view) - at)
            self._remaining -= step
            return at + step
        header = self._header
        header.append(view[at])
        size = _header_size(header)
        if size is not None and len(header) == size:
            self._remaining = _payload_length(header)
            header.clear()
        return at + 1


def _header_size(header: bytearray) -> int | None:
    """The full header's length once its first two bytes are in (None before)."""
    if len(header) < 2:
        return None
    length = header[1] & 0x7F
    size = 2 + (2 if length == 126 else 8 if length == 127 else 0)
    return size + (4 if header[1] & 0x80 else 0)


def _payload_length(header: bytearray) -> int:
    length = header[1] & 0x7F
    if length == 126:
        return int.from_bytes(header[2:4], "big")
    if length == 127:
        return int.from_bytes(header[2:10], "big")
    return length


def close_frame(code: int = GOING_AWAY, reason: bytes = b"going away", masked: bool = False) -> bytes:
    """A Close frame: unmasked from a server, masked (a fresh key) from a client."""
    payload = code.to_bytes(2, "big") + reason[:123]
    head = bytes([0x80 | _OPCODE_CLOSE])
    if not masked:
        return head + bytes([len(payload)]) + payload
    key = os.urandom(4)
    return head + bytes([0x80 | len(payload)]) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))
