"""A raw HTTP/2 peer for the tests: frames built with hyperframe and hpack, valid or not.

    f = Frames()
    codec.receive(f.preface() + f.headers(1, REQUEST, end_stream=True), now)
    frames = parse(codec.data_to_send());  goaway(frames) -> (last id, code) or None

`raw` builds any frame from its parts (wrong lengths, flags, stream ids), so the tests can send
what no well-behaved library would.
"""

from __future__ import annotations

import struct

import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)

REQUEST = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b":authority", b"example.com")]


class Frames:
    """Frames from one client (or server): one HPACK encoder, so blocks index as a peer's do."""

    def __init__(self) -> None:
        self.encoder = hpack.Encoder()

    def preface(self, **settings: int) -> bytes:
        return PREFACE + self.settings(**settings)

    def settings(self, ack: bool = False, **values: int) -> bytes:
        f = SettingsFrame(0)
        if ack:
            f.flags.add("ACK")
        codes = {"header_table_size": 1, "enable_push": 2, "max_concurrent_streams": 3, "initial_window_size": 4, "max_frame_size": 5, "max_header_list_size": 6, "enable_connect_protocol": 8}
        for name, value in values.items():
            f.settings[codes[name]] = value
        return f.serialize()

    def block(self, fields: list[tuple[bytes, bytes]]) -> bytes:
        return self.encoder.encode(fields)

    def headers(self, sid: int, fields: list[tuple[bytes, bytes]], end_stream: bool = False, end_headers: bool = True) -> bytes:
        return self.headers_block(sid, self.block(fields), end_stream, end_headers)

    def headers_block(self, sid: int, block: bytes, end_stream: bool = False, end_headers: bool = True) -> bytes:
        f = HeadersFrame(sid)
        f.data = block
        if end_stream:
            f.flags.add("END_STREAM")
        if end_headers:
            f.flags.add("END_HEADERS")
        return f.serialize()

    def continuation(self, sid: int, block: bytes, end_headers: bool = False) -> bytes:
        f = ContinuationFrame(sid)
        f.data = block
        if end_headers:
            f.flags.add("END_HEADERS")
        return f.serialize()

    def data(self, sid: int, data: bytes, end_stream: bool = False, pad: int | None = None) -> bytes:
        f = DataFrame(sid)
        f.data = data
        if end_stream:
            f.flags.add("END_STREAM")
        if pad is not None:
            f.flags.add("PADDED")
            f.pad_length = pad
        return f.serialize()

    def rst(self, sid: int, code: int = 8) -> bytes:
        f = RstStreamFrame(sid)
        f.error_code = code
        return f.serialize()

    def ping(self, data: bytes = b"\0" * 8, ack: bool = False) -> bytes:
        f = PingFrame(0)
        f.opaque_data = data
        if ack:
            f.flags.add("ACK")
        return f.serialize()

    def priority(self, sid: int, depends_on: int = 0, weight: int = 15) -> bytes:
        f = PriorityFrame(sid)
        f.depends_on = depends_on
        f.stream_weight = weight
        return f.serialize()

    def window_update(self, sid: int, increment: int) -> bytes:
        f = WindowUpdateFrame(sid)
        f.window_increment = increment
        return f.serialize()

    def goaway(self, last: int, code: int = 0) -> bytes:
        f = GoAwayFrame(0)
        f.last_stream_id = last
        f.error_code = code
        return f.serialize()


def raw(kind: int, flags: int, sid: int, payload: bytes, length: int | None = None) -> bytes:
    """Any frame: `length` may lie about the payload."""
    n = len(payload) if length is None else length
    return struct.pack("!I", n)[1:] + struct.pack("!BBI", kind, flags, sid) + payload


def parse(data: bytes, client_preface: bool = False) -> list[Frame]:
    """The frames in what a codec sent (after the client preface if there is one)."""
    if client_preface:
        assert data.startswith(PREFACE)
        data = data[len(PREFACE) :]
    frames = []
    view = memoryview(data)
    while view:
        f, length = Frame.parse_frame_header(view[:9])
        f.parse_body(view[9 : 9 + length])
        frames.append(f)
        view = view[9 + length :]
    return frames


def goaway(frames: list[Frame]) -> tuple[int, int] | None:
    """(last stream id, error code) of the GOAWAY among `frames`, None if there is none."""
    for f in frames:
        if isinstance(f, GoAwayFrame):
            return f.last_stream_id, f.error_code
    return None


def resets(frames: list[Frame]) -> dict[int, int]:
    """RST_STREAMs among `frames`: stream id -> error code."""
    return {f.stream_id: f.error_code for f in frames if isinstance(f, RstStreamFrame)}


def decoded_headers(frames: list[Frame], decoder: hpack.Decoder) -> list[tuple[int, list[tuple[bytes, bytes]]]]:
    """(stream id, fields) of every HEADERS frame, decoded in order with `decoder`."""
    return [(f.stream_id, decoder.decode(f.data, raw=True)) for f in frames if isinstance(f, HeadersFrame)]
