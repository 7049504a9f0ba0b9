"""An idle h2 connection's protocol state as JSON-able data, and back (see http2: hot upgrade).

What the peer still holds us to once no stream is open: the settings both ways (acknowledged
values first, then any not acknowledged yet), both HPACK dynamic tables (entries, size,
limits, a pending size update), the connection flow-control windows both ways, the highest
stream ids, the connection state and whether the client preface was read. Bytes travel as
latin-1 strings, which JSON carries unchanged.

This reads and writes h2's and hpack's internals: verified against h2 4.3-4.4 and hpack 4.2
(pyproject pins the range).
"""

from __future__ import annotations

import collections
from typing import Any

from h2.connection import ConnectionState, H2Connection
from h2.settings import Settings
from hpack.table import HeaderTable

FORMAT = 1


def _b(data: bytes | bytearray) -> str:
    return bytes(data).decode("latin-1")


def _unb(text: str) -> bytes:
    return text.encode("latin-1")


def _settings(settings: Settings) -> dict[str, list[int | None]]:
    return {str(int(code)): list(values) for code, values in settings._settings.items()}


def _restore_settings(settings: Settings, data: dict[str, list[int | None]]) -> None:
    settings._settings = {int(code): collections.deque(values) for code, values in data.items()}  # type: ignore[arg-type]


def _table(table: HeaderTable) -> dict[str, Any]:
    return {
        "maxsize": table._maxsize,
        "size": table._current_size,
        "resized": table.resized,
        "entries": [[_b(n), _b(v)] for n, v in table.dynamic_entries],
    }


def _restore_table(table: HeaderTable, data: dict[str, Any]) -> None:
    table._maxsize = data["maxsize"]
    table._current_size = data["size"]
    table.resized = data["resized"]
    table.dynamic_entries = collections.deque((_unb(n), _unb(v)) for n, v in data["entries"])


def export_h2(conn: H2Connection) -> dict[str, Any]:
    """Raises ValueError while a stream is open: only an idle connection moves."""
    if any(stream.open for stream in conn.streams.values()):
        raise ValueError("streams are open: only an idle HTTP/2 connection can be exported")
    buffer = conn.incoming_buffer
    if buffer._headers_buffer:
        raise ValueError("a header block is half received")
    inbound = conn._inbound_flow_control_window_manager
    return {
        "format": FORMAT,
        "client_side": bool(conn.config.client_side),
        "state": conn.state_machine.state.name,
        "local_settings": _settings(conn.local_settings),
        "remote_settings": _settings(conn.remote_settings),
        "encoder": {"table": _table(conn.encoder.header_table), "size_changes": list(conn.encoder.table_size_changes)},
        "decoder": {
            "table": _table(conn.decoder.header_table),
            "max_header_list_size": conn.decoder.max_header_list_size,
            "max_allowed_table_size": conn.decoder.max_allowed_table_size,
        },
        "outbound_window": conn.outbound_flow_control_window,
        "inbound_window": {"max": inbound.max_window_size, "current": inbound.current_window_size, "processed": inbound._bytes_processed},
        "max_outbound_frame_size": conn.max_outbound_frame_size,
        "max_inbound_frame_size": conn.max_inbound_frame_size,
        "highest_inbound_stream_id": conn.highest_inbound_stream_id,
        "highest_outbound_stream_id": conn.highest_outbound_stream_id,
        "preface_left": _b(buffer._preamble),  # b"" once the client preface was read
        "buffered": _b(buffer._data),  # a partial frame read before the move
        "unsent": _b(conn._data_to_send),
    }


def restore_h2(conn: H2Connection, data: dict[str, Any]) -> None:
    """Overwrite a fresh connection's state with an exported one (same side)."""
    if data.get("format") != FORMAT:
        raise ValueError(f"unknown HTTP/2 state format {data.get('format')!r}")
    if data["client_side"] != bool(conn.config.client_side):
        raise ValueError("exported from the other side of a connection")
    conn.state_machine.state = ConnectionState[data["state"]]
    _restore_settings(conn.local_settings, data["local_settings"])
    _restore_settings(conn.remote_settings, data["remote_settings"])
    _restore_table(conn.encoder.header_table, data["encoder"]["table"])
    conn.encoder.table_size_changes = list(data["encoder"]["size_changes"])
    decoder = data["decoder"]
    _restore_table(conn.decoder.header_table, decoder["table"])
    conn.decoder.max_header_list_size = decoder["max_header_list_size"]
    conn.decoder.max_allowed_table_size = decoder["max_allowed_table_size"]
    conn.outbound_flow_control_window = data["outbound_window"]
    inbound = conn._inbound_flow_control_window_manager
    inbound.max_window_size = data["inbound_window"]["max"]
    inbound.current_window_size = data["inbound_window"]["current"]
    inbound._bytes_processed = data["inbound_window"]["processed"]
    conn.max_outbound_frame_size = data["max_outbound_frame_size"]
    conn.max_inbound_frame_size = data["max_inbound_frame_size"]
    conn.highest_inbound_stream_id = data["highest_inbound_stream_id"]
    conn.highest_outbound_stream_id = data["highest_outbound_stream_id"]
    buffer = conn.incoming_buffer
    buffer._preamble = _unb(data["preface_left"])
    buffer._preamble_len = len(buffer._preamble)
    buffer._data = bytearray(_unb(data["buffered"]))
    conn._data_to_send = bytearray(_unb(data["unsent"]))
