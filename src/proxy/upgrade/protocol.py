"""The control-channel message layer, sans-IO: frames and message names, no sockets, no trio.

One SOCK_SEQPACKET message is one frame (upgrade.md §7.3):

    magic b"PXUP" | proto u16 | type u16 | body_len u32 | body (JSON object, UTF-8)

plus at most one SCM_RIGHTS control message whose fds are listed, in order, by the body
(`fds` counts them; `fdpass` moves them). Bytes inside bodies travel as base64 strings.

Versioning: HELLO carries the sender's [proto_min, proto_max]; WELCOME answers with the highest
version both speak, or ABORT. Messages 1-7 (the listener handover) are frozen forever, so any two
releases can at least hand over listening sockets; later versions may only add messages and
optional body fields.

Besides the generation handshake (keeper or old worker <-> new worker, §7.4), the keeper and
its workers use the same frames for supervision: PAUSE/RESUME of accept loops, admin requests
forwarded to a worker, drain and stop, log reopening.
"""

from __future__ import annotations

import json
import struct
from enum import IntEnum
from typing import Any

MAGIC = b"PXUP"
PROTO_MIN = 1
PROTO_MAX = 1
HEADER = struct.Struct("!4sHHI")
# A SEQPACKET message must fit the socket buffer; both ends raise it (fdpass.tune) to 4 MiB.
MAX_BODY = 1 << 20
# Bodies bigger than this travel in a memfd passed as the frame's last fd (fdpass), so no frame
# outgrows a socket buffer an unprivileged process can get (net.core.wmem_max, ~208 KiB).
INLINE_MAX = 48 * 1024
MAX_OUT_OF_BAND = 1 << 30
MAX_FDS = 250  # per message (SCM_MAX_FD is 253)


class Msg(IntEnum):
    # frozen listener-handover subset (never renumbered, never changed incompatibly)
    HELLO = 1  # N -> keeper: proto_min, proto_max, pid, build, features, schemas
    WELCOME = 2  # keeper -> N: proto, generation, worker_index, workers, config (fd), logging
    LISTENERS = 3  # keeper -> N: items[{key, name, address, index}], more; + fds
    LISTENERS_ACK = 4  # N -> keeper: adopted[keys], unknown[keys]
    STATE = 5  # O -> N: kind, schema, blob (stats)
    READY = 6  # N -> keeper: startup_ms
    PAUSED = 7  # O -> keeper: accept loops stopped, listener fds kept
    # handover of live connections (O <-> N over their own socketpair)
    COMMIT = 9  # keeper -> O and N: role (old|new), + the O<->N socketpair end
    COMMIT_ACK = 10  # O -> keeper: conns, migratable
    CONN = 11  # O -> N: items[{id, kind, listener, schema, nfds, state}]; + fds
    ADOPTED = 12  # N -> O: ids
    REJECT = 13  # N -> O: ids, reason
    STATS_DELTA = 14  # O -> N: counters O gathered since STATE
    DRAINED = 15  # O -> N and keeper: migrated, drained, forced
    ABORT = 16  # either way: reason
    # keeper <-> worker supervision
    PAUSE = 20
    RESUME = 21
    RESUMED = 22  # O -> keeper: accepting again (the new generation failed)
    ADMIN = 23  # keeper -> worker: id, method, target, body(b64)
    ADMIN_REPLY = 24  # worker -> keeper: id, status, content_type, body(b64), allow
    DRAIN = 25  # keeper -> worker: stop accepting, finish open connections, exit
    STOP = 26  # keeper -> worker: exit now
    REOPEN_LOGS = 27
    HANDOVER_DONE = 28  # N -> keeper: migrated (N saw O's DRAINED or EOF)


class ProtocolError(Exception):
    """A frame that cannot be trusted: the upgrade using this channel is aborted."""


def encode(mtype: Msg, body: dict[str, Any] | None = None, proto: int = PROTO_MAX) -> bytes:
    return frame(mtype, encode_body(body), proto)


def encode_body(body: dict[str, Any] | None) -> bytes:
    return json.dumps(body or {}, separators=(",", ":")).encode()


def frame(mtype: Msg, payload: bytes, proto: int = PROTO_MAX) -> bytes:
    if len(payload) > MAX_BODY:
        raise ProtocolError(f"{mtype.name} body is {len(payload)} bytes, over {MAX_BODY}")
    return HEADER.pack(MAGIC, proto, mtype, len(payload)) + payload


def decode_body(payload: bytes, what: str) -> dict[str, Any]:
    try:
        body = json.loads(payload)
    except ValueError as exc:
        raise ProtocolError(f"{what}: body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"{what}: body is not an object")
    return body


def decode(data: bytes) -> tuple[Msg, dict[str, Any]]:
    if len(data) < HEADER.size:
        raise ProtocolError(f"short frame ({len(data)} bytes)")
    magic, proto, mtype, length = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}")
    if not PROTO_MIN <= proto <= PROTO_MAX and mtype not in _FROZEN:
        raise ProtocolError(f"unsupported protocol version {proto}")
    if length != len(data) - HEADER.size:
        raise ProtocolError(f"body length {length} but {len(data) - HEADER.size} bytes follow")
    try:
        kind = Msg(mtype)
    except ValueError:
        raise ProtocolError(f"unknown message type {mtype}") from None
    return kind, decode_body(data[HEADER.size :], kind.name)


_FROZEN = {m.value for m in Msg if m.value <= 7}


def negotiate(peer_min: int, peer_max: int) -> int | None:
    """The highest version both sides speak, or None."""
    best = min(PROTO_MAX, peer_max)
    return best if best >= max(PROTO_MIN, peer_min) else None


def expect(got: Msg, body: dict[str, Any], *wanted: Msg) -> dict[str, Any]:
    """Check a message is one of `wanted`; an ABORT or anything else is a protocol error."""
    if got in wanted:
        return body
    if got == Msg.ABORT:
        raise ProtocolError(f"peer aborted: {body.get('reason', '?')}")
    raise ProtocolError(f"expected {'/'.join(w.name for w in wanted)}, got {got.name}")
