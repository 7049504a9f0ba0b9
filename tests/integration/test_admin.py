"""The admin socket and `proxy ctl` against a real `proxy run` process: every ctl command,
socket permissions, the peer uid check, and stale / live socket files at start-up."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import stat
import subprocess
import sys
import tempfile

import pytest
import trio

from tests.integration.harness import connect, echo_handler, echo_round_trip, running_proxy, start_server, tcp_config

@pytest.fixture
def public_dir():
    """A socket directory `nobody` can traverse (pytest's tmp dirs are 0700 under
    /tmp/pytest-of-root), so the socket file's own mode and the peer uid check are what refuse."""
    path = tempfile.mkdtemp(prefix="proxy-admin-")
    os.chmod(path, 0o755)
    try:
        yield pathlib.Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _config(upstreams: list[str], admin_sock: str, **admin: object) -> dict:
    config = tcp_config(upstreams)
    config["admin"] = {"socket": admin_sock, **admin}
    return config


async def ctl(sock: str, *args: str, prefix: list[str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [*(prefix or []), sys.executable, "-m", "proxy", "ctl", "--socket", sock, *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    result = await trio.to_thread.run_sync(lambda: subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env))
    if check:
        assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


async def ctl_json(sock: str, *args: str) -> object:
    return json.loads((await ctl(sock, "--json", *args)).stdout)


async def _wait_for(predicate, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not await predicate():
            await trio.sleep(0.05)


async def test_every_ctl_command(nursery, tmp_path):
    a = await start_server(nursery, echo_handler)
    b = await start_server(nursery, echo_handler)
    sock = str(tmp_path / "admin.sock")
    async with running_proxy(_config([a, b], sock), tmp_path) as proxy:
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        assert stat.S_ISSOCK(os.stat(sock).st_mode)

        # status
        status = await ctl_json(sock, "status")
        assert status["pid"] == proxy.pid and status["state"] == "serving" and status["listeners"] == 1
        assert status["generation"] == 1 and status["version"] and status["uptime_seconds"] >= 0
        human = (await ctl(sock, "status")).stdout.splitlines()
        assert f"pid:         {proxy.pid}" in human and "state:       serving" in human

        for _ in range(3):
            assert await echo_round_trip(proxy.address("tcp")) == b"hello"

        # stats, with and without a pattern
        async def three_done() -> bool:
            stats = await ctl_json(sock, "stats")
            return stats["listener.tcp.downstream_cx_destroy"] == 3

        await _wait_for(three_done)
        stats = await ctl_json(sock, "stats")
        assert stats["listener.tcp.downstream_cx_total"] == 3
        assert stats["listener.tcp.downstream_cx_active"] == 0
        assert stats["cluster.up.upstream_cx_total"] == 3
        assert stats[f"cluster.up.host.{a}.cx_total"] + stats[f"cluster.up.host.{b}.cx_total"] == 3
        filtered = await ctl_json(sock, "stats", "downstream_cx_total")
        assert filtered == {"listener.tcp.downstream_cx_total": 3}
        lines = (await ctl(sock, "stats", "cx_total")).stdout.splitlines()
        assert lines[0].split() == ["NAME", "VALUE"]
        assert ["listener.tcp.downstream_cx_total", "3"] in [line.split() for line in lines]
        assert [line.split()[0] for line in lines[1:]] == sorted(line.split()[0] for line in lines[1:])

        # listeners
        listeners = await ctl_json(sock, "listeners")
        assert listeners[0]["name"] == "tcp" and listeners[0]["protocol"] == "tcp"
        assert listeners[0]["address"] == proxy.addresses["tcp"] and listeners[0]["stats"]["downstream_cx_total"] == 3
        lines = (await ctl(sock, "listeners")).stdout.splitlines()
        assert lines[0].split() == ["NAME", "ADDRESS", "PROTOCOL", "ACTIVE", "TOTAL", "REQUESTS", "RECEIVED", "SENT"]
        assert lines[1].split() == ["tcp", proxy.addresses["tcp"], "tcp", "0", "3", "-", "15", "B", "15", "B"]

        # clusters
        clusters = await ctl_json(sock, "clusters")
        assert clusters[0]["name"] == "up" and clusters[0]["lb"] == "round_robin"
        assert [h["address"] for h in clusters[0]["hosts"]] == [a, b]
        assert all(h["enabled"] and h["healthy"] for h in clusters[0]["hosts"])
        lines = (await ctl(sock, "clusters")).stdout.splitlines()
        assert lines[0].split()[:6] == ["CLUSTER", "HOST", "WEIGHT", "ENABLED", "HEALTHY", "ACTIVE"]
        assert lines[1].split()[:5] == ["up", a, "1", "yes", "yes"]

        # host disable: every new connection goes to the other host
        before = await ctl_json(sock, "stats", "host.")
        out = (await ctl(sock, "host", "disable", "up", a)).stdout
        assert "disabled" in out
        for _ in range(4):
            assert await echo_round_trip(proxy.address("tcp")) == b"hello"
        after = await ctl_json(sock, "stats", "host.")
        assert after[f"cluster.up.host.{a}.cx_total"] == before[f"cluster.up.host.{a}.cx_total"]
        assert after[f"cluster.up.host.{b}.cx_total"] == before[f"cluster.up.host.{b}.cx_total"] + 4
        assert "no" in (await ctl(sock, "clusters")).stdout.splitlines()[1].split()
        await ctl(sock, "host", "enable", "up", a)
        assert all(h["enabled"] for h in (await ctl_json(sock, "clusters"))[0]["hosts"])
        bad = await ctl(sock, "host", "disable", "up", "127.0.0.1:1", check=False)
        assert bad.returncode == 1 and "no host" in bad.stderr and "404" in bad.stderr
        bad = await ctl(sock, "host", "disable", "nope", a, check=False)
        assert bad.returncode == 1 and "unknown cluster" in bad.stderr

        # config
        config = await ctl_json(sock, "config")
        assert config["admin"]["socket"] == sock
        assert config["listeners"][0]["address"] == "127.0.0.1:0"
        assert config["runtime"]["drain_timeout"] == "5s"
        assert config["clusters"][0]["connect_timeout"] == "0.5s"
        assert json.loads((await ctl(sock, "config")).stdout) == config

        # tasks
        tasks = await ctl_json(sock, "tasks")
        text = json.dumps(tasks)
        assert "Worker.run" in text and "serve_control" in text and "accept_loop" in text
        assert "serve_control" in (await ctl(sock, "tasks")).stdout

        # log-level: debug lines appear
        assert "debug" in (await ctl(sock, "log-level", "debug")).stdout
        assert await echo_round_trip(proxy.address("tcp")) == b"hello"
        await _wait_for(_async(lambda: "level=debug" in proxy.log()))
        await ctl(sock, "log-level", "info")

        # drain: stops accepting
        assert "draining" in (await ctl(sock, "drain")).stdout
        assert await proxy.wait(10) == 0
        try:
            assert await echo_round_trip(proxy.address("tcp")) == b"hello"
        except OSError:
            pass
        else:
            raise AssertionError("the drained proxy still accepts")
        assert not os.path.exists(sock)
        gone = await ctl(sock, "status", check=False)
        assert gone.returncode == 1 and gone.stderr.strip() == f"proxy: not running (no admin socket at {sock})"


def _async(predicate):
    async def run() -> bool:
        return predicate()

    return run


async def test_drain_answers_before_connections_finish(nursery, tmp_path):
    upstream = await start_server(nursery, echo_handler)
    sock = str(tmp_path / "admin.sock")
    async with running_proxy(_config([upstream], sock), tmp_path) as proxy:
        stream = await connect(proxy.address("tcp"))
        async with stream:
            await stream.send_all(b"x")
            assert await stream.receive_some() == b"x"
            assert (await ctl_json(sock, "drain")) == {"draining": True}
            # the listening socket is closed: a new connect is refused
            with trio.fail_after(5):
                while True:
                    try:
                        s = socket.create_connection(proxy.address("tcp"), timeout=1)
                    except OSError:
                        break
                    s.close()
                    await trio.sleep(0.05)
            assert (await ctl_json(sock, "status"))["state"] == "draining"
            await stream.send_all(b"still here")
            assert await stream.receive_some() == b"still here"
            await stream.send_eof()
        assert await proxy.wait(10) == 0


async def test_ctl_uses_the_config_socket_and_reports_errors(nursery, tmp_path):
    upstream = await start_server(nursery, echo_handler)
    sock = str(tmp_path / "admin.sock")
    async with running_proxy(_config([upstream], sock), tmp_path) as proxy:
        cmd = [sys.executable, "-m", "proxy", "ctl", "-c", str(proxy.config_path), "--json", "status"]
        result = await trio.to_thread.run_sync(lambda: subprocess.run(cmd, capture_output=True, text=True, timeout=30))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["pid"] == proxy.pid
    missing = await ctl(str(tmp_path / "nope.sock"), "status", check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"proxy: not running (no admin socket at {tmp_path / 'nope.sock'})"


async def test_other_uid_cannot_reach_a_0600_socket(nursery, tmp_path, public_dir):
    upstream = await start_server(nursery, echo_handler)
    sock = str(public_dir / "admin.sock")
    async with running_proxy(_config([upstream], sock), tmp_path) as proxy:
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        result = await ctl(sock, "status", prefix=NOBODY, check=False)
        assert result.returncode == 1
        assert "permission denied" in result.stderr
        assert (await ctl_json(sock, "status"))["state"] == "serving"
        assert "admin.refused" not in proxy.log()  # refused by the kernel, before SO_PEERCRED


async def test_other_uid_is_refused_by_the_peer_uid_check(nursery, tmp_path, public_dir):
    upstream = await start_server(nursery, echo_handler)
    sock = str(public_dir / "admin.sock")
    async with running_proxy(_config([upstream], sock), tmp_path) as proxy:
        os.chmod(sock, 0o666)
        result = await ctl(sock, "status", prefix=NOBODY, check=False)
        assert result.returncode == 1
        assert "uid 65534 is not allowed" in result.stderr and "403" in result.stderr
        await _wait_for(_async(lambda: "event=admin.refused uid=65534" in proxy.log()))
        # the worker is unharmed
        assert (await ctl_json(sock, "status"))["state"] == "serving"
        assert await echo_round_trip(proxy.address("tcp")) == b"hello"


async def test_allowed_uids_lets_another_uid_in(nursery, tmp_path, public_dir):
    upstream = await start_server(nursery, echo_handler)
    sock = str(public_dir / "admin.sock")
    async with running_proxy(_config([upstream], sock, allowed_uids=[65534]), tmp_path) as proxy:
        os.chmod(sock, 0o666)
        result = await ctl(sock, "--json", "status", prefix=NOBODY, check=False)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["pid"] == proxy.pid
        assert "admin.refused" not in proxy.log()


async def test_stale_socket_file_is_replaced(nursery, tmp_path):
    upstream = await start_server(nursery, echo_handler)
    sock = str(tmp_path / "admin.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(sock)
    dead.listen(1)
    dead.close()  # no unlink: the file stays, nobody listens
    assert stat.S_ISSOCK(os.stat(sock).st_mode)
    async with running_proxy(_config([upstream], sock), tmp_path) as proxy:
        assert (await ctl_json(sock, "status"))["pid"] == proxy.pid
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        assert "stale_socket_removed" in proxy.log()


async def test_live_socket_makes_start_fail(nursery, tmp_path):
    upstream = await start_server(nursery, echo_handler)
    sock = str(tmp_path / "admin.sock")
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(sock)
    live.listen(8)
    try:
        config_path = tmp_path / "proxy.yaml"
        import yaml

        config_path.write_text(yaml.safe_dump(_config([upstream], sock)))
        cmd = [sys.executable, "-m", "proxy", "run", "-c", str(config_path)]
        result = await trio.to_thread.run_sync(lambda: subprocess.run(cmd, capture_output=True, text=True, timeout=30))
        assert result.returncode == 1, result.stderr
        assert f"proxy: refusing to start: cannot listen on unix:{sock}: {sock} is in use by a running process" in result.stderr
        assert "Traceback" not in result.stderr
        assert os.path.exists(sock)  # the live listener's file is left alone
    finally:
        live.close()


# ---------------------------------------------------------------- ctl options and human output


async def ctl_raw(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`proxy ctl ARGS` exactly as given: the test places every option itself."""
    cmd = [sys.executable, "-m", "proxy", "ctl", *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    result = await trio.to_thread.run_sync(lambda: subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env))
    if check:
        assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


async def test_ctl_options_after_the_command(nursery, tmp_path):
    """Every ctl command against a real proxy with --socket / -c / --json after the command, and
    between the command and its own arguments; the JSON is the same as with them in front."""
    a = await start_server(nursery, echo_handler)
    b = await start_server(nursery, echo_handler)
    sock = str(tmp_path / "admin.sock")
    async with running_proxy(_config([a, b], sock), tmp_path) as proxy:
        conf = str(proxy.config_path)
        status = json.loads((await ctl_raw("status", "--json", "--socket", sock)).stdout)
        assert status["pid"] == proxy.pid
        assert json.loads((await ctl_raw("status", "-c", conf, "--json")).stdout)["pid"] == proxy.pid
        assert json.loads((await ctl_raw("status", "--config", conf, "--json")).stdout)["pid"] == proxy.pid
        human = (await ctl_raw("status", "--socket", sock)).stdout.splitlines()
        assert f"pid:         {proxy.pid}" in human
        assert await echo_round_trip(proxy.address("tcp")) == b"hello"

        async def one_done() -> bool:
            return json.loads((await ctl_raw("stats", "--json", "--socket", sock)).stdout)["listener.tcp.downstream_cx_destroy"] == 1

        await _wait_for(one_done)
        stats_after = json.loads((await ctl_raw("stats", "cx_total", "--socket", sock, "--json")).stdout)
        stats_between = json.loads((await ctl_raw("stats", "--json", "cx_total", "-c", conf)).stdout)
        stats_before = json.loads((await ctl_raw("--json", "--socket", sock, "stats", "cx_total")).stdout)
        assert stats_after == stats_between == stats_before and stats_after["listener.tcp.downstream_cx_total"] == 1
        assert (await ctl_raw("stats", "cx_total", "--socket", sock)).stdout.splitlines()[0].split() == ["NAME", "VALUE"]
        for cmd in ("listeners", "clusters", "config", "tasks"):
            after = json.loads((await ctl_raw(cmd, "--socket", sock, "--json")).stdout)
            before = json.loads((await ctl_raw("--json", "-c", conf, cmd)).stdout)
            if cmd == "tasks":  # the tree's shape moves with the moment; its top does not
                assert after["name"] == before["name"], (after, before)
            else:
                assert after == before, cmd
        assert 'proxy_listener_downstream_cx_total{listener="tcp"}' in (await ctl_raw("metrics", "--socket", sock)).stdout
        profile = (await ctl_raw("profile", "0.2", "--socket", sock)).stdout
        assert profile.strip() and all(line.rsplit(" ", 1)[1].isdigit() for line in profile.splitlines()), profile
        assert json.loads((await ctl_raw("log-level", "--json", "debug", "--socket", sock)).stdout) == {"level": "debug"}
        assert (await ctl_raw("log-level", "info", "-c", conf)).stdout == "log level: info\n"
        assert json.loads((await ctl_raw("host", "disable", "--json", "up", "--socket", sock, a)).stdout) == {"cluster": "up", "host": a, "enabled": False}
        hosts = json.loads((await ctl_raw("clusters", "--json", "--socket", sock)).stdout)[0]["hosts"]
        assert [h["enabled"] for h in hosts] == [False, True]
        assert (await ctl_raw("host", "enable", "up", a, "--socket", sock)).stdout == f"cluster up, host {a}: enabled\n"
        reload = json.loads((await ctl_raw("reload", "--json", "--socket", sock, "--timeout", "60")).stdout)
        assert reload["result"] == "ok" and reload["generation"] == 2, reload
        upgrade = await ctl_raw("upgrade", "-c", conf, "--timeout", "60")
        assert upgrade.stdout.startswith("upgrade: ok, generation 3 serving (1 worker: pid "), upgrade.stdout
        assert json.loads((await ctl_raw("status", "--socket", sock, "--json")).stdout)["pid"] == proxy.pid  # re-executed in place
        assert json.loads((await ctl_raw("drain", "--socket", sock, "--json")).stdout) == {"draining": True}
        assert await proxy.wait(10) == 0
    bad = await ctl_raw("status", "--socket", sock, check=False)
    assert bad.returncode == 1 and bad.stderr == f"proxy: not running (no admin socket at {sock})\n"
    usage = await ctl_raw("status", "--socket", check=False)
    assert usage.returncode == 2 and "argument --socket: expected one argument" in usage.stderr


async def test_ctl_tables_read_as_an_operator_reads_them(nursery, tmp_path):
    """tcp + http listeners, 2 clusters, one host disabled, 2 workers (stats summed): the human
    output of every command, as printed."""
    import re

    from tests.integration.harness import read_all
    from tests.integration.http_upstream import HttpUpstream

    echo = await start_server(nursery, echo_handler)
    api_a, api_b = HttpUpstream("a"), HttpUpstream("b")
    await api_a.start(nursery)
    await api_b.start(nursery)
    sock = str(tmp_path / "admin.sock")
    config = _config([echo], sock)
    config["runtime"]["workers"] = 2
    config["listeners"].append({"name": "http", "address": "127.0.0.1:0", "protocol": "http1", "route": "main"})
    config["routes"] = {"main": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "cluster": "api"}]}]}}
    config["clusters"].append({"name": "api", "hosts": [{"address": api_a.address}, {"address": api_b.address}]})
    async with running_proxy(config, tmp_path) as proxy:
        path = str(proxy.config_path)
        # status before any reload: no Python None anywhere, uptime with its unit
        lines = (await ctl(sock, "status")).stdout.splitlines()
        assert "None" not in "\n".join(lines)
        assert re.fullmatch(r"uptime: +\d+s", lines[2]), lines
        assert lines[-3:] == ["retiring:    none", "busy:        no", "last reload: never"], lines
        workers = [line for line in lines if re.fullmatch(r"( +|workers: +)#\d pid \d+, generation 1, serving", line)]
        assert len(workers) == 2, lines

        assert "disabled" in (await ctl(sock, "host", "disable", "api", api_b.address)).stdout
        for _ in range(5):
            assert await echo_round_trip(proxy.address("tcp")) == b"hello"
            stream = await connect(proxy.address("http"))
            async with stream:
                await stream.send_all(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert (await read_all(stream)).startswith(b"HTTP/1.1 200 ")

        async def all_counted() -> bool:
            stats = await ctl_json(sock, "stats", "downstream_rq_total")
            return stats.get("listener.http.downstream_rq_total") == 5

        await _wait_for(all_counted)
        # stats: the TCP listener and its cluster list no HTTP request counters; floats rounded
        lines = (await ctl(sock, "stats")).stdout.splitlines()
        names = [line.split()[0] for line in lines[1:]]
        assert "listener.tcp.downstream_cx_total" in names and "cluster.up.upstream_cx_total" in names
        assert not [n for n in names if n.startswith(("listener.tcp.downstream_rq_", "cluster.up.upstream_rq_"))], names
        assert "listener.http.downstream_rq_total" in names and "cluster.api.upstream_rq_time_sum_ms" in names
        assert all(re.fullmatch(r"\S+ +\d+(\.\d{1,3})?", line) for line in lines[1:]), lines
        assert ["listener.http.downstream_rq_total", "5"] in [line.split() for line in lines]
        raw = await ctl_json(sock, "stats")  # --json keeps every counter
        assert raw["listener.tcp.downstream_rq_total"] == 0 and "cluster.up.upstream_rq_total" in raw
        assert (await ctl(sock, "stats", "no-such-counter")).stdout == "no counter name contains 'no-such-counter'\n"

        # listeners: a TCP listener has no request count
        lines = (await ctl(sock, "listeners")).stdout.splitlines()
        assert lines[0].split() == ["NAME", "ADDRESS", "PROTOCOL", "ACTIVE", "TOTAL", "REQUESTS", "RECEIVED", "SENT"]
        assert lines[1].split() == ["tcp", proxy.addresses["tcp"], "tcp", "0", "5", "-", "25", "B", "25", "B"], lines
        http = lines[2].split()
        assert http[:6] == ["http", proxy.addresses["http"], "http1", "0", "5", "5"], lines
        assert re.fullmatch(r"\d+(\.\d)? (B|KiB)", " ".join(http[6:8])), lines

        # clusters: the disabled host says no
        lines = (await ctl(sock, "clusters")).stdout.splitlines()
        pooled = (await ctl_json(sock, "clusters"))[1]["hosts"][0]["stats"]  # keep-alive: 1 or 2 (a pool per worker)
        assert pooled["cx_total"] in (1, 2)
        assert [line.split() for line in lines] == [
            ["CLUSTER", "HOST", "WEIGHT", "ENABLED", "HEALTHY", "ACTIVE", "TOTAL"],
            ["up", echo, "1", "yes", "yes", "0", "5"],
            ["api", api_a.address, "1", "yes", "yes", str(pooled["cx_active"]), str(pooled["cx_total"])],
            ["api", api_b.address, "1", "no", "yes", "0", "0"],
        ]

        # a reload that fails on a bad config: the status table shows its error lines
        good = proxy.config_path.read_text()
        bad = good.replace("cluster: up", "cluster: nope").replace(api_a.address, "127.0.0.1:99999")
        assert bad != good
        proxy.config_path.write_text(bad)
        failed = await ctl(sock, "reload", check=False)
        assert failed.returncode == 1
        out = failed.stdout.splitlines()
        assert out[0] == f"reload: FAILED at config: {path} has 2 errors; generation 1 serves on", out
        assert [line.split(": ", 2)[1] for line in out[1:]] == ["listeners[0].cluster", "clusters[1].hosts[0].address"], out
        lines = (await ctl(sock, "status")).stdout.splitlines()
        at = lines.index(next(line for line in lines if line.startswith("last reload:")))
        assert re.fullmatch(
            rf"last reload: reload FAILED \d+s ago \(\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ\) at config: {re.escape(path)} has 2 errors; generation 1 serves on",
            lines[at],
        ), lines
        assert lines[at + 1].startswith(f"             {path}:") and "listeners[0].cluster: unknown cluster 'nope'" in lines[at + 1], lines
        assert lines[at + 2].startswith(f"             {path}:") and "port 99999 is out of range" in lines[at + 2], lines
        assert len(lines) == at + 3

        # a good reload: units and plurals
        proxy.config_path.write_text(good)
        out = (await ctl(sock, "reload")).stdout.splitlines()
        assert re.fullmatch(r"reload: ok, generation 2 serving \(2 workers: pids \d+, \d+\)", out[0]), out
        assert re.fullmatch(r"  ready after \d+(ms|\.\d\ds), done after \d+(ms|\.\d\ds)", out[1]), out
        assert out[2] == "  live connections migrated: none; closed at the drain deadline: 0", out
        lines = (await ctl(sock, "status")).stdout.splitlines()
        assert "None" not in "\n".join(lines)
        assert re.fullmatch(r"last reload: reload ok \d+s ago \(\S+Z\), generation 2 serving \(2 workers: pids \d+, \d+\)", lines[-3]), lines
        assert lines[-2] == "             " + out[1].strip() and lines[-1] == "             " + out[2].strip(), lines

        # the rest of the commands, as printed
        assert (await ctl(sock, "host", "enable", "api", api_b.address)).stdout == f"cluster api, host {api_b.address}: enabled\n"
        assert (await ctl(sock, "log-level", "debug")).stdout == "log level: debug\n"
        tasks = (await ctl(sock, "tasks")).stdout
        assert "None" not in tasks and tasks.startswith("2 workers\n") and re.search(r"(?m)^  worker #1 \(pid \d+\)\n    <init>$", tasks), tasks
        config_out = (await ctl(sock, "config")).stdout
        assert json.loads(config_out)["listeners"][1]["name"] == "http"
        assert (await ctl(sock, "drain")).stdout == "draining: the proxy stopped accepting; open connections finish up to drain_timeout\n"
        assert await proxy.wait(10) == 0
