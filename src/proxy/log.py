"""Structured logging: one line per event, `key=value` (logfmt) or JSON, with a level.

Usage: `log = get_logger("tcp_proxy")`, then `log.info("upstream.connect_failed", host=..., error=...)`.
The event name comes first so lines grep well; values with spaces or quotes are quoted.
Built on the stdlib logging module so levels, handlers and SIGUSR1 reopen stay ordinary.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_ROOT = "proxy"


def _logfmt_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' ="\\\n\t'):
        return json.dumps(text)
    return text


class _Formatter(logging.Formatter):
    def __init__(self, fmt: str) -> None:
        super().__init__()
        self.json = fmt == "json"

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", {})
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        level = record.levelname.lower()
        if self.json:
            out = {"ts": ts, "level": level, "logger": record.name, "event": record.getMessage(), **fields}
            if record.exc_info:
                out["traceback"] = self.formatException(record.exc_info)
            return json.dumps(out, default=str)
        parts = [f"ts={ts}", f"level={level}", f"logger={record.name}", f"event={record.getMessage()}"]
        parts.extend(f"{k}={_logfmt_value(v)}" for k, v in fields.items())
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class Logger:
    """A thin front for a stdlib logger that takes an event name plus keyword fields."""

    __slots__ = ("_logger",)

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def _log(self, level: int, event: str, exc_info: Any, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, exc_info=exc_info, extra={"fields": fields})

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, None, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, None, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, None, fields)

    def error(self, event: str, exc_info: Any = None, **fields: Any) -> None:
        self._log(logging.ERROR, event, exc_info, fields)

    def is_debug(self) -> bool:
        return self._logger.isEnabledFor(logging.DEBUG)


def get_logger(name: str) -> Logger:
    return Logger(logging.getLogger(f"{_ROOT}.{name}"))


class _ReopenableFileHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Appends to a file; `reopen()` (SIGUSR1) picks up a rotated file at the same path."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(self._open())

    def _open(self) -> TextIO:
        return open(self.path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - owned by the handler

    def reopen(self) -> None:
        self.acquire()
        try:
            old, self.stream = self.stream, self._open()
            old.close()
        finally:
            self.release()


def setup(level: str = "info", fmt: str = "text", file: str | None = None) -> None:
    """Configure the `proxy` logger tree: one handler, to `file` or stderr."""
    root = logging.getLogger(_ROOT)
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    handler: logging.Handler = _ReopenableFileHandler(file) if file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(fmt))
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    root.propagate = False


def set_level(level: str) -> None:
    logging.getLogger(_ROOT).setLevel(LEVELS[level])


def current_level() -> str:
    """The current level's name (as `set_level` takes it)."""
    current = logging.getLogger(_ROOT).getEffectiveLevel()
    return next((name for name, value in LEVELS.items() if value == current), logging.getLevelName(current).lower())


def reopen() -> None:
    """Reopen log files after rotation (SIGUSR1)."""
    for handler in logging.getLogger(_ROOT).handlers:
        if isinstance(handler, _ReopenableFileHandler):
            handler.reopen()


class Throttle:
    """Lets an event through at most once per `interval` and counts the ones it holds back,
    for log lines about bursts (one line per interval, with the count). Sans-IO: the caller
    gives it the time."""

    __slots__ = ("interval", "held", "last")

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self.held = 0  # events held back since the last one let through
        self.last: float | None = None  # when the last one was let through

    def hit(self, now: float) -> int:
        """Count one event at `now`. Returns how many to report now (this one and those held
        back since the last report), or 0 to stay quiet."""
        last = self.last
        if last is not None and now - last < self.interval:
            self.held += 1
            return 0
        count, self.held, self.last = self.held + 1, 0, now
        return count

    def due(self, now: float) -> tuple[int, dict[str, str]]:
        """`hit`, and the line's `since` field (time since the previous line, none for the
        first): `count, since = t.due(now)`, then `if count: log...(..., n=count, **since)`."""
        last = self.last
        count = self.hit(now)
        return count, ({} if not count or last is None else {"since": f"{now - last:.1f}s"})
