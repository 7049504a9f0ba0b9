"""Config errors: every problem found in a config file, each with its path and line.

A path is kept as a tuple of keys and list indexes while loading (`("clusters", 1, "hosts", 0)`)
and shown as `clusters[1].hosts[0]`; the top level is shown as `<root>`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

ROOT = "<root>"

# A path while loading: mapping keys (usually str) and list indexes (int).
PathTuple = tuple[Any, ...]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a config file."""

    path: str
    message: str
    line: int | None
    filename: str

    def __str__(self) -> str:
        where = self.filename if self.line is None else f"{self.filename}:{self.line}"
        return f"{where}: {self.path}: {self.message}"


class ConfigError(Exception):
    """A config file could not be loaded; `issues` holds every problem found, in file order."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues: list[ConfigIssue] = list(issues)
        super().__init__(self.issues)

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)


def format_path(path: PathTuple) -> str:
    """`("clusters", 1, "hosts", 0, "address")` -> `clusters[1].hosts[0].address`."""
    if not path:
        return ROOT
    parts: list[str] = []
    for part in path:
        if isinstance(part, str) and _IDENTIFIER.match(part):
            parts.append(f".{part}" if parts else part)
        elif isinstance(part, int) and not isinstance(part, bool):
            parts.append(f"[{part}]")
        else:
            # A mapping key that is not a plain word (metadata keys, non-string YAML keys).
            parts.append(f"[{part!r}]")
    return "".join(parts)


def _natural(text: str) -> list[Any]:
    # "clusters[2]" sorts before "clusters[10]"; str and int chunks alternate, so lists compare.
    return [int(chunk) if i % 2 else chunk for i, chunk in enumerate(re.split(r"(\d+)", text))]


def sort_key(issue: ConfigIssue) -> tuple[Any, ...]:
    """File order: issues without a line first, then by line, then by path."""
    return (issue.line is not None, issue.line or 0, _natural(issue.path))


class Issues:
    """Collects issues while loading one file. `lines` maps a path to the line it starts on."""

    def __init__(self, filename: str, lines: dict[PathTuple, int] | None = None) -> None:
        self.filename = filename
        self.lines: dict[PathTuple, int] = {} if lines is None else lines
        self.items: list[ConfigIssue] = []

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def line_of(self, path: PathTuple) -> int | None:
        """The line of `path`, or of its nearest ancestor that has one (None for JSON)."""
        while True:
            line = self.lines.get(path)
            if line is not None or not path:
                return line
            path = path[:-1]

    def add(self, path: PathTuple, message: str, *, line: int | None = None) -> None:
        if line is None:
            line = self.line_of(path)
        self.items.append(ConfigIssue(format_path(path), message, line, self.filename))

    def error(self) -> ConfigError:
        return ConfigError(sorted(self.items, key=sort_key))
