"""Fault injection (Envoy's envoy.filters.http.fault): delay and/or abort a share of requests.

    filters:
      - type: fault
        config:
          delay: {fixed: 100ms, percentage: 50}      # percentage defaults to 100
          abort: {status: 503, percentage: 10, body: "fault"}
          header_control: true                        # let clients force faults (test setups only)
          max_header_delay: 10s                       # cap for x-fault-delay-ms (default 10s)

With `header_control: true` the request headers `x-fault-delay-ms: <ms>` and
`x-fault-abort: <status 200-599>` force a delay / abort on that request whatever the
percentages (like Envoy's x-envoy-fault-* headers). Invalid header values are ignored.

The delay comes first (the stream flag DI is recorded, then the filter sleeps), then the abort
(a local reply flagged FI).
"""

from __future__ import annotations

import random
from typing import Any

import trio

from proxy.http.filter import LocalReply, Stream, StreamFilter
from proxy.http.filters import check_mapping, get_bool, get_duration, get_int, get_percentage, header_value
from proxy.http.stream_info import DELAY_INJECTED, FAULT_INJECTED

DELAY_HEADER = b"x-fault-delay-ms"
ABORT_HEADER = b"x-fault-abort"
DEFAULT_ABORT_BODY = "fault filter abort"
DEFAULT_MAX_HEADER_DELAY = "10s"


def _uint(raw: bytes | None) -> int | None:
    """A small non-negative integer from a header value, or None if absent or malformed."""
    if raw is None:
        return None
    raw = raw.strip()
    if not raw.isdigit() or len(raw) > 12:
        return None
    return int(raw)


class FaultFilter(StreamFilter):
    def __init__(self, config: dict[str, Any], *, rng: random.Random | None = None) -> None:
        super().__init__(config)
        check_mapping(config, "", ("delay", "abort", "header_control", "max_header_delay"))
        self.rng = rng if rng is not None else random.Random()

        self.delay: float | None = None
        self.delay_percentage = 0.0
        if "delay" in config:
            delay = check_mapping(config["delay"], "delay", ("fixed", "percentage"), required=("fixed",))
            self.delay = get_duration(delay, "fixed", path="delay")
            self.delay_percentage = get_percentage(delay, "percentage", path="delay")

        self.abort_status: int | None = None
        self.abort_percentage = 0.0
        self.abort_body = DEFAULT_ABORT_BODY.encode()
        if "abort" in config:
            abort = check_mapping(config["abort"], "abort", ("status", "percentage", "body"), required=("status",))
            self.abort_status = get_int(abort, "status", path="abort", minimum=200, maximum=599)
            self.abort_percentage = get_percentage(abort, "percentage", path="abort")
            body = abort.get("body", DEFAULT_ABORT_BODY)
            if not isinstance(body, str):
                raise ValueError(f"abort.body: expected a string, got {body!r}")
            self.abort_body = body.encode()

        self.header_control = get_bool(config, "header_control", False)
        if "max_header_delay" in config and not self.header_control:
            raise ValueError("max_header_delay: only meaningful with header_control: true")
        self.max_header_delay = get_duration(config, "max_header_delay", DEFAULT_MAX_HEADER_DELAY, positive=False)

        if self.delay is None and self.abort_status is None and not self.header_control:
            raise ValueError("nothing to inject: give 'delay', 'abort' and/or 'header_control: true'")

    def _roll(self, percentage: float) -> bool:
        if percentage >= 100.0:
            return True
        if percentage <= 0.0:
            return False
        return self.rng.random() * 100.0 < percentage

    async def on_request(self, stream: Stream) -> LocalReply | None:
        delay = None
        abort_status = None
        if self.header_control:
            headers = stream.request.headers
            ms = _uint(header_value(headers, DELAY_HEADER))
            if ms is not None:
                delay = min(ms / 1000.0, self.max_header_delay)
            status = _uint(header_value(headers, ABORT_HEADER))
            if status is not None and 200 <= status <= 599:
                abort_status = status

        if delay is None and self.delay is not None and self._roll(self.delay_percentage):
            delay = self.delay
        if delay is not None and delay > 0:
            stream.info.add_flag(DELAY_INJECTED)  # before sleeping: logged even if the client gives up
            await trio.sleep(delay)

        if abort_status is None and self.abort_status is not None and self._roll(self.abort_percentage):
            abort_status = self.abort_status
        if abort_status is not None:
            return LocalReply(abort_status, self.abort_body, flag=FAULT_INJECTED)
        return None
