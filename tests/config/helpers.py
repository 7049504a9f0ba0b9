"""Helpers for the config tests: load text and get the issues it raises."""

from __future__ import annotations

from textwrap import dedent

import pytest

from proxy.config import ConfigError, ConfigIssue, load_text

# A small valid config that the error tests change in one place.
VALID = """\
listeners:
  - name: front
    address: 127.0.0.1:8080
    protocol: tcp
    cluster: back
clusters:
  - name: back
    hosts:
      - address: 10.0.0.1:80
"""


def issues_of(text: str, fmt: str = "yaml", filename: str = "test.yaml") -> list[ConfigIssue]:
    """The issues loading `text` raises (it must raise)."""
    with pytest.raises(ConfigError) as info:
        load_text(dedent(text), filename=filename, fmt=fmt)  # type: ignore[arg-type]
    assert info.value.issues, "ConfigError without issues"
    return info.value.issues


def one_issue(text: str, fmt: str = "yaml") -> ConfigIssue:
    """The single issue loading `text` raises."""
    issues = issues_of(text, fmt)
    assert len(issues) == 1, "\n".join(map(str, issues))
    return issues[0]


def where(issues: list[ConfigIssue]) -> list[tuple[str, int | None]]:
    return [(issue.path, issue.line) for issue in issues]
