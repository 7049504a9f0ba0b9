"""Local rate limiting with a token bucket (Envoy's envoy.filters.http.local_ratelimit).

    filters:
      - type: local_rate_limit
        config:
          max_tokens: 100          # bucket size: the burst allowed
          tokens_per_fill: 10      # added every fill_interval (default 1), up to max_tokens
          fill_interval: 1s
          key_header: x-api-key    # optional: one bucket per value of this header
          max_keys: 10000          # optional: buckets kept (least recently used evicted)
          status: 429              # optional: the status of the refusal (400-599)

Each request takes one token; with none left it gets a local reply (default 429 "rate limited",
flag RL) with `retry-after` set to the whole seconds until the next fill. Buckets start full
and are refilled lazily from `trio.current_time()` on each request, on the fill_interval
cadence, so the filter runs no background task.

Limits are per listener and per worker process. With `key_header`, requests without that
header share one bucket; an evicted bucket starts full again when its key comes back.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from typing import Any

import trio

from proxy.http.filter import LocalReply, Stream, StreamFilter
from proxy.http.filters import check_header_name, check_mapping, get_duration, get_int, header_value
from proxy.http.stream_info import RATE_LIMITED

DEFAULT_MAX_KEYS = 10_000
_LONG_KEY = 64  # longer header values are keyed by their digest, to bound memory per bucket


class TokenBucket:
    __slots__ = ("tokens", "last_fill")

    def __init__(self, tokens: int, now: float) -> None:
        self.tokens = tokens
        self.last_fill = now


class LocalRateLimitFilter(StreamFilter):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        check_mapping(
            config,
            "",
            ("max_tokens", "tokens_per_fill", "fill_interval", "key_header", "max_keys", "status"),
            required=("max_tokens", "fill_interval"),
        )
        self.max_tokens = get_int(config, "max_tokens", minimum=1)
        self.tokens_per_fill = get_int(config, "tokens_per_fill", 1, minimum=1)
        self.fill_interval = get_duration(config, "fill_interval")
        self.status = get_int(config, "status", 429, minimum=400, maximum=599)
        self.key_header: bytes | None = None
        if "key_header" in config:
            self.key_header = check_header_name(config["key_header"], "key_header")
        elif "max_keys" in config:
            raise ValueError("max_keys: only meaningful with key_header")
        self.max_keys = get_int(config, "max_keys", DEFAULT_MAX_KEYS, minimum=1)
        self._bucket: TokenBucket | None = None  # the single bucket, without key_header
        self._buckets: OrderedDict[bytes | None, TokenBucket] = OrderedDict()

    def _get_bucket(self, stream: Stream, now: float) -> TokenBucket:
        if self.key_header is None:
            if self._bucket is None:
                self._bucket = TokenBucket(self.max_tokens, now)
            return self._bucket
        key = header_value(stream.request.headers, self.key_header)
        if key is not None and len(key) > _LONG_KEY:
            key = hashlib.blake2b(key, digest_size=16).digest()
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = TokenBucket(self.max_tokens, now)
            if len(buckets) > self.max_keys:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(key)
        return bucket

    def take(self, bucket: TokenBucket, now: float) -> float | None:
        """Take a token: None if one was there, else the seconds until the next fill."""
        elapsed = now - bucket.last_fill
        if elapsed >= self.fill_interval:
            fills = int(elapsed // self.fill_interval)
            bucket.tokens = min(self.max_tokens, bucket.tokens + fills * self.tokens_per_fill)
            bucket.last_fill += fills * self.fill_interval
        if bucket.tokens > 0:
            bucket.tokens -= 1
            return None
        return bucket.last_fill + self.fill_interval - now

    async def on_request(self, stream: Stream) -> LocalReply | None:
        now = trio.current_time()
        wait = self.take(self._get_bucket(stream, now), now)
        if wait is None:
            return None
        retry_after = str(max(1, math.ceil(wait))).encode()
        return LocalReply(self.status, "rate limited", headers=[(b"retry-after", retry_after)], flag=RATE_LIMITED)
