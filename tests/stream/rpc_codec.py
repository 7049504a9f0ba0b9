"""A small length-prefixed, multiplexed RPC protocol that exists only in the tests.

It proves that a new protocol plugs into the stream layer without touching it: a listener with
`protocol: tests.stream.rpc_codec:RpcServerCodec` gets the same router, filters, clusters,
retries, timeouts and access logs as HTTP, through `proxy.codec.mux.ServerCodec` alone.

Frame: u32 length of the rest | u32 stream id | u8 type | payload
  REQUEST  1  JSON {"method", "path", "headers": [[name, value], ...], "end": bool}
  DATA     2  body bytes
  END      3  JSON trailers [[name, value], ...] (the sender's side of the stream ends)
  RESET    4  u32 code
  RESPONSE 5  JSON {"status", "headers", "end": bool}
The requests are routed by their headers (e.g. `x-service`), as the tests' route tables say.
"""

from __future__ import annotations

import json
import struct

from proxy.codec.http1 import RequestHead, ResponseHead
from proxy.codec.mux import CodecError, DataReceived, RequestReceived, ServerCodec, StreamReset, TrailersReceived

REQUEST, DATA, END, RESET, RESPONSE = 1, 2, 3, 4, 5
_HEADER = struct.Struct("!IIB")
MAX_FRAME = 1 << 20


def frame(kind: int, stream_id: int, payload: bytes = b"") -> bytes:
    return _HEADER.pack(len(payload) + 5, stream_id, kind) + payload


def request_frame(stream_id: int, method: str, path: str, headers: list[tuple[str, str]], end: bool = True) -> bytes:
    return frame(REQUEST, stream_id, json.dumps({"method": method, "path": path, "headers": headers, "end": end}).encode())


def parse_frames(buffer: bytearray) -> list[tuple[int, int, bytes]]:
    """Complete frames at the front of `buffer`, removed from it: (type, stream id, payload)."""
    frames = []
    while len(buffer) >= 4:
        (length,) = struct.unpack_from("!I", buffer)
        if length < 5 or length > MAX_FRAME:
            raise ValueError(f"bad frame length {length}")
        if len(buffer) < 4 + length:
            break
        _, stream_id, kind = _HEADER.unpack_from(buffer)
        frames.append((kind, stream_id, bytes(buffer[9 : 4 + length])))
        del buffer[: 4 + length]
    return frames


def _pairs(items: list[list[str]]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in items]


class RpcServerCodec(ServerCodec):
    protocol = "TESTRPC/1"

    def __init__(self) -> None:
        self.inbound = bytearray()
        self.outbound = bytearray()

    def receive(self, data: bytes, now: float) -> list[object]:
        self.inbound += data
        try:
            frames = parse_frames(self.inbound)
        except ValueError as exc:
            raise CodecError(str(exc)) from exc
        events: list[object] = []
        for kind, stream_id, payload in frames:
            if kind == REQUEST:
                try:
                    message = json.loads(payload)
                    headers = _pairs(message["headers"])
                    method = message["method"].encode()
                    path = message["path"].encode()
                    end = bool(message["end"])
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    raise CodecError(f"bad request frame: {exc}") from exc
                if not any(n == b"host" for n, _ in headers):
                    headers.insert(0, (b"host", b"rpc"))  # the authority HTTP/1.1 upstreams need
                length = next((int(v) for n, v in headers if n == b"content-length"), None)
                # No length and more to come: "a body of unknown length" (chunked upstream).
                head = RequestHead(method, path, b"1.1", headers, True, not end and length is None, length, False, None)
                events.append(RequestReceived(stream_id, head, b"http", end))
            elif kind == DATA:
                events.append(DataReceived(stream_id, payload, False, 0))
            elif kind == END:
                trailers = _pairs(json.loads(payload)) if payload else []
                events.append(TrailersReceived(stream_id, trailers) if trailers else DataReceived(stream_id, b"", True, 0))
            elif kind == RESET:
                events.append(StreamReset(stream_id, struct.unpack("!I", payload)[0] if len(payload) == 4 else 0))
            else:
                raise CodecError(f"unknown frame type {kind}")
        return events

    def send_response(self, stream_id: int, head: ResponseHead, end_stream: bool) -> None:
        headers = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in head.headers]
        self.outbound += frame(RESPONSE, stream_id, json.dumps({"status": head.status, "headers": headers, "end": end_stream}).encode())

    def send_data(self, stream_id: int, data: bytes, end_stream: bool) -> int:
        if data:
            self.outbound += frame(DATA, stream_id, data)
        if end_stream:
            self.outbound += frame(END, stream_id)
        return len(data)

    def send_trailers(self, stream_id: int, trailers: list[tuple[bytes, bytes]]) -> None:
        items = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in trailers]
        self.outbound += frame(END, stream_id, json.dumps(items).encode())

    def reset(self, stream_id: int, code: int) -> None:
        self.outbound += frame(RESET, stream_id, struct.pack("!I", code))

    def data_to_send(self) -> bytes:
        data = bytes(self.outbound)
        self.outbound.clear()
        return data

    def outbound_backlog(self) -> int:
        return len(self.outbound)
