"""Refuse request bodies larger than a limit with 413 (flag RLSE).

    filters:
      - type: payload_limit
        config:
          max_bytes: 1048576

A request whose Content-Length is over the limit is refused before any of its body is read;
a body without a length (chunked) is counted as it streams and refused once it passes the limit.
The connection is closed after the 413, since the rest of the body was not read.
"""

from __future__ import annotations

from typing import Any

from proxy.http.filter import LocalReply, Stream, StreamFilter
from proxy.http.filters import check_mapping, get_int
from proxy.http.stream_info import PAYLOAD_TOO_LARGE


class PayloadLimitFilter(StreamFilter):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        check_mapping(config, "", ("max_bytes",), required=("max_bytes",))
        self.max_bytes = get_int(config, "max_bytes", minimum=0)
        self._key = f"payload_limit.{id(self)}.received"  # distinct if a chain holds two of these

    def _reply(self) -> LocalReply:
        return LocalReply(413, "payload too large", flag=PAYLOAD_TOO_LARGE, close=True)

    async def on_request(self, stream: Stream) -> LocalReply | None:
        length = stream.request.content_length
        if length is not None and length > self.max_bytes:
            return self._reply()
        return None

    async def on_request_body(self, stream: Stream, data: bytes, end: bool) -> bytes | LocalReply:
        # Counted whatever the framing: cheap, and does not trust the codec to enforce lengths.
        state = stream.state
        received = state.get(self._key, 0) + len(data)
        state[self._key] = received
        if received > self.max_bytes:
            return self._reply()
        return data
