"""`proxy run --daemon`, `proxy stop`, SIGUSR1 log reopen for the daemon's log file, and
sd_notify, as real subprocesses. Every daemon started here is killed by its pid in a finally."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import yaml

from proxy.cli import _alive
from tests.integration.harness import _STARTED, echo_handler, echo_round_trip, start_server, tcp_config

SERVING = re.compile(r"proxy: serving \(pid (\d+)\)")


class Launch:
    def __init__(self, returncode: int, stdout: str, stderr: str, launcher_pid: int) -> None:
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.launcher_pid = launcher_pid


def _launch(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 40) -> Launch:
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return Launch(proc.returncode, out, err, proc.pid)


async def launch(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Launch:
    """Run the `proxy` command in a thread, so the test's trio upstreams keep serving."""
    return await trio.to_thread.run_sync(lambda: _launch(list(args), cwd, env))


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def daemons() -> Iterator[list[Path]]:
    """Pid files of daemons this test may have started; each live pid is killed afterwards."""
    pid_files: list[Path] = []
    seen: set[int] = set()
    try:
        yield pid_files
    finally:
        for path in pid_files:
            pid = _read_pid(path)
            if pid is not None and pid not in seen and pid != os.getpid():
                seen.add(pid)
                _kill(pid)


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def listener_address(log_file: Path, name: str = "tcp") -> tuple[str, int]:
    host, _, port = dict(_STARTED.findall(log_file.read_text()))[name].rpartition(":")
    return host.strip("[]"), int(port)


async def wait_for(predicate, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


async def test_daemon_serves_when_it_returns_refuses_a_second_and_stops(nursery, tmp_path, daemons):
    upstream = await start_server(nursery, echo_handler)
    write_config(tmp_path / "proxy.yaml", tcp_config([upstream]))
    pid_file = tmp_path / "run" / "p.pid"  # parent directories are created
    log_file = tmp_path / "log" / "l.log"
    daemons.append(pid_file)
    # relative paths, resolved against the launch directory before the daemon's chdir("/")
    first = await launch("run", "--daemon", "-c", "proxy.yaml", "--pid-file", "run/p.pid", "--log-file", "log/l.log", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    # serving already: the listener accepts and relays right after the launcher returns
    assert await echo_round_trip(listener_address(log_file), b"hello daemon") == b"hello daemon"
    pid = _read_pid(pid_file)
    assert pid is not None and _alive(pid)
    assert pid != first.launcher_pid
    match = SERVING.search(first.stdout)
    assert match and int(match.group(1)) == pid, first.stdout
    assert os.readlink(f"/proc/{pid}/cwd") == "/"
    assert os.getsid(pid) != os.getsid(0)  # a session of its own, no controlling terminal

    second = await launch("run", "--daemon", "-c", "proxy.yaml", "--pid-file", "run/p.pid", "--log-file", "log/l.log", cwd=tmp_path)
    assert second.returncode == 1
    assert f"already running (pid {pid})" in second.stderr
    assert _read_pid(pid_file) == pid and _alive(pid)  # the running daemon is untouched
    assert await echo_round_trip(listener_address(log_file), b"still") == b"still"

    stop = await launch("stop", "--pid-file", str(pid_file), cwd=tmp_path)
    assert stop.returncode == 0, stop.stderr
    assert not _alive(pid)
    assert not pid_file.exists()
    assert "event=stopped" in log_file.read_text()

    again = await launch("stop", "--pid-file", str(pid_file), cwd=tmp_path)
    assert again.returncode == 1
    assert "not running" in again.stderr


async def test_daemon_reports_a_bind_failure(tmp_path, daemons):
    pid_file = tmp_path / "p.pid"
    log_file = tmp_path / "l.log"
    daemons.append(pid_file)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        write_config(tmp_path / "proxy.yaml", tcp_config(["127.0.0.1:1"], listen=f"127.0.0.1:{port}"))
        result = await launch(
            "run", "--daemon", "-c", "proxy.yaml", "--pid-file", str(pid_file), "--log-file", str(log_file), cwd=tmp_path
        )
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "serving" not in result.stdout
    assert not pid_file.exists()
    assert "start.failed" in log_file.read_text()


async def test_daemon_validates_the_config_in_the_foreground(tmp_path, daemons):
    pid_file = tmp_path / "p.pid"
    daemons.append(pid_file)
    config = tcp_config(["127.0.0.1:1"])
    config["clusters"][0]["conect_timeout"] = "1s"
    write_config(tmp_path / "proxy.yaml", config)
    result = await launch(
        "run", "--daemon", "-c", "proxy.yaml", "--pid-file", str(pid_file), "--log-file", str(tmp_path / "l.log"), cwd=tmp_path
    )
    assert result.returncode == 1
    assert "unknown key 'conect_timeout'" in result.stderr
    assert "refusing to start" in result.stderr
    assert not pid_file.exists()


async def test_stop_without_a_running_proxy(tmp_path):
    missing = await launch("stop", "--pid-file", str(tmp_path / "none.pid"), cwd=tmp_path)
    assert missing.returncode == 1
    assert "not running" in missing.stderr
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "stale.pid"
    stale.write_text(f"{dead.pid}\n")
    result = await launch("stop", "-c", "proxy.yaml", "--pid-file", str(stale), cwd=tmp_path)
    assert result.returncode == 1
    assert "not running" in result.stderr


async def test_sigusr1_reopens_the_daemon_log_file(nursery, tmp_path, daemons):
    upstream = await start_server(nursery, echo_handler)
    write_config(tmp_path / "proxy.yaml", tcp_config([upstream]))
    pid_file = tmp_path / "p.pid"
    log_file = tmp_path / "l.log"
    daemons.append(pid_file)
    result = await launch(
        "run", "--daemon", "-c", "proxy.yaml", "--pid-file", str(pid_file), "--log-file", str(log_file), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    pid = _read_pid(pid_file)
    assert pid is not None
    address = listener_address(log_file)
    rotated = tmp_path / "l.log.1"
    log_file.rename(rotated)
    os.kill(pid, signal.SIGUSR1)
    await wait_for(lambda: log_file.exists() and "action=reopen_logs" in log_file.read_text())
    assert await echo_round_trip(address, b"hello daemon") == b"hello daemon"
    os.kill(pid, signal.SIGTERM)
    await wait_for(lambda: not _alive(pid))
    new, old = log_file.read_text(), rotated.read_text()
    assert "event=ready" in old and "event=ready" not in new
    assert "event=stopped" in new and "event=stopped" not in old
    assert "event=draining" in new


async def _bind_notify(tmp_path: Path, kind: str) -> tuple[trio.socket.SocketType, str]:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if kind == "abstract":
        address = f"@proxy-test-{uuid.uuid4().hex}"
        await sock.bind("\0" + address[1:])
    else:
        address = str(tmp_path / "notify.sock")
        await sock.bind(address)
    return sock, address


@contextlib.contextmanager
def _foreground(tmp_path: Path, notify_address: str, log_file: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`proxy run` in the foreground with NOTIFY_SOCKET set; killed at the end if still running."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "run", "-c", "proxy.yaml", "--log-file", str(log_file)],
        cwd=tmp_path,
        env={**os.environ, "NOTIFY_SOCKET": notify_address},
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


async def _receive(sock: trio.socket.SocketType, timeout: float = 15.0) -> str:
    with trio.fail_after(timeout):
        return (await sock.recv(4096)).decode()


@pytest.mark.parametrize("kind", ["path", "abstract"])
async def test_sd_notify_ready_and_stopping_in_the_foreground(nursery, tmp_path, kind):
    upstream = await start_server(nursery, echo_handler)
    write_config(tmp_path / "proxy.yaml", tcp_config([upstream]))
    sock, address = await _bind_notify(tmp_path, kind)
    log_file = tmp_path / "l.log"
    with sock, _foreground(tmp_path, address, log_file) as proc:
        assert await _receive(sock) == "READY=1"
        assert "event=keeper.ready" in log_file.read_text()  # sent only once every worker serves
        assert await echo_round_trip(listener_address(log_file), b"hello daemon") == b"hello daemon"
        proc.send_signal(signal.SIGTERM)
        assert await _receive(sock) == "STOPPING=1"
        await wait_for(lambda: proc.poll() is not None)
        assert proc.returncode == 0


async def test_sd_notify_reload_protocol(nursery, tmp_path):
    """systemd Type=notify-reload: RELOADING=1 with MONOTONIC_USEC when a reload starts, READY=1
    when it is done; a refused config adds STATUS=Reload failed and the proxy serves on."""
    upstream = await start_server(nursery, echo_handler)
    config = tcp_config([upstream])
    config["runtime"] = {"upgrade_probation": "100ms"}
    write_config(tmp_path / "proxy.yaml", config)
    sock, address = await _bind_notify(tmp_path, "path")
    log_file = tmp_path / "l.log"
    with sock, _foreground(tmp_path, address, log_file) as proc:
        assert await _receive(sock) == "READY=1"
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        proc.send_signal(signal.SIGHUP)
        reloading = await _receive(sock)
        assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert int(reloading.rsplit("=", 1)[1]) >= before
        assert await _receive(sock) == "READY=1"
        (tmp_path / "proxy.yaml").write_text("listeners: [\n")
        proc.send_signal(signal.SIGHUP)
        assert (await _receive(sock)).startswith("RELOADING=1")
        failed = await _receive(sock)
        assert failed.startswith("READY=1\nSTATUS=Reload failed: ") and "proxy.yaml" in failed
        assert await echo_round_trip(listener_address(log_file), b"still serving") == b"still serving"
        proc.send_signal(signal.SIGTERM)
        assert await _receive(sock) == "STOPPING=1"
        await wait_for(lambda: proc.poll() is not None)
        assert proc.returncode == 0


async def test_sd_notify_in_daemon_mode_names_the_main_pid(nursery, tmp_path, daemons):
    upstream = await start_server(nursery, echo_handler)
    write_config(tmp_path / "proxy.yaml", tcp_config([upstream]))
    pid_file = tmp_path / "p.pid"
    daemons.append(pid_file)
    sock, address = await _bind_notify(tmp_path, "path")
    with sock:
        result = await launch(
            "run", "--daemon", "-c", "proxy.yaml", "--pid-file", str(pid_file), "--log-file", str(tmp_path / "l.log"),
            cwd=tmp_path,
            env={**os.environ, "NOTIFY_SOCKET": address},
        )
        assert result.returncode == 0, result.stderr
        pid = _read_pid(pid_file)
        assert await _receive(sock) == f"READY=1\nMAINPID={pid}"
        stop = await launch("stop", "--pid-file", str(pid_file), cwd=tmp_path)
        assert stop.returncode == 0, stop.stderr
        assert await _receive(sock) == "STOPPING=1"


async def test_every_ctl_command_against_a_running_daemon(nursery, tmp_path, daemons):
    """The admin issue's contract end to end: `proxy run --daemon`, then `proxy ctl` for every
    command, then `proxy stop`; the pid file and the admin socket are gone afterwards."""
    import json

    up_a = await start_server(nursery, echo_handler)
    up_b = await start_server(nursery, echo_handler)
    config = tcp_config([up_a, up_b])
    sock = tmp_path / "admin.sock"
    config["admin"] = {"socket": str(sock)}
    write_config(tmp_path / "proxy.yaml", config)
    pid_file, log_file = tmp_path / "p.pid", tmp_path / "l.log"
    daemons.append(pid_file)
    started = await launch("run", "--daemon", "-c", "proxy.yaml", "--pid-file", str(pid_file), "--log-file", str(log_file), cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    address = listener_address(log_file)

    async def ctl(*args: str, json_out: bool = True) -> Launch:
        result = await launch("ctl", "--socket", str(sock), *(["--json"] if json_out else []), *args, cwd=tmp_path)
        assert result.returncode == 0, (args, result.stderr)
        return result

    for _ in range(3):
        assert await echo_round_trip(address, b"hello daemon") == b"hello daemon"
    status = json.loads((await ctl("status")).stdout)
    assert status["pid"] == _read_pid(pid_file) and status["state"] == "serving"
    stats = json.loads((await ctl("stats", "downstream_cx_total")).stdout)
    assert stats["listener.tcp.downstream_cx_total"] == 3  # what the client actually sent
    listeners = json.loads((await ctl("listeners")).stdout)
    assert listeners[0]["name"] == "tcp" and listeners[0]["address"] == f"{address[0]}:{address[1]}"
    clusters = json.loads((await ctl("clusters")).stdout)
    assert {h["address"] for h in clusters[0]["hosts"]} == {up_a, up_b}
    assert json.loads((await ctl("config")).stdout)["listeners"][0]["name"] == "tcp"
    assert "tcp" in (await ctl("listeners", json_out=False)).stdout  # the human table too
    await ctl("host", "disable", "up", up_a)
    before = json.loads((await ctl("clusters")).stdout)[0]["hosts"]
    for _ in range(4):
        assert await echo_round_trip(address, b"hello daemon") == b"hello daemon"
    after = json.loads((await ctl("clusters")).stdout)[0]["hosts"]
    totals = {h["address"]: h["stats"]["cx_total"] for h in after}
    first = {h["address"]: h["stats"]["cx_total"] for h in before}
    assert totals[up_a] == first[up_a] and totals[up_b] == first[up_b] + 4
    await ctl("host", "enable", "up", up_a)
    await ctl("log-level", "debug")
    assert await echo_round_trip(address, b"hello daemon") == b"hello daemon"
    await wait_for(lambda: "level=debug" in log_file.read_text())
    assert "children" in (await ctl("tasks")).stdout
    assert 'proxy_listener_downstream_cx_total{listener="tcp"}' in (await ctl("metrics", json_out=False)).stdout
    profile = (await ctl("profile", "0.5", json_out=False)).stdout
    assert "trio/" in profile and profile.splitlines()[0].rsplit(" ", 1)[1].isdigit()
    await ctl("drain")
    pid = _read_pid(pid_file)
    await wait_for(lambda: pid is None or not _alive(pid), timeout=10)
    assert not pid_file.exists() and not sock.exists()
    gone = await launch("ctl", "--socket", str(sock), "status", cwd=tmp_path)
    assert gone.returncode != 0 and "not running" in gone.stderr


async def test_daemon_upgrade_keeps_its_pid_file_and_relative_paths(nursery, tmp_path, daemons):
    """`proxy ctl upgrade` re-executes a daemon (which runs in "/") with its original argv: the
    relative -c and --pid-file it was started with must still mean the launch directory."""
    upstream = await start_server(nursery, echo_handler)
    config = tcp_config([upstream])
    config["admin"] = {"socket": str(tmp_path / "admin.sock")}
    config["runtime"] = {"upgrade_probation": "100ms"}
    write_config(tmp_path / "proxy.yaml", config)
    daemons.append(tmp_path / "p.pid")
    started = await launch("run", "--daemon", "-c", "proxy.yaml", "--pid-file", "p.pid", "--log-file", "l.log", cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    pid = _read_pid(tmp_path / "p.pid")
    upgraded = await launch("ctl", "--socket", str(tmp_path / "admin.sock"), "upgrade", cwd=tmp_path)
    assert upgraded.returncode == 0, (upgraded.stdout, upgraded.stderr)
    assert _read_pid(tmp_path / "p.pid") == pid  # same keeper, same pid file, still locked
    again = await launch("run", "--daemon", "-c", "proxy.yaml", "--pid-file", "p.pid", "--log-file", "l2.log", cwd=tmp_path)
    assert again.returncode == 1 and "already running" in again.stderr
    assert await echo_round_trip(listener_address(tmp_path / "l.log"), b"after upgrade") == b"after upgrade"
    stop = await launch("stop", "--pid-file", "p.pid", cwd=tmp_path)
    assert stop.returncode == 0, stop.stderr
    assert not (tmp_path / "p.pid").exists()
