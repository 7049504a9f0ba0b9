"""`proxy ctl` without a proxy: its command line (options before or after the command) and the
human tables it prints from admin API answers."""

from __future__ import annotations

import calendar
import time

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


# ---------------------------------------------------------------- human output

NOW = calendar.timegm(time.strptime("2026-12-02T12:40:00Z", "%Y-%m-%dT%H:%M:%SZ"))


def _status(**over):
    status = {
        "pid": 4812,
        "state": "serving",
        "uptime_seconds": 3725.318,
        "generation": 3,
        "version": "0.1.0",
        "listeners": 2,
        "workers": [{"index": 0, "pid": 5075, "generation": 3, "state": "serving"}, {"index": 1, "pid": 5076, "generation": 3, "state": "serving"}],
        "retiring": [],
        "busy": None,
        "last_reload": None,
    }
    return {**status, **over}


def test_status_table_has_no_none_and_readable_uptime():
    assert client.render_status(_status(), now=NOW).splitlines() == [
        "pid:         4812",
        "state:       serving",
        "uptime:      1h02m",
        "generation:  3",
        "version:     0.1.0",
        "listeners:   2",
        "workers:     #0 pid 5075, generation 3, serving",
        "             #1 pid 5076, generation 3, serving",
        "retiring:    none",
        "busy:        no",
        "last reload: never",
    ]


def test_status_while_an_upgrade_runs_with_a_retiring_worker():
    text = client.render_status(
        _status(busy="upgrade", retiring=[{"index": 0, "pid": 4999, "generation": 2, "state": "draining"}]), now=NOW
    )
    assert "retiring:    #0 pid 4999, generation 2, draining" in text.splitlines()
    assert "busy:        yes, an upgrade is running" in text.splitlines()


def test_status_shows_a_failed_reloads_error_lines():
    last = {
        "kind": "reload",
        "generation": 3,
        "result": "failed",
        "stage": "config",
        "error": "/etc/proxy/p.yaml has 2 errors",
        "errors": [
            "/etc/proxy/p.yaml:4: listeners[0].cluster: unknown cluster 'nope'; defined clusters: echo, api",
            "/etc/proxy/p.yaml:18: clusters[1].hosts[1].address: invalid address '127.0.0.1:99999': port 99999 is out of range 0-65535",
        ],
        "seconds": 0.002,
        "at": "2026-12-02T12:39:55Z",
    }
    lines = client.render_status(_status(last_reload=last), now=NOW).splitlines()
    assert lines[-3:] == [
        "last reload: reload FAILED 5s ago (2026-12-02T12:39:55Z) at config: /etc/proxy/p.yaml has 2 errors; generation 3 serves on",
        "             /etc/proxy/p.yaml:4: listeners[0].cluster: unknown cluster 'nope'; defined clusters: echo, api",
        "             /etc/proxy/p.yaml:18: clusters[1].hosts[1].address: invalid address '127.0.0.1:99999': port 99999 is out of range 0-65535",
    ]


OK_RELOAD = {
    "kind": "reload",
    "generation": 4,
    "result": "ok",
    "ready_seconds": 0.625,
    "commit_seconds": 1.639,
    "handover_seconds": 0.014,
    "migrated": {"tcp": 20, "http1": 50},
    "forced": 0,
    "workers": [31102],
    "seconds": 1.805,
    "at": "2026-12-02T12:36:55Z",
}


def test_status_shows_a_good_reload_with_units():
    lines = client.render_status(_status(last_reload=OK_RELOAD), now=NOW).splitlines()
    assert lines[-3:] == [
        "last reload: reload ok 3m05s ago (2026-12-02T12:36:55Z), generation 4 serving (1 worker: pid 31102)",
        "             ready after 625ms, done after 1.80s",
        "             live connections migrated: 50 http1, 20 tcp; closed at the drain deadline: 0",
    ]


def test_reload_output_plurals_and_units():
    assert client.render_reload("reload", OK_RELOAD).splitlines() == [
        "reload: ok, generation 4 serving (1 worker: pid 31102)",
        "  ready after 625ms, done after 1.80s",
        "  live connections migrated: 50 http1, 20 tcp; closed at the drain deadline: 0",
    ]
    two = {**OK_RELOAD, "workers": [1, 2], "migrated": {}, "ready_seconds": 12.34, "seconds": 75.0}
    assert client.render_reload("upgrade", two).splitlines() == [
        "upgrade: ok, generation 4 serving (2 workers: pids 1, 2)",
        "  ready after 12.3s, done after 1m15s",
        "  live connections migrated: none; closed at the drain deadline: 0",
    ]
    assert client.render_reload("reload", {"result": "busy", "running": "upgrade"}) == "reload: refused, busy (an upgrade is running)"
    assert client.render_reload("reload", {"result": "busy", "running": None}) == (
        "reload: refused, the proxy is not serving (it is draining or stopping)"
    )


def test_stats_table_rounds_floats():
    lines = client.render("stats", {"listener.web.downstream_rq_time_sum_ms": 290.38800000000003, "listener.web.downstream_rq_time_count": 7, "x.sum_ms": 0.0}).splitlines()
    assert lines == [
        "NAME                                    VALUE",
        "listener.web.downstream_rq_time_count   7",
        "listener.web.downstream_rq_time_sum_ms  290.388",
        "x.sum_ms                                0",
    ]


def test_stats_table_leaves_out_http_request_counters_of_tcp_listeners_and_their_clusters():
    config = {
        "listeners": [
            {"name": "db", "protocol": "tcp", "cluster": "pg"},
            {"name": "web", "protocol": "http1", "route": "main"},
            {"name": "shared", "protocol": "tcp", "cluster": "api"},
            {"name": "sni", "protocol": "tcp", "filter_chains": [{"match": {"server_names": ["a"]}, "cluster": "tls-a"}]},
        ],
        "routes": {"main": {"virtual_hosts": [{"routes": [{"match": {"prefix": "/"}, "cluster": "api"}]}]}},
        "clusters": [{"name": "pg"}, {"name": "api"}, {"name": "tls-a"}],
    }
    stats = {
        "listener.db.downstream_cx_total": 1,
        "listener.db.downstream_rq_total": 0,
        "listener.db.downstream_rq_time_sum_ms": 0.0,
        "listener.web.downstream_rq_total": 3,
        "listener.shared.downstream_rq_2xx": 0,
        "cluster.pg.upstream_cx_total": 1,
        "cluster.pg.upstream_rq_total": 0,
        "cluster.api.upstream_rq_total": 3,  # also behind the HTTP route: kept
        "cluster.tls-a.upstream_rq_total": 0,  # a tcp filter chain's cluster
    }
    assert client.without_l4_request_counters(stats, config) == {
        "listener.db.downstream_cx_total": 1,
        "listener.web.downstream_rq_total": 3,
        "cluster.pg.upstream_cx_total": 1,
        "cluster.api.upstream_rq_total": 3,
    }
    assert client.without_l4_request_counters(stats, None) == stats  # no config: everything


def test_listeners_table_shows_requests_only_for_http():
    listeners = [
        {"name": "db", "address": "127.0.0.1:5433", "protocol": "tcp", "stats": {"downstream_cx_active": 1, "downstream_cx_total": 9, "downstream_rq_total": 0, "downstream_rx_bytes_total": 5, "downstream_tx_bytes_total": 3 << 20}},
        {"name": "web", "address": "127.0.0.1:8080", "protocol": "http1", "stats": {"downstream_cx_active": 0, "downstream_cx_total": 3, "downstream_rq_total": 12, "downstream_rx_bytes_total": 2300, "downstream_tx_bytes_total": 342}},
    ]
    assert client.render("listeners", listeners).splitlines() == [
        "NAME  ADDRESS         PROTOCOL  ACTIVE  TOTAL  REQUESTS  RECEIVED  SENT",
        "db    127.0.0.1:5433  tcp       1       9      -         5 B       3.0 MiB",
        "web   127.0.0.1:8080  http1     0       3      12        2.2 KiB   342 B",
    ]


def test_host_and_tasks_lines():
    assert client.render("host", {"cluster": "api", "host": "h:1", "enabled": False}) == "cluster api, host h:1: disabled"
    tree = {"name": "root", "children": [], "omitted": 1}
    assert client.render("tasks", tree).splitlines() == ["root", "  ... 1 more task"]
