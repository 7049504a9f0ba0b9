"""`proxy ctl` without a proxy: its command line (options before or after the command)."""

from __future__ import annotations

import pytest

from proxy import cli
from proxy.admin import client

# every ctl command with its own arguments (as a person types them)
COMMANDS = [
    ["status"],
    ["stats"],
    ["stats", "cx_total"],
    ["listeners"],
    ["clusters"],
    ["config"],
    ["log-level", "debug"],
    ["drain"],
    ["reload"],
    ["reload", "--timeout", "5"],
    ["upgrade"],
    ["upgrade", "--timeout", "7"],
    ["host", "enable", "api", "10.0.0.7:8000"],
    ["host", "disable", "api", "10.0.0.7:8000"],
    ["tasks"],
    ["metrics"],
    ["profile"],
    ["profile", "2.5"],
]
GLOBAL = ["--socket", "/s.sock", "--json", "-c", "/p.yaml"]


def parse(argv: list[str]) -> dict:
    return vars(cli._parser().parse_args(argv))


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c))
def test_ctl_options_go_before_or_after_the_command(cmd):
    before = parse(["ctl", *GLOBAL, *cmd])
    assert (before["socket"], before["json"], before["config"]) == ("/s.sock", True, "/p.yaml")
    assert before["ctl_command"] == cmd[0]
    forms = [
        ["ctl", *cmd, *GLOBAL],  # all after
        ["ctl", cmd[0], *GLOBAL, *cmd[1:]],  # between the command and its arguments
        ["ctl", "--json", *cmd, "--socket", "/s.sock", "-c", "/p.yaml"],  # split
        ["ctl", "--socket=/s.sock", *cmd, "--config=/p.yaml", "--json"],  # = forms
    ]
    for argv in forms:
        assert parse(argv) == before, argv


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c))
def test_ctl_without_options_has_the_defaults(cmd):
    args = parse(["ctl", *cmd])
    assert (args["socket"], args["json"], args["config"]) == (None, False, None)


def test_ctl_options_interleave_with_a_commands_arguments():
    base = parse(["ctl", "--json", "--socket", "/s", "host", "disable", "api", "h:1"])
    assert base["action"] == "disable" and base["cluster"] == "api" and base["address"] == "h:1"
    assert parse(["ctl", "host", "disable", "--json", "api", "--socket", "/s", "h:1"]) == base
    assert parse(["ctl", "stats", "--json", "rq_", "--socket", "/s"]) == parse(["ctl", "--json", "--socket", "/s", "stats", "rq_"])
    assert parse(["ctl", "profile", "--json", "3", "--socket", "/s"])["seconds"] == 3.0
    assert parse(["ctl", "log-level", "warning", "--json"])["level"] == "warning"
    assert parse(["ctl", "reload", "--json", "--timeout", "9", "--socket", "/s"])["timeout"] == 9.0


def test_the_last_socket_given_wins():
    assert parse(["ctl", "--socket", "/a", "status", "--socket", "/b"])["socket"] == "/b"
    assert parse(["ctl", "--socket", "/a", "status"])["socket"] == "/a"


def test_ctl_usage_errors_still_exit_2(capsys):
    for argv in (["ctl", "status", "--bogus"], ["ctl", "log-level", "loud", "--json"], ["ctl", "host", "enable", "--json"], ["ctl", "--json"]):
        with pytest.raises(SystemExit) as exc:
            cli._parser().parse_args(argv)
        assert exc.value.code == 2, argv
    assert "invalid choice: 'loud'" in capsys.readouterr().err


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        cli._parser().parse_args(argv)
    assert exc.value.code == 0
    return capsys.readouterr().out


def test_ctl_help_says_where_options_go(capsys):
    text = _help(["ctl", "--help"], capsys)
    assert text.startswith("usage: proxy ctl [-h] [-c FILE] [--socket PATH] [--json] COMMAND ...\n")
    assert "-c, --socket and --json may come before or after COMMAND:\n  proxy ctl status --json  is  proxy ctl --json status\n" in text
    for cmd in {c[0] for c in COMMANDS}:
        assert f"\n    {cmd} " in text, cmd


@pytest.mark.parametrize("cmd", sorted({c[0] for c in COMMANDS}))
def test_each_commands_help_lists_the_ctl_options(cmd, capsys):
    text = _help(["ctl", cmd, "--help"], capsys)
    assert text.startswith(f"usage: proxy ctl {cmd} [-h] [-c FILE] [--socket PATH] [--json]"), text
    assert "--json                print JSON instead of tables" in text
    assert "-c FILE, --config FILE" in text and "--socket PATH" in text


def test_host_help_names_its_arguments(capsys):
    text = _help(["ctl", "host", "-h"], capsys)
    assert "enable|disable CLUSTER ADDRESS" in text
