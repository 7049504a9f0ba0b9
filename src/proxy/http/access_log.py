"""Access logs: one line per request, a format string of %variables%, to stdout, stderr or a file.

Files are opened for append with line buffering and reopened on SIGUSR1 (log rotation), like
the process log. The default format is Envoy's default, in our variable names.
"""

from __future__ import annotations

import io
import sys
from typing import Any, TextIO

from proxy.variables import compile_template

DEFAULT_FORMAT = (
    '[%start_time%] "%method% %request_uri% %protocol%" %response_code% %response_flags% '
    '%bytes_received% %bytes_sent% %duration% %upstream_service_time% "%x_forwarded_for%" '
    '"%user_agent%" "%request_id%" "%host%" "%upstream_host%"'
)

_open_loggers: list[AccessLogger] = []


class AccessLogger:
    __slots__ = ("path", "template", "stream", "__weakref__")

    def __init__(self, path: str, fmt: str | None) -> None:
        self.path = path
        self.template = compile_template(fmt or DEFAULT_FORMAT)
        self.stream: TextIO = self._open()
        _open_loggers.append(self)

    def _open(self) -> TextIO:
        if self.path in ("stdout", "stderr"):
            stream = sys.stdout if self.path == "stdout" else sys.stderr
            # One line per request must be visible as it happens, not when a block fills up
            # (stdout to a file or pipe is block-buffered by default).
            if isinstance(stream, io.TextIOWrapper) and not stream.line_buffering:
                stream.reconfigure(line_buffering=True)
            return stream
        return open(self.path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - owned here

    def log(self, info: Any) -> None:
        try:
            self.stream.write(self.template.render(info, missing="-") + "\n")
        except (OSError, ValueError):
            pass  # a full disk must not fail requests

    def reopen(self) -> None:
        if self.path in ("stdout", "stderr"):
            return
        old, self.stream = self.stream, self._open()
        old.close()

    def close(self) -> None:
        if self.path not in ("stdout", "stderr"):
            self.stream.close()
        if self in _open_loggers:
            _open_loggers.remove(self)


def reopen_all() -> None:
    for logger in list(_open_loggers):
        logger.reopen()
