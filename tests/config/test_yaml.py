"""YAML parsing: lines, duplicate keys, syntax errors, anchors, odd nodes."""

from __future__ import annotations

from textwrap import dedent

import pytest
import yaml

from proxy.config import ConfigError, load, load_text
from proxy.config import loader as loader_module
from tests.config.helpers import VALID, issues_of, one_issue, where


def test_duplicate_key() -> None:
    issue = one_issue("runtime:\n  workers: 2\n  drain_timeout: 5s\n  workers: 3\n")
    assert (issue.path, issue.line, issue.message) == ("runtime.workers", 4, "duplicate key 'workers' (first on line 2)")


def test_duplicate_top_level_key() -> None:
    issue = one_issue(VALID + "listeners: []\n")
    assert (issue.path, issue.line, issue.message) == ("listeners", 10, "duplicate key 'listeners' (first on line 1)")


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("runtime:\n  workers: 2\n  drain_timeout: 5s: 6s\n", 3, "mapping values are not allowed"),
        ("runtime:\n  workers: [1, 2\nlogging: {}\n", 3, "invalid YAML"),
        ("listeners:\n  - name: a\n   address: x\n", 3, "invalid YAML"),
        ("a: 1\n---\nb: 2\n", 2, "single document"),
        ("a: *nothing\n", 1, "undefined alias"),
        ("logging:\n  level: \"info\n", 3, "invalid YAML"),
    ],
)
def test_syntax_errors(text: str, line: int, words: str) -> None:
    issue = one_issue(text)
    assert (issue.path, issue.line) == ("<root>", line), issue
    assert issue.message.startswith("invalid YAML: ") and words in issue.message, issue.message


def test_control_character_has_a_line() -> None:
    issue = one_issue("runtime:\n  workers: 2\x07\n")
    assert (issue.path, issue.line) == ("<root>", 2)
    assert "#x0007" in issue.message


def test_sequence_items_use_their_own_line() -> None:
    text = """\
    clusters:
      - name: a
        hosts:
          -
            address: nohost
          - {address: "10.0.0.1:80",
             weight: 0}
    """
    assert where(issues_of(text)) == [("clusters[0].hosts[0].address", 5), ("clusters[0].hosts[1].weight", 7)]


def test_error_inside_an_alias_is_reported_where_it_is_used() -> None:
    text = """\
    clusters:
      - name: a
        hosts: &hosts
          - address: nohost
      - name: b
        hosts: *hosts
    """
    issues = issues_of(text)
    assert where(issues) == [("clusters[0].hosts[0].address", 4), ("clusters[1].hosts[0].address", 4)]


def test_error_inside_a_merged_mapping() -> None:
    text = """\
    clusters:
      - &base
        name: a
        lb: rnd
        hosts: [{address: "10.0.0.1:80"}]
      - <<: *base
        name: b
        colour: red
    """
    issues = issues_of(text)
    assert where(issues) == [("clusters[0].lb", 4), ("clusters[1].lb", 4), ("clusters[1].colour", 8)]


def test_duplicate_key_in_an_anchor_is_reported_once() -> None:
    text = "a: &x {lb: random, lb: random}\nclusters: [{<<: *x, name: a, hosts: [{address: '1.2.3.4:5'}]}]\n"
    issues = issues_of(text)
    assert [i.message for i in issues].count("duplicate key 'lb' (first on line 1)") == 1


def test_bad_merge_value() -> None:
    issues = issues_of("runtime:\n  <<: 5\n  workers: 2\n")
    assert [(i.path, i.line, i.message) for i in issues] == [("runtime", 2, "a merge key '<<' takes a mapping or a list of mappings")]


def test_recursive_alias_is_an_error_not_a_hang() -> None:
    issues = issues_of("clusters: &c\n  - name: a\n    hosts: *c\n")
    assert any("recursive alias" in i.message for i in issues), issues


def test_alias_bomb_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader_module, "MAX_YAML_NODES", 1000)
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 6)]
    issues = issues_of("\n".join(levels) + "\n")
    assert any("document too large" in i.message for i in issues), issues


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("runtime: !!set {a, b}\n", "unsupported YAML tag"),
        ("runtime:\n  workers: !custom 5\n", "could not determine a constructor"),
        ("? [a, b]\n: 1\n", "mapping keys must be plain values"),
    ],
)
def test_odd_yaml_nodes(text: str, words: str) -> None:
    issues = issues_of(text)
    assert any(words in i.message for i in issues), issues


def test_yaml_timestamps_are_not_strings() -> None:
    issue = one_issue("admin:\n  socket: 2024-01-01\n")
    assert (issue.path, issue.line, issue.message) == ("admin.socket", 2, "expected a string, got a date (2024-01-01)")


def test_pure_python_yaml_loader_gives_the_same_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    text = dedent("""\
    runtime:
      workers: 0
    clusters:
      - name: a
        hosts:
          - address: nohost
            weight: x
    """)
    with_c = where(issues_of(text))
    monkeypatch.setattr(loader_module, "_YamlLoader", yaml.SafeLoader)
    assert where(issues_of(text)) == with_c == [
        ("runtime.workers", 2),
        ("clusters[0].hosts[0].address", 6),
        ("clusters[0].hosts[0].weight", 7),
    ]


def test_missing_file(tmp_path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load(missing)
    [issue] = info.value.issues
    assert (issue.path, issue.line, issue.filename) == ("<root>", None, str(missing))
    assert "No such file or directory" in issue.message
    assert str(info.value) == f"{missing}: <root>: cannot read config file: No such file or directory"

    with pytest.raises(ConfigError) as info:
        load(tmp_path)
    assert "Is a directory" in info.value.issues[0].message


def test_file_that_is_not_utf8(tmp_path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"runtime:\n  workers: 2\nadmin: {socket: /tmp/\xe9}\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    [issue] = info.value.issues
    assert (issue.path, issue.line) == ("<root>", 3)
    assert "not valid UTF-8" in issue.message


def test_filename_is_in_every_issue() -> None:
    with pytest.raises(ConfigError) as info:
        load_text("runtime: {workers: 0, drain_timeout: 1}\n", filename="conf/p.yaml")
    assert str(info.value).splitlines() == [  # one line: sorted by path
        "conf/p.yaml:1: runtime.drain_timeout: duration 1 needs a unit, e.g. '1s' or '1ms'",
        "conf/p.yaml:1: runtime.workers: expected an integer >= 1 or 'auto', got 0",
    ]
