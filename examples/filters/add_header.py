"""An example custom stream filter: adds a response header.

    filters:
      - type: examples.filters.add_header:AddHeader
        config: {name: x-powered-by, value: proxy}

The module must be importable by the proxy (on PYTHONPATH, or installed).
"""

from __future__ import annotations

from typing import Any

from proxy.http.filter import Stream, StreamFilter


class AddHeader(StreamFilter):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        unknown = set(config) - {"name", "value"}
        if unknown:
            raise ValueError(f"unknown keys: {', '.join(sorted(unknown))}")
        name = config.get("name", "x-example")
        value = config.get("value", "1")
        if not isinstance(name, str) or not name or not isinstance(value, str):
            raise ValueError("'name' and 'value' must be strings")
        self.header = (name.encode("ascii"), value.encode("latin-1"))

    # Only the hooks a filter overrides are called: this one touches responses only.
    async def on_response(self, stream: Stream) -> None:
        if stream.response is not None:
            stream.response.headers.append(self.header)
