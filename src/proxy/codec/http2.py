"""HTTP/2 codec, sans-IO, both sides: frames in and out over h2, heads as the HTTP/1 codec's.

    server = ServerConnection(Http2Settings());  server.initiate()
    server.receive(data, now) -> [RequestReceived, DataReceived, TrailersReceived, StreamReset,
                                  WindowOpened, GoAwayReceived, SettingsChanged, PingAcked]
    server.send_response(sid, head, end_stream); server.send_data(sid, data, end_stream) -> taken
    server.send_trailers(sid, trailers); .reset(sid, code); .acknowledge(sid, n); .goaway(code, last)
    server.ping(data); server.data_to_send() -> bytes; .send_window(sid); .open_streams; ...

    client = ClientConnection(Http2Settings());  client.initiate()
    sid = client.send_request(head, scheme, end_stream)   (raises NoStreamAvailable)
    client.receive(data, now) -> [InformationalReceived, ResponseReceived, DataReceived,
                                  TrailersReceived, StreamReset, WindowOpened, GoAwayReceived,
                                  SettingsChanged, PingAcked]
    client.available_streams; the same send_*/reset/acknowledge/ping/data_to_send

The server is a `proxy.codec.mux.ServerCodec` and emits that module's events; the client
reuses them and adds its own. Heads are `RequestHead`/`ResponseHead` (proxy.codec.http1): the
layer above never sees a pseudo-header. How fields map both ways is _http2_heads' job.

h2 keeps the connection and stream state machines, HPACK and flow-control windows; this module
takes over the frame handlers where a proxy needs something else from h2:

* Malformed messages (RFC 9113 §8.1.1) reset only their stream (PROTOCOL_ERROR, StreamReset
  with remote=False): h2 would end the whole connection for a bad content-length.
* Headers are checked here, once, by regex over the joined names and values, with h2's own
  validation and normalisation off: about a quarter of h2's per-request cost, for stricter
  checks (an HTTP/1 hop must be able to carry what we accept).
* A new stream beyond max_concurrent_streams is refused (REFUSED_STREAM, safe to retry), not a
  GOAWAY; one after our final GOAWAY too.
* GOAWAY both ways is ours: h2 would close its state machine and refuse to finish the streams
  still open, which a graceful drain (first 2^31-1, then the real last id) must do.
* Flow control: nothing is acknowledged on receipt; `acknowledge` opens the windows as the layer
  above consumes. Windows: 1 MiB per stream and 4 MiB per connection by default, Envoy's
  256 MiB / 1 GiB would let one client make us buffer a gigabyte. A 4 MiB connection window
  still fills a 10 Gbit/s link at 3 ms RTT; four concurrent uploads get their full window each.

Hardening, counted per connection; each violation queues GOAWAY and raises Http2Error:

  Rapid Reset (CVE-2023-44487): client resets of streams we were still answering, a token
      bucket (max_client_resets, client_resets_per_second) and, past premature_reset_min_streams
      streams, a reset ratio over 1/2 (Envoy's rule) -> ENHANCE_YOUR_CALM
  CONTINUATION flood (CVE-2024-27316): a header block is bounded before it is decoded: bytes
      (max_header_list_size) -> ENHANCE_YOUR_CALM, frames (h2: 64) -> PROTOCOL_ERROR
  HPACK bomb / big header lists: the decoded size (max_header_list_size) -> ENHANCE_YOUR_CALM;
      decoding errors -> COMPRESSION_ERROR
  PING and SETTINGS floods (CVE-2019-9512/9515): token buckets -> ENHANCE_YOUR_CALM
  outbound control frames we must queue (PING/SETTINGS acks, our RST_STREAMs: the reset flood
      of CVE-2019-9514) while the caller does not take data_to_send():
      max_outbound_control_frames -> ENHANCE_YOUR_CALM
  empty frames (CVE-2019-9518): consecutive DATA/HEADERS/CONTINUATION with no payload and no
      end flag, Envoy's max_consecutive_inbound_frames_with_empty_payload -> ENHANCE_YOUR_CALM
  PRIORITY floods (CVE-2019-9513): at most max_priority_frames_per_stream per opened stream
  WINDOW_UPDATE floods: Envoy's 5 + 2 * (streams + max_window_updates_per_data_frame * DATA
      frames sent)
  stream exhaustion: streams refused for max_concurrent_streams, a token bucket (a client
      that keeps trying) -> ENHANCE_YOUR_CALM
  (0-length header names, CVE-2019-9516, are malformed: the stream is reset.)

Time is passed in (`receive(data, now)`), so the codec reads no clock and tests are exact.

Cost and configuration: h2 runs with header validation, normalisation and encoding off (our
checks replace them), our receive loop and frame writers around its state machines, and the
faster HPACK coders of _hpack; about 0.4x the CPU of h2 alone with validation off
(tests/codec/bench_http2.py). h2's internals are used: pyproject pins the verified versions.

Hot upgrade: `export_state()` on an idle connection (no open stream) -> a JSON-able dict;
`ServerConnection.from_state(state, settings)` / `ClientConnection.from_state` carry on where it
stopped, HPACK tables and windows included, without re-sending anything (_http2_state). A busy
server connection gets there with `hold_streams()`: frames that would open streams are kept, not
processed, until `release_held()` hands them back as bytes for the next owner (_http2_hold).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, ClassVar

from h2.config import H2Configuration
from h2.connection import AllowedStreamIDs, ConnectionInputs, ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import RemoteSettingsChanged, WindowUpdated
from h2.events import StreamReset as H2StreamReset
from h2.exceptions import (
    DenialOfServiceError,
    InvalidBodyLengthError,
    NoSuchStreamError,
    ProtocolError,
    StreamClosedError,
)
from h2.frame_buffer import FrameBuffer
from h2.settings import SettingCodes, Settings
from h2.stream import STREAM_OPEN, H2Stream, StreamClosedBy, StreamInputs, StreamState
from hpack import HPACKError, OversizedHeaderListError
from hyperframe.frame import (
    AltSvcFrame,
    ContinuationFrame,
    DataFrame,
    ExtensionFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from proxy.codec import _http2_heads as heads
from proxy.codec import _http2_state
from proxy.codec._http2_hold import Hold
from proxy.codec._hpack import FastDecoder, FastEncoder
from proxy.codec._http1_events import Headers, RequestHead, ResponseHead
from proxy.codec.mux import (
    CodecError,
    DataReceived,
    GoAwayReceived,
    RequestReceived,
    ServerCodec,
    StreamReset,
    TrailersReceived,
    WindowOpened,
)
from proxy.stats import HTTP2_RX_RESET, HTTP2_TX_RESET  # (counter names: plain data)

__all__ = [
    "CANCEL",
    "COMPRESSION_ERROR",
    "ENHANCE_YOUR_CALM",
    "FLOW_CONTROL_ERROR",
    "NO_ERROR",
    "PROTOCOL_ERROR",
    "REFUSED_STREAM",
    "ClientConnection",
    "DataReceived",
    "GoAwayReceived",
    "Http2Error",
    "Http2Settings",
    "InformationalReceived",
    "NoStreamAvailable",
    "PingAcked",
    "RequestReceived",
    "ResponseReceived",
    "ServerConnection",
    "SettingsChanged",
    "StreamReset",
    "TrailersReceived",
    "WindowOpened",
]

NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB

MAX_STREAM_ID = 2**31 - 1

# hold_streams: at most this much is kept back (about one connection window); a client that
# sends more while its streams finish is served here instead.
HOLD_LIMIT = 4 << 20
_DEFAULT_WINDOW = 65535  # RFC 9113 §6.9.2: every window starts here
# A frame header: (24-bit length << 8 | type), flags, stream id. We write HEADERS, CONTINUATION
# and DATA frames ourselves (h2's own path costs about as much again as the HPACK encoding).
_FRAME = struct.Struct("!IBI")
_END_STREAM, _END_HEADERS = 0x1, 0x4
_SEND_HEADERS = StreamInputs.SEND_HEADERS
_SEND_INFORMATIONAL = StreamInputs.SEND_INFORMATIONAL_HEADERS
_SEND_DATA = StreamInputs.SEND_DATA
_SEND_END = StreamInputs.SEND_END_STREAM
_RECV_HEADERS = StreamInputs.RECV_HEADERS
_RECV_INFORMATIONAL = StreamInputs.RECV_INFORMATIONAL_HEADERS
_RECV_END = StreamInputs.RECV_END_STREAM
_IDLE = StreamState.IDLE
_STREAM_OPEN = StreamState.OPEN
_HALF_CLOSED_REMOTE = StreamState.HALF_CLOSED_REMOTE
_HALF_CLOSED_LOCAL = StreamState.HALF_CLOSED_LOCAL
_CLOSED = StreamState.CLOSED


def _advance(sm: Any, given: StreamInputs) -> None:
    """h2's H2StreamStateMachine.process_input for the transitions every request makes, on
    either side (headers and end received and sent, data sent), without the event objects h2
    builds for them, which our callers drop: ~20 % of h2's share of a request. Any other
    transition is h2's. tests/codec/test_http2_codec_state.py holds the two equal on every
    state, input and flag."""
    state = sm.state
    if state is _HALF_CLOSED_REMOTE:  # a server answering
        if given is _SEND_DATA:
            return
        if given is _SEND_END:
            sm.state = _CLOSED
            sm.stream_closed_by = StreamClosedBy.SEND_END_STREAM
            return
        if given is _SEND_HEADERS and sm.client is False and not sm.headers_sent:
            sm.headers_sent = True
            return
    elif state is _IDLE:
        if given is _RECV_HEADERS and not sm.headers_received and not sm.trailers_received:  # a request comes
            sm.state = _STREAM_OPEN
            sm.client = False
            sm.headers_received = True
            return
        if given is _SEND_HEADERS:  # a request goes
            sm.state = _STREAM_OPEN
            sm.client = True
            sm.headers_sent = True
            return
    elif state is _HALF_CLOSED_LOCAL:  # a client waiting for its answer
        if given is _RECV_HEADERS and sm.client is True and not sm.headers_received:
            sm.headers_received = True
            return
        if given is _RECV_END:
            sm.state = _CLOSED
            sm.stream_closed_by = StreamClosedBy.RECV_END_STREAM
            return
    elif state is _STREAM_OPEN:
        if given is _RECV_END:
            sm.state = _HALF_CLOSED_REMOTE
            return
        if given is _SEND_DATA:
            return
        if given is _SEND_END:
            sm.state = _HALF_CLOSED_LOCAL
            return
        if given is _RECV_HEADERS and sm.client is True and not sm.headers_received:
            sm.headers_received = True
            return
    sm.process_input(given)


def _new_stream(conn: Any, stream_id: int, outbound: bool) -> H2Stream:
    """h2's _begin_new_stream for a stream id the caller has already checked (the next of its
    side, above the highest seen), less its three debug log calls and re-checks."""
    stream = H2Stream(
        stream_id,
        config=conn.config,
        inbound_window_size=conn.local_settings.initial_window_size,
        outbound_window_size=conn.remote_settings.initial_window_size,
    )
    stream.max_outbound_frame_size = conn.max_outbound_frame_size
    conn.streams[stream_id] = stream
    if outbound:
        conn.highest_outbound_stream_id = stream_id
    else:
        conn.highest_inbound_stream_id = stream_id
    return stream
_OPEN = (ConnectionState.CLIENT_OPEN, ConnectionState.SERVER_OPEN)


@dataclass(frozen=True, slots=True)
class Http2Settings:
    """What we advertise, and the flood budgets (defaults: safe for a public listener)."""

    max_concurrent_streams: int = 100
    initial_stream_window_size: int = 1 << 20  # per stream: what one stream may make us buffer
    initial_connection_window_size: int = 4 << 20  # all streams together
    max_frame_size: int = 16384  # the RFC's minimum: the smallest frames to buffer before parsing
    max_header_list_size: int = 65536  # decoded (RFC 7541 sizes), and the encoded block's bound
    max_header_fields: int = 100  # per block, as the HTTP/1 codec's max_header_count
    enable_connect_protocol: bool = False  # RFC 8441 extended CONNECT (WebSocket over HTTP/2)
    # Huffman-code the literals we send (hpack's coder, pure Python): literals a quarter smaller,
    # for ~45 % more codec CPU on a browser-like request, counting both sides (a peer decodes
    # plain literals faster too; tests/codec/bench_http2.py). Off suits upstreams on a LAN.
    huffman: bool = True
    # Flood budgets (see the module docstring).
    max_client_resets: int = 200
    client_resets_per_second: float = 20.0
    premature_reset_min_streams: int = 500
    max_pings: int = 100
    pings_per_second: float = 10.0
    max_settings: int = 100
    settings_per_second: float = 10.0
    max_refused_streams: int = 100
    refused_streams_per_second: float = 10.0
    max_outbound_control_frames: int = 1000
    max_consecutive_empty_frames: int = 1
    max_priority_frames_per_stream: int = 100
    max_window_updates_per_data_frame: int = 10


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    stream_id: int
    head: ResponseHead
    end_stream: bool  # no body follows


@dataclass(frozen=True, slots=True)
class InformationalReceived:
    stream_id: int
    head: ResponseHead  # a 1xx: the final response is still to come


@dataclass(frozen=True, slots=True)
class SettingsChanged:
    """The peer's settings as they now stand (after a SETTINGS frame from it)."""

    max_concurrent_streams: int  # 2**32 + 1 while the peer sets no limit
    initial_window_size: int
    max_frame_size: int
    enable_connect_protocol: bool


@dataclass(frozen=True, slots=True)
class PingAcked:
    data: bytes


class Http2Error(CodecError):
    """A connection-level error: a GOAWAY with `code` is queued; flush data_to_send(), close."""


class NoStreamAvailable(Exception):
    """The client cannot open a stream now: the peer's concurrency limit, its GOAWAY, or the
    stream ids ran out. `retry_elsewhere`: this connection will never have one again."""

    def __init__(self, message: str, retry_elsewhere: bool) -> None:
        super().__init__(message)
        self.retry_elsewhere = retry_elsewhere


def _violation(code: int, message: str) -> ProtocolError:
    # h2's receive_data answers any ProtocolError with a GOAWAY carrying its error_code.
    exc = DenialOfServiceError(message) if code == ENHANCE_YOUR_CALM else ProtocolError(message)
    exc.error_code = ErrorCodes(code)  # type: ignore[misc]
    return exc


class _FastData:
    """A DATA frame parsed by our receive loop instead of hyperframe (no padding: those go the
    long way). h2's handlers read just these attributes."""

    __slots__ = ("stream_id", "data", "flags", "flow_controlled_length")

    def __init__(self, stream_id: int, data: bytes, flags: frozenset[str]) -> None:
        self.stream_id = stream_id
        self.data = data
        self.flags = flags
        self.flow_controlled_length = len(data)

    def __repr__(self) -> str:  # h2 formats every frame it receives for a trace log
        return "DATA"


class _FastHeaders(_FastData):
    """A complete HEADERS frame (END_HEADERS, no padding, no priority)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "HEADERS"


_FLAGS = {0: frozenset(), 1: frozenset({"END_STREAM"}), 4: frozenset({"END_HEADERS"}), 5: frozenset({"END_STREAM", "END_HEADERS"})}


class _Bucket:
    """A token bucket: `burst` events at once, `rate` per second after that. A clock that goes
    back (another process's, after a hot upgrade) only skips one refill."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, burst: int, rate: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp: float | None = None

    def take(self, now: float) -> bool:
        tokens = self.tokens
        if self.stamp is not None and now > self.stamp:
            tokens = min(self.burst, tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True

    def export(self) -> list[float | None]:
        return [self.tokens, self.stamp]


def _count(counters: Any, names: tuple[str, ...], code: int) -> None:
    name = names[code if 0 <= code < len(names) - 1 else -1]
    setattr(counters, name, getattr(counters, name) + 1)


class _FrameBuffer(FrameBuffer):
    """h2's frame buffer with a byte bound on a header block before it is decoded
    (CONTINUATION floods) and the consecutive-empty-frames count for HEADERS/CONTINUATION."""

    def __init__(self, server: bool, max_block: int, max_empty: int) -> None:
        super().__init__(server=server)
        self.max_block = max_block
        self.max_empty = max_empty
        self.block = 0  # bytes of the header block being gathered
        self.empty = 0  # consecutive frames with no payload and no end flag (DATA counts too)

    def _update_header_buffer(self, f: Frame | None) -> Frame | None:
        cls = type(f)
        if cls is HeadersFrame or cls is ContinuationFrame or cls is PushPromiseFrame:
            data = f.data  # type: ignore[union-attr]
            flags = f.flags  # type: ignore[union-attr]
            if "END_HEADERS" in flags:
                self.block = 0
            else:
                self.block += len(data)
                if self.block > self.max_block:
                    raise _violation(ENHANCE_YOUR_CALM, f"header block over {self.max_block} bytes")
            if data:
                self.empty = 0
            elif "END_STREAM" not in flags and "END_HEADERS" not in flags:
                self.empty += 1
                if self.empty > self.max_empty:
                    raise _violation(ENHANCE_YOUR_CALM, "too many empty frames")
        return super()._update_header_buffer(f)


class _Connection:
    """What both sides share: h2 set up, the frame handlers taken over, sends, budgets."""

    _CLIENT: ClassVar[bool]

    def __init__(self, settings: Http2Settings | None = None) -> None:
        s = settings or Http2Settings()
        self.settings = s
        config = H2Configuration(
            client_side=self._CLIENT,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
        )
        conn = H2Connection(config)
        # Advertised values count from the start (h2 does so for its own two defaults): we
        # enforce them at once, a peer that has not read them yet is refused at worst.
        values = {
            SettingCodes.INITIAL_WINDOW_SIZE: s.initial_stream_window_size,
            SettingCodes.MAX_FRAME_SIZE: s.max_frame_size,
            SettingCodes.MAX_HEADER_LIST_SIZE: s.max_header_list_size,
        }
        if self._CLIENT:
            values[SettingCodes.ENABLE_PUSH] = 0  # max_concurrent_streams: the server's to say
        else:
            values[SettingCodes.MAX_CONCURRENT_STREAMS] = s.max_concurrent_streams
            if s.enable_connect_protocol:
                values[SettingCodes.ENABLE_CONNECT_PROTOCOL] = 1
        conn.local_settings = Settings(client=self._CLIENT, initial_values=values)
        conn.max_inbound_frame_size = s.max_frame_size
        # How each closed stream ended, so late frames on it get a RST and not a GOAWAY. h2 keeps
        # 65,536: ~5 MB for every long-lived connection. A few times the concurrency is enough.
        conn._closed_streams._size_limit = max(1024, 4 * s.max_concurrent_streams)  # type: ignore[attr-defined]
        conn.encoder = FastEncoder()  # hpack's, with less per-field machinery (_hpack)
        conn.decoder = FastDecoder()
        conn.decoder.max_header_list_size = s.max_header_list_size
        self._buffer = _FrameBuffer(not self._CLIENT, s.max_header_list_size, s.max_consecutive_empty_frames)
        conn.incoming_buffer = self._buffer
        table = conn._frame_dispatch_table
        self._h2_data = table[DataFrame]
        self._h2_rst = table[RstStreamFrame]
        self._h2_settings = table[SettingsFrame]
        self._h2_ping = table[PingFrame]
        self._h2_window_update = table[WindowUpdateFrame]
        self._h2_altsvc = table[AltSvcFrame]
        table[HeadersFrame] = table[_FastHeaders] = self._on_headers  # type: ignore[index]
        table[DataFrame] = table[_FastData] = self._on_data  # type: ignore[index]
        table[RstStreamFrame] = self._on_rst
        table[SettingsFrame] = self._on_settings
        table[PingFrame] = self._on_ping
        table[WindowUpdateFrame] = self._on_window_update
        table[PriorityFrame] = self._on_priority
        table[GoAwayFrame] = self._on_goaway
        table[PushPromiseFrame] = self._on_push_promise
        table[AltSvcFrame] = self._on_altsvc
        table[ExtensionFrame] = self._on_extension
        self._h2 = conn
        self._pending = b""  # the start of a frame not complete yet (see _receive)
        self._now = 0.0
        self._error: Http2Error | None = None
        self._blocked: set[int] = set()  # streams whose send_data was cut short by a window
        self._kinds: dict[int, int] = {}  # streams that are not PLAIN requests (heads.HEAD, ...)
        self._control = 0  # control frames queued since the caller last took data_to_send()
        self._opened = 0  # streams opened (either side), for the Envoy ratios
        self._sweep_at = 16  # h2's stream dict size at which to count (and forget) closed streams
        self._data_frames_sent = 0
        self._priority_frames = 0
        self._window_updates = 0
        self._pings = _Bucket(s.max_pings, s.pings_per_second)
        self._settings_frames = _Bucket(s.max_settings, s.settings_per_second)
        self._goaway_sent: int | None = None  # the last stream id we promised to serve
        self._goaway_received: int | None = None
        self._hold: Hold | None = None  # hot upgrade: frames kept back (hold_streams)
        self._counters: Any = None  # count_into: where resets, GOAWAYs and stalls are counted

    # --- public: both sides --------------------------------------------------------------

    def initiate(self) -> None:
        """Queue what we say first: (the client preface and) our SETTINGS, and the connection
        window beyond the RFC's 65,535 bytes."""
        conn = self._h2
        conn.initiate_connection()
        extra = self.settings.initial_connection_window_size - _DEFAULT_WINDOW
        if extra > 0:
            conn.increment_flow_control_window(extra)

    def count_into(self, counters: Any) -> None:
        """Count this connection's resets (by code, each way), GOAWAYs and flow-control stalls
        into `counters` (an object with proxy.stats.HTTP2_COUNTERS as int attributes: a
        listener's or a cluster's stats, shared by its connections). Our own HEADERS and DATA
        writes do not pay for it: what h2 queues (WINDOW_UPDATEs, acks, its resets and GOAWAYs)
        gets a type check per frame (every RST_STREAM goes through h2, ours too); our GOAWAYs and
        the stalls are counted where they are made."""
        self._counters = counters
        conn = self._h2
        prepare = type(conn)._prepare_for_sending

        def prepare_counted(frames: list[Frame]) -> None:
            if not frames:  # (every acknowledge() comes here, mostly with nothing to send)
                return
            for frame in frames:
                kind = type(frame)
                if kind is RstStreamFrame:
                    _count(counters, HTTP2_TX_RESET, frame.error_code)  # type: ignore[attr-defined]
                elif kind is GoAwayFrame:
                    counters.http2_tx_goaway += 1
            prepare(conn, frames)

        conn._prepare_for_sending = prepare_counted  # type: ignore[method-assign]

    def receive(self, data: bytes, now: float) -> list[Any]:
        """Feed bytes from the peer; the events they complete. Raises Http2Error (a GOAWAY is
        queued: flush data_to_send() and close); every later call raises it again."""
        if self._error is not None:
            raise self._error
        self._now = now
        conn = self._h2
        hold = self._hold
        if hold is not None:
            data = hold.split(data, conn.highest_inbound_stream_id, conn.max_inbound_frame_size)
            if hold.broken or hold.size() > HOLD_LIMIT:
                data += self.release_held()  # (they commute with the frames passed just now)
        try:
            return self._receive(data)
        except ProtocolError as exc:
            code = int(exc.error_code)  # its GOAWAY is queued (by h2 or _receive)
            self._error = Http2Error(f"HTTP/2 connection error {ErrorCodes(code).name}: {exc}", code)
            raise self._error from exc

    def _receive(self, data: bytes) -> list[Any]:
        """Split the bytes into frames here: DATA and complete HEADERS frames go straight to
        h2's frame dispatch (hyperframe's parsing and h2's buffer copies cost a tenth of a
        request); every other frame, and any frame inside a header block, is fed to h2 whole,
        so h2's buffer never holds a partial frame. A partial frame waits in `_pending`."""
        conn = self._h2
        buffer = self._buffer
        events: list[Any] = []
        if buffer._preamble_len:  # the client preface: h2 checks it (and queues no GOAWAY)
            cut = min(buffer._preamble_len, len(data))
            try:
                conn.receive_data(data[:cut])
            except ProtocolError as exc:
                conn._terminate_connection(exc.error_code)
                raise
            data = data[cut:]
        if self._pending:
            data = self._pending + data
        pos = 0
        size = len(data)
        slow = -1  # where a run of frames for h2 starts
        in_block = bool(buffer._headers_buffer)
        max_frame = conn.max_inbound_frame_size
        unpack = _FRAME.unpack_from
        while size - pos >= 9:
            head, flags, sid = unpack(data, pos)
            length = head >> 8
            if length > max_frame:
                if slow >= 0:
                    events += conn.receive_data(data[slow:pos])
                conn._terminate_connection(ErrorCodes.FRAME_SIZE_ERROR)
                raise _violation(FRAME_SIZE_ERROR, f"frame of {length} bytes over our max frame size {max_frame}")
            end = pos + 9 + length
            if end > size:
                break
            kind = head & 0xFF
            sid &= 0x7FFFFFFF
            if in_block or not sid or kind > 1 or (flags & ~5 if kind else flags & ~1) or (kind and not flags & _END_HEADERS):
                if kind == 1 or kind == 5:  # HEADERS or PUSH_PROMISE: a header block may begin
                    in_block = not flags & _END_HEADERS
                elif kind == 9 and flags & _END_HEADERS:
                    in_block = False
                if slow < 0:
                    slow = pos
            else:
                if slow >= 0:
                    events += conn.receive_data(data[slow:pos])
                    slow = -1
                payload = data[pos + 9 : end]
                try:
                    if kind:
                        if payload:
                            buffer.empty = 0
                        events += conn._receive_frame(_FastHeaders(sid, payload, _FLAGS[flags]))  # type: ignore[arg-type]
                    else:
                        events += conn._receive_frame(_FastData(sid, payload, _FLAGS[flags]))  # type: ignore[arg-type]
                except ProtocolError as exc:  # as h2's receive_data does: GOAWAY, then raise
                    conn._terminate_connection(exc.error_code)
                    raise
            pos = end
        if slow >= 0:
            events += conn.receive_data(data[slow:pos])
        self._pending = data[pos:] if pos < size else b""
        return events

    def send_data(self, stream_id: int, data: bytes, end_stream: bool) -> int:
        """Queue as much of `data` as the flow-control windows allow, in frames of the peer's
        max frame size; how many bytes were taken. `end_stream` holds only once all is taken;
        the rest waits for a WindowOpened. On a stream already reset: all taken, nothing sent."""
        conn = self._h2
        stream = conn.streams.get(stream_id)
        if stream is None or not STREAM_OPEN[stream.state_machine.state]:
            if self._closed_by_reset(stream_id):
                return len(data)
            if stream is None:
                raise StreamClosedError(stream_id)
        size = len(data)
        window = min(conn.outbound_flow_control_window, stream.outbound_flow_control_window)  # type: ignore[union-attr]
        if size > window:
            take = window if window > 0 else 0
            end = False
            counters = self._counters
            if counters is not None and stream_id not in self._blocked:  # (once per stall)
                if conn.outbound_flow_control_window <= stream.outbound_flow_control_window:  # type: ignore[union-attr]
                    counters.http2_tx_stall_connection_window += 1
                else:
                    counters.http2_tx_stall_stream_window += 1
            self._blocked.add(stream_id)
            if take == 0:
                return 0
        else:
            take = size
            end = end_stream
        sm = stream.state_machine  # type: ignore[union-attr]
        if conn.state_machine.state not in _OPEN:  # open: every input leaves it so
            conn.state_machine.process_input(ConnectionInputs.SEND_DATA)
        _advance(sm, _SEND_DATA)  # raises if our side of the stream is closed
        if end:
            _advance(sm, _SEND_END)
        stream.outbound_flow_control_window -= take  # type: ignore[union-attr]
        conn.outbound_flow_control_window -= take
        max_frame = conn.max_outbound_frame_size
        flags = _END_STREAM if end else 0
        if take <= max_frame:
            conn._data_to_send += _FRAME.pack(take << 8, flags, stream_id) + (data if take == size else data[:take])
            self._data_frames_sent += 1
            return take
        view = memoryview(data)
        out: list[bytes | memoryview] = []
        offset = 0
        while take - offset > max_frame:
            out.append(_FRAME.pack(max_frame << 8, 0, stream_id))
            out.append(view[offset : offset + max_frame])
            offset += max_frame
        out.append(_FRAME.pack((take - offset) << 8, flags, stream_id))
        out.append(view[offset:take])
        conn._data_to_send += b"".join(out)
        self._data_frames_sent += len(out) // 2
        return take

    def send_trailers(self, stream_id: int, trailers: Headers) -> None:
        """End our side of the stream with trailers (nothing on a stream already reset)."""
        if self._sendable(stream_id):
            self._send_headers(self._h2.streams[stream_id], heads.trailer_fields(trailers), True, False)

    def reset(self, stream_id: int, code: int) -> None:
        """RST_STREAM; nothing if the stream is closed already."""
        conn = self._h2
        stream = conn.streams.get(stream_id)
        if stream is not None and not stream.closed:
            conn.reset_stream(stream_id, code)
        self._blocked.discard(stream_id)
        self._kinds.pop(stream_id, None)

    def acknowledge(self, stream_id: int, flow_length: int) -> None:
        """The layer above consumed this much of a stream's data: hand the window back (h2
        batches WINDOW_UPDATEs until half a window is due)."""
        if flow_length > 0:
            self._h2.acknowledge_received_data(flow_length, stream_id)

    def ping(self, data: bytes = b"\0" * 8) -> None:
        self._h2.ping(data)

    def goaway(self, code: int = NO_ERROR, last_stream_id: int | None = None) -> None:
        """No new streams from the peer beyond `last_stream_id` (None: the highest it opened).
        Streams up to it go on; call twice for a graceful drain (2^31-1 first)."""
        conn = self._h2
        if last_stream_id is None:
            last_stream_id = conn.highest_inbound_stream_id
        if self._goaway_sent is not None:
            last_stream_id = min(last_stream_id, self._goaway_sent)  # may only go down
        self._goaway_sent = last_stream_id
        frame = GoAwayFrame(0)
        frame.last_stream_id = last_stream_id
        frame.error_code = code
        conn._data_to_send += frame.serialize()  # not through h2: its state machine would close
        if self._counters is not None:
            self._counters.http2_tx_goaway += 1

    def data_to_send(self) -> bytes:
        self._control = 0
        return self._h2.data_to_send()  # type: ignore[no-any-return]

    def outbound_backlog(self) -> int:
        return len(self._h2._data_to_send)

    def send_window(self, stream_id: int) -> int:
        """Bytes send_data would take now on this stream (0: the connection's window)."""
        conn = self._h2
        if stream_id == 0:
            return conn.outbound_flow_control_window  # type: ignore[no-any-return]
        stream = conn.streams.get(stream_id)
        if stream is None or not STREAM_OPEN[stream.state_machine.state]:
            return 0
        return max(0, min(conn.outbound_flow_control_window, stream.outbound_flow_control_window))

    def receive_window(self, stream_id: int) -> int:
        """Bytes the peer may still send (0: the connection's window)."""
        conn = self._h2
        if stream_id == 0:
            return conn._inbound_flow_control_window_manager.current_window_size  # type: ignore[no-any-return]
        stream = conn.streams.get(stream_id)
        return 0 if stream is None else stream._inbound_window_manager.current_window_size

    @property
    def goaway_received(self) -> int | None:
        """The last stream id of the peer's GOAWAY, None before one."""
        return self._goaway_received

    def buffered_size(self) -> int:
        """Bytes held for the peer's frames not complete yet plus bytes queued to send: what a
        misbehaving peer can make this connection hold."""
        buffer = self._buffer
        held = len(self._pending) + len(buffer._data) + sum(len(f.data) for f in buffer._headers_buffer)
        return held + len(self._h2._data_to_send)

    # --- hot upgrade ---------------------------------------------------------------------

    def hold_streams(self) -> None:
        """From now on, keep the frames that would open streams (and those whose order depends
        on them) instead of processing them, so the connection can become idle while its
        peer keeps sending; the streams already open go on. Past HOLD_LIMIT held bytes (or at a
        frame over our size limit) the codec stops holding by itself: check `holding`."""
        if self._hold is None:
            buffer = self._buffer
            # A preface still arriving: nothing can be open, keep everything.
            self._hold = Hold(self._pending, bool(buffer._headers_buffer), bool(buffer._preamble_len))
            self._pending = b""

    @property
    def holding(self) -> bool:
        return self._hold is not None

    def release_held(self) -> bytes:
        """Stop holding; the bytes kept, in order, to feed to receive() (here, or in the next
        owner before anything read after them)."""
        hold, self._hold = self._hold, None
        return b"" if hold is None else hold.release()

    def export_state(self) -> dict[str, Any]:
        """The connection's state as JSON-able data; ValueError while a stream is open."""
        state = _http2_state.export_h2(self._h2)
        state["codec"] = {
            "opened": self._opened,
            "data_frames_sent": self._data_frames_sent,
            "priority_frames": self._priority_frames,
            "window_updates": self._window_updates,
            "goaway_sent": self._goaway_sent,
            "goaway_received": self._goaway_received,
            "empty": self._buffer.empty,
            "pending": self._pending.decode("latin-1"),
            "buckets": {name: bucket.export() for name, bucket in self._buckets().items()},
            "extra": self._export_extra(),
        }
        return state

    def _restore(self, state: dict[str, Any]) -> None:
        _http2_state.restore_h2(self._h2, state)
        codec = state["codec"]
        self._opened = codec["opened"]
        self._data_frames_sent = codec["data_frames_sent"]
        self._priority_frames = codec["priority_frames"]
        self._window_updates = codec["window_updates"]
        self._goaway_sent = codec["goaway_sent"]
        self._goaway_received = codec["goaway_received"]
        self._buffer.empty = codec["empty"]
        self._pending = codec["pending"].encode("latin-1")
        buckets = self._buckets()
        for name, (tokens, stamp) in codec["buckets"].items():
            if name in buckets:
                buckets[name].tokens = min(tokens, buckets[name].burst)
                buckets[name].stamp = stamp
        self._restore_extra(codec["extra"])

    def _buckets(self) -> dict[str, _Bucket]:
        return {"pings": self._pings, "settings": self._settings_frames}

    def _export_extra(self) -> dict[str, Any]:
        return {}

    def _restore_extra(self, extra: dict[str, Any]) -> None:
        pass

    # --- frame handlers (h2 calls them from receive_data, with the parsed frame) ---------

    def _decode(self, frame: HeadersFrame) -> list[Any]:
        try:
            return self._h2.decoder.decode(frame.data, raw=True)  # type: ignore[return-value]  # a list
        except OversizedHeaderListError as exc:
            raise _violation(ENHANCE_YOUR_CALM, f"header list over max_header_list_size: {exc}") from exc
        except (HPACKError, IndexError, TypeError, UnicodeDecodeError) as exc:
            raise _violation(COMPRESSION_ERROR, f"HPACK: {exc}") from exc

    def _on_headers(self, frame: HeadersFrame) -> tuple[list[Frame], list[Any]]:
        raise NotImplementedError

    def _trailers(self, stream: Any, fields: list[Any], end: bool) -> tuple[list[Frame], list[Any]]:
        sid = stream.stream_id
        if not end:
            return self._malformed(sid, "trailers without END_STREAM")
        try:
            trailers = heads.trailers(fields, self.settings.max_header_fields)
        except heads.Malformed as exc:
            return self._malformed(sid, str(exc))
        expected = stream._expected_content_length
        if expected is not None and stream._actual_content_length != expected:
            return self._malformed(sid, "body shorter than its content-length")
        sm = stream.state_machine
        sm.process_input(_RECV_HEADERS)
        sm.process_input(_RECV_END)
        self._kinds.pop(sid, None)
        return [], [TrailersReceived(sid, trailers)]

    def _malformed(self, stream_id: int, reason: str) -> tuple[list[Frame], list[Any]]:
        """Reset a stream the peer sent a malformed message on (RFC 9113 §8.1.1)."""
        self._h2.reset_stream(stream_id, PROTOCOL_ERROR)
        self._count_control()
        self._blocked.discard(stream_id)
        self._kinds.pop(stream_id, None)
        return [], [StreamReset(stream_id, PROTOCOL_ERROR, False)]

    def _refuse(self, stream_id: int, code: int) -> list[Frame]:
        """Reset a stream the peer opened before it exists for h2: its HPACK block is decoded
        already, later frames on it are answered as for any stream we reset."""
        conn = self._h2
        conn.highest_inbound_stream_id = stream_id
        conn._closed_streams[stream_id] = StreamClosedBy.SEND_RST_STREAM
        self._count_control()
        frame = RstStreamFrame(stream_id)
        frame.error_code = code
        return [frame]

    def _on_data(self, frame: DataFrame) -> tuple[list[Frame], list[Any]]:
        buffer = self._buffer
        end = "END_STREAM" in frame.flags
        if frame.data or end:
            buffer.empty = 0
        else:
            buffer.empty += 1
            if buffer.empty > buffer.max_empty:
                raise _violation(ENHANCE_YOUR_CALM, "too many empty DATA frames")
        sid = frame.stream_id
        try:
            frames, h2_events = self._h2_data(frame)
        except InvalidBodyLengthError:
            flow = frame.flow_controlled_length
            _, events = self._malformed(sid, "body longer or shorter than its content-length")
            self._h2.acknowledge_received_data(flow, sid)  # nobody will consume it
            return [], events
        if frames:  # on a closed stream: h2 answers RST_STREAM and hands the window back
            self._count_control()
            return frames, self._h2_resets(h2_events)
        return [], [DataReceived(sid, frame.data, end, frame.flow_controlled_length)]

    def _on_rst(self, frame: RstStreamFrame) -> tuple[list[Frame], list[Any]]:
        sid = frame.stream_id
        stream = self._h2.streams.get(sid)
        # Whether we were still answering: our side not ended yet (read before h2 closes it).
        answering = stream is not None and stream.state_machine.state != StreamState.HALF_CLOSED_LOCAL
        if self._counters is not None:
            _count(self._counters, HTTP2_RX_RESET, frame.error_code)
        frames, events = self._h2_rst(frame)
        self._blocked.discard(sid)
        self._kinds.pop(sid, None)
        if not events or stream is None:
            return frames, []
        if answering:
            self._peer_reset()
        return frames, [StreamReset(sid, frame.error_code, True)]

    def _peer_reset(self) -> None:
        pass

    def _on_settings(self, frame: SettingsFrame) -> tuple[list[Frame], list[Any]]:
        if "ACK" in frame.flags:
            frames, _ = self._h2_settings(frame)
            return frames, []
        if not self._settings_frames.take(self._now):
            raise _violation(ENHANCE_YOUR_CALM, "SETTINGS flood")
        self._count_control()
        frames, events = self._h2_settings(frame)
        out: list[Any] = []
        for event in events:
            if type(event) is RemoteSettingsChanged:
                remote = self._h2.remote_settings
                out.append(
                    SettingsChanged(
                        remote.max_concurrent_streams,
                        remote.initial_window_size,
                        remote.max_frame_size,
                        bool(remote.enable_connect_protocol),
                    )
                )
                change = event.changed_settings.get(SettingCodes.INITIAL_WINDOW_SIZE)
                if change is not None and self._blocked and change.new_value > (change.original_value or 0):
                    self._blocked.clear()
                    out.append(WindowOpened(0))
        return frames, out

    def _on_ping(self, frame: PingFrame) -> tuple[list[Frame], list[Any]]:
        if "ACK" in frame.flags:
            frames, _ = self._h2_ping(frame)
            return frames, [PingAcked(frame.opaque_data)]
        if not self._pings.take(self._now):
            raise _violation(ENHANCE_YOUR_CALM, "PING flood")
        self._count_control()
        frames, _ = self._h2_ping(frame)
        return frames, []

    def _on_window_update(self, frame: WindowUpdateFrame) -> tuple[list[Frame], list[Any]]:
        self._window_updates += 1
        allowed = 5 + 2 * (self._opened + self.settings.max_window_updates_per_data_frame * self._data_frames_sent)
        if self._window_updates > allowed:
            raise _violation(ENHANCE_YOUR_CALM, "WINDOW_UPDATE flood")
        frames, events = self._h2_window_update(frame)
        blocked = self._blocked
        if not blocked:
            return frames, []
        sid = frame.stream_id
        for event in events:
            if type(event) is WindowUpdated:
                if sid == 0:
                    blocked.clear()
                    return frames, [WindowOpened(0)]
                if sid in blocked:
                    blocked.discard(sid)
                    return frames, [WindowOpened(sid)]
        return frames, []

    def _on_priority(self, frame: PriorityFrame) -> tuple[list[Frame], list[Any]]:
        # RFC 9113 deprecates priority signals: counted (CVE-2019-9513), otherwise ignored.
        self._priority_frames += 1
        if self._priority_frames > self.settings.max_priority_frames_per_stream * (1 + self._opened):
            raise _violation(ENHANCE_YOUR_CALM, "PRIORITY flood")
        if frame.stream_id == 0:
            raise _violation(PROTOCOL_ERROR, "PRIORITY on stream 0")
        return [], []

    def _on_goaway(self, frame: GoAwayFrame) -> tuple[list[Frame], list[Any]]:
        # Not h2's: it would close the state machine and drop what we queued.
        last = frame.last_stream_id
        if self._goaway_received is not None:
            last = min(last, self._goaway_received)
        self._goaway_received = last
        if self._counters is not None:
            self._counters.http2_rx_goaway += 1
        return [], [GoAwayReceived(last, frame.error_code), *self._refused_by_goaway(last)]

    def _refused_by_goaway(self, last: int) -> list[Any]:
        return []

    def _on_push_promise(self, frame: PushPromiseFrame) -> tuple[list[Frame], list[Any]]:
        raise _violation(PROTOCOL_ERROR, "PUSH_PROMISE is not accepted (push is disabled)")

    def _on_altsvc(self, frame: AltSvcFrame) -> tuple[list[Frame], list[Any]]:
        frames, _ = self._h2_altsvc(frame)
        return frames, []

    def _on_extension(self, frame: ExtensionFrame) -> tuple[list[Frame], list[Any]]:
        return [], []  # RFC 9113 §5.5: ignored

    # --- helpers ---------------------------------------------------------------------------

    def _send_headers(self, stream: Any, fields: list[Any], end_stream: bool, informational: bool) -> None:
        """h2's send_headers, less its per-call generality: the state machines first (HPACK
        encoding changes the peer's state for good), then the block in HEADERS (+CONTINUATION)."""
        conn = self._h2
        if conn.state_machine.state not in _OPEN:  # open: every input leaves it so
            conn.state_machine.process_input(ConnectionInputs.SEND_HEADERS)
        sm = stream.state_machine
        _advance(sm, _SEND_INFORMATIONAL if informational else _SEND_HEADERS)
        if end_stream:
            _advance(sm, _SEND_END)
        block = conn.encoder.encode(fields, self.settings.huffman)
        sid = stream.stream_id
        flags = _END_STREAM if end_stream else 0
        size = len(block)
        max_frame = conn.max_outbound_frame_size
        if size <= max_frame:
            conn._data_to_send += _FRAME.pack(size << 8 | 0x1, flags | _END_HEADERS, sid) + block
            return
        out = [_FRAME.pack(max_frame << 8 | 0x1, flags, sid), block[:max_frame]]
        offset = max_frame
        while size - offset > max_frame:
            out += (_FRAME.pack(max_frame << 8 | 0x9, 0, sid), block[offset : offset + max_frame])
            offset += max_frame
        out += (_FRAME.pack((size - offset) << 8 | 0x9, _END_HEADERS, sid), block[offset:])
        conn._data_to_send += b"".join(out)

    def _h2_resets(self, events: list[Any]) -> list[Any]:
        """h2's own StreamReset events (it reset a live stream for a frame the stream's state
        forbids, e.g. DATA after END_STREAM) as ours: the layer above must learn of them."""
        out = []
        for event in events:
            if type(event) is H2StreamReset:
                sid = event.stream_id
                self._blocked.discard(sid)
                self._kinds.pop(sid, None)
                out.append(StreamReset(sid, int(event.error_code), False))
        return out

    def _receive_headers_h2(self, stream: Any, fields: list[Any], end: bool) -> None:
        """Let h2 answer HEADERS its stream state forbids (it raises); its events made ours."""
        try:
            stream.receive_headers(fields, end, None)
        except StreamClosedError as exc:
            exc._events = self._h2_resets(exc._events)
            raise

    def _open_count(self) -> int:
        """Streams open on our side's count (the peer's for a server, ours for a client). h2
        counts by walking every stream it holds, forgetting the closed ones as it goes: done
        only once the dict has doubled since (or reaches the limit), so closed streams are
        held boundedly and the walk costs O(1) per stream."""
        conn = self._h2
        count = conn.open_outbound_streams if self._CLIENT else conn.open_inbound_streams
        self._sweep_at = 2 * count + 16
        return count  # type: ignore[no-any-return]

    def _count_control(self) -> None:
        self._control += 1
        if self._control > self.settings.max_outbound_control_frames:
            raise _violation(ENHANCE_YOUR_CALM, "too many control frames queued for a peer that does not read")

    def _closed_by_reset(self, stream_id: int) -> bool:
        return self._h2._stream_is_closed_by_reset(stream_id)  # type: ignore[no-any-return]

    def _sendable(self, stream_id: int) -> bool:
        """False on a stream reset already (the send is dropped, as after a TCP reset)."""
        stream = self._h2.streams.get(stream_id)
        if stream is not None and STREAM_OPEN[stream.state_machine.state]:
            return True
        if self._closed_by_reset(stream_id):
            return False
        return True  # let h2 raise what it raises for a programming error


class ServerConnection(_Connection, ServerCodec):
    """The server side of one HTTP/2 connection (a downstream client)."""

    _CLIENT = False
    protocol = "HTTP/2"

    def __init__(self, settings: Http2Settings | None = None) -> None:
        super().__init__(settings)
        s = self.settings
        self._resets = _Bucket(s.max_client_resets, s.client_resets_per_second)
        self._refused = _Bucket(s.max_refused_streams, s.refused_streams_per_second)
        self._premature_resets = 0
        self._protocols: dict[int, bytes] = {}  # extended CONNECT streams: their :protocol

    @classmethod
    def from_state(cls, state: dict[str, Any], settings: Http2Settings | None = None) -> ServerConnection:
        """A connection exported by export_state() (perhaps in another process), going on.
        Settings already advertised stay as the peer knows them; `settings` give the budgets."""
        codec = cls(settings)
        codec._restore(state)
        return codec

    @property
    def open_streams(self) -> int:
        return self._h2.open_inbound_streams  # type: ignore[no-any-return]

    @property
    def highest_stream_id(self) -> int:
        return self._h2.highest_inbound_stream_id  # type: ignore[no-any-return]

    def stream_protocol(self, stream_id: int) -> bytes | None:
        """The `:protocol` of an extended CONNECT stream (RFC 8441), as the client sent it."""
        return self._protocols.get(stream_id)

    def send_response(self, stream_id: int, head: ResponseHead, end_stream: bool) -> None:
        """Queue a response head (a 1xx first if wanted). A 101 is allowed on an extended
        CONNECT stream only and goes out as 200. Nothing on a stream already reset."""
        if not self._sendable(stream_id):
            return
        kind = self._kinds.get(stream_id, heads.PLAIN)
        fields = heads.response_fields(head, kind)
        if head.status < 200:
            if end_stream:
                raise ValueError("an informational response cannot end the stream")
        elif kind == heads.EXTENDED_CONNECT:
            self._protocols.pop(stream_id, None)
        stream = self._h2.streams.get(stream_id)
        if stream is None:
            raise StreamClosedError(stream_id)
        self._send_headers(stream, fields, end_stream, head.status < 200)
        if end_stream:
            self._kinds.pop(stream_id, None)

    def _buckets(self) -> dict[str, _Bucket]:
        return {"pings": self._pings, "settings": self._settings_frames, "resets": self._resets, "refused": self._refused}

    def _export_extra(self) -> dict[str, Any]:
        return {"premature_resets": self._premature_resets}

    def _restore_extra(self, extra: dict[str, Any]) -> None:
        self._premature_resets = extra["premature_resets"]

    def _on_headers(self, frame: HeadersFrame) -> tuple[list[Frame], list[Any]]:
        conn = self._h2
        fields = self._decode(frame)  # always first: the HPACK state must follow every block
        sid = frame.stream_id
        end = "END_STREAM" in frame.flags
        stream = conn.streams.get(sid)
        if stream is None and sid > conn.highest_inbound_stream_id:
            return self._open(sid, fields, end)
        stream = conn._get_or_create_stream(sid, AllowedStreamIDs.ODD)  # closed: h2 answers
        if conn.state_machine.state not in _OPEN:  # open: every input leaves it so
            conn.state_machine.process_input(ConnectionInputs.RECV_HEADERS)
        if stream.state_machine.state != StreamState.OPEN:
            self._receive_headers_h2(stream, fields, end)  # h2 raises the state error it should
        return self._trailers(stream, fields, end)

    def _open(self, sid: int, fields: list[Any], end: bool) -> tuple[list[Frame], list[Any]]:
        conn = self._h2
        if sid % 2 == 0:
            raise _violation(PROTOCOL_ERROR, f"stream {sid}: a client opens odd streams")
        if conn.state_machine.state not in _OPEN:  # open: every input leaves it so
            conn.state_machine.process_input(ConnectionInputs.RECV_HEADERS)
        if self._goaway_sent is not None and sid > self._goaway_sent:
            return self._refuse(sid, REFUSED_STREAM), []  # after our GOAWAY: never processed
        s = self.settings
        limit = s.max_concurrent_streams
        if len(conn.streams) >= min(limit, self._sweep_at) and self._open_count() >= limit:
            if not self._refused.take(self._now):
                raise _violation(ENHANCE_YOUR_CALM, "streams over max_concurrent_streams, again and again")
            return self._refuse(sid, REFUSED_STREAM), []
        try:
            head, scheme, protocol = heads.request_head(fields, end, s.enable_connect_protocol, s.max_header_fields)
        except heads.Malformed:
            return self._refuse(sid, PROTOCOL_ERROR), [StreamReset(sid, PROTOCOL_ERROR, False)]
        stream = _new_stream(conn, sid, False)  # (odd, above the highest: checked above)
        sm = stream.state_machine
        _advance(sm, _RECV_HEADERS)
        if end:
            _advance(sm, _RECV_END)
        stream._expected_content_length = head.content_length  # h2 checks the DATA against it
        self._opened += 1
        if head.upgrade is not None:
            if head.upgrade == b"connect":
                self._kinds[sid] = heads.CONNECT
            else:
                self._kinds[sid] = heads.EXTENDED_CONNECT
                self._protocols[sid] = protocol  # type: ignore[assignment]
                if len(self._protocols) > 2 * s.max_concurrent_streams:
                    self._protocols = {k: v for k, v in self._protocols.items() if k in conn.streams}
        elif head.method == b"HEAD":
            self._kinds[sid] = heads.HEAD
        if len(self._kinds) > 2 * s.max_concurrent_streams:
            self._kinds = {k: v for k, v in self._kinds.items() if k in conn.streams}
        return [], [RequestReceived(sid, head, scheme, end)]

    def _peer_reset(self) -> None:
        # Rapid Reset: a reset of a stream we are still answering cost us its work for nothing.
        # (One whose response we ended is a client cancelling the rest of its upload.)
        if not self._resets.take(self._now):
            raise _violation(ENHANCE_YOUR_CALM, "too many streams reset by the client (rapid reset)")
        self._premature_resets += 1
        min_streams = self.settings.premature_reset_min_streams
        if self._opened >= min_streams and 2 * self._premature_resets > self._opened:
            raise _violation(ENHANCE_YOUR_CALM, "most streams are reset by the client (rapid reset)")


class ClientConnection(_Connection):
    """The client side of one HTTP/2 connection (to an upstream)."""

    _CLIENT = True

    @classmethod
    def from_state(cls, state: dict[str, Any], settings: Http2Settings | None = None) -> ClientConnection:
        codec = cls(settings)
        codec._restore(state)
        return codec

    @property
    def open_streams(self) -> int:
        return self._h2.open_outbound_streams  # type: ignore[no-any-return]

    @property
    def highest_stream_id(self) -> int:
        return self._h2.highest_outbound_stream_id  # type: ignore[no-any-return]

    @property
    def available_streams(self) -> int:
        """How many more streams the peer allows now (0 after its GOAWAY or out of ids)."""
        conn = self._h2
        if self._goaway_received is not None or self._error is not None:
            return 0
        left_ids = (MAX_STREAM_ID - max(conn.highest_outbound_stream_id, -1)) // 2
        room = conn.remote_settings.max_concurrent_streams - conn.open_outbound_streams
        return max(0, min(room, left_ids))

    def send_request(self, head: RequestHead, scheme: bytes, end_stream: bool) -> int:
        """Open a stream with this request; its id. Raises NoStreamAvailable, or ValueError for
        a head HTTP/2 cannot carry (an upgrade other than websocket, or websocket to a peer
        without RFC 8441)."""
        conn = self._h2
        if self._goaway_received is not None or self._error is not None:
            raise NoStreamAvailable("the connection is going away", True)
        if conn.highest_outbound_stream_id + 2 > MAX_STREAM_ID:
            raise NoStreamAvailable("stream ids exhausted", True)
        limit = conn.remote_settings.max_concurrent_streams
        if len(conn.streams) >= min(limit, self._sweep_at) and self._open_count() >= limit:
            raise NoStreamAvailable("the peer's max_concurrent_streams is reached", False)
        fields, kind = heads.request_fields(head, scheme, bool(conn.remote_settings.enable_connect_protocol))
        sid = conn.highest_outbound_stream_id + 2 if conn.highest_outbound_stream_id else 1
        stream = _new_stream(conn, sid, True)
        stream.request_method = head.method  # h2 expects no body on a response to HEAD
        self._send_headers(stream, fields, end_stream, False)
        self._opened += 1
        if kind != heads.PLAIN:
            self._kinds[sid] = kind
        return sid

    def _on_headers(self, frame: HeadersFrame) -> tuple[list[Frame], list[Any]]:
        conn = self._h2
        fields = self._decode(frame)
        sid = frame.stream_id
        end = "END_STREAM" in frame.flags
        try:
            stream = conn._get_stream_by_id(sid)  # closed: StreamClosedError, h2 answers
        except StreamClosedError:
            raise
        except NoSuchStreamError as exc:
            raise _violation(PROTOCOL_ERROR, f"HEADERS on stream {sid}, never opened") from exc
        if conn.state_machine.state not in _OPEN:  # open: every input leaves it so
            conn.state_machine.process_input(ConnectionInputs.RECV_HEADERS)
        sm = stream.state_machine
        if sm.state != StreamState.OPEN and sm.state != StreamState.HALF_CLOSED_LOCAL:
            self._receive_headers_h2(stream, fields, end)  # h2 raises the state error it should
        if sm.headers_received:
            return self._trailers(stream, fields, end)
        kind = self._kinds.get(sid, heads.PLAIN)
        try:
            head = heads.response_head(fields, end, kind, self.settings.max_header_fields)
        except heads.Malformed as exc:
            return self._malformed(sid, str(exc))
        if head.status < 200 and head.status != 101:  # (a 101 here is the 2xx to an extended CONNECT)
            sm.process_input(_RECV_INFORMATIONAL)
            return [], [InformationalReceived(sid, head)]
        _advance(sm, _RECV_HEADERS)
        if end:
            _advance(sm, _RECV_END)
        # What DATA may follow: none after HEAD, 204 or 304 (h2 would expect the length of the
        # representation), a tunnel's bytes after a 2xx to CONNECT, else the content-length.
        if head.status in (204, 304) or kind == heads.HEAD:
            stream._expected_content_length = 0
        elif kind >= heads.CONNECT and head.status < 300 or head.status == 101:
            stream._expected_content_length = None
        else:
            stream._expected_content_length = head.content_length
        if end:
            self._kinds.pop(sid, None)
        return [], [ResponseReceived(sid, head, end)]

    def _refused_by_goaway(self, last: int) -> list[Any]:
        # Streams above the last id were never processed (RFC 9113 §6.8): safe to retry, and
        # gone from this connection.
        conn = self._h2
        events: list[Any] = []
        for sid in sorted(conn.streams):
            if sid > last and sid % 2 == 1:
                del conn.streams[sid]
                conn._closed_streams[sid] = StreamClosedBy.RECV_RST_STREAM
                self._blocked.discard(sid)
                self._kinds.pop(sid, None)
                events.append(StreamReset(sid, REFUSED_STREAM, True))
        return events
