"""Command line: `proxy run`, `proxy check`, `proxy stop`, `proxy ctl` (admin socket client).

Exit codes: 0 success, 1 bad config or refused start, 2 usage error (argparse).
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import logging
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from proxy.humanize import plural

DEFAULT_CONFIG = "config/proxy.yaml"
DEFAULT_PID_FILE = "/run/proxy/proxy.pid"
DEFAULT_LOG_FILE = "/var/log/proxy/proxy.log"
DAEMON_READY_TIMEOUT = 30.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="proxy", description="A cloud-native network proxy on trio.")
    parser.add_argument("--version", action=_VersionAction, help="print the version, the Python and whether the compiled build runs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="start the proxy (foreground, or detached with --daemon)")
    run.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="override logging.level")
    run.add_argument(
        "--log-file", help=f"append logs to this file instead of stderr, reopened on SIGUSR1 (--daemon: default {DEFAULT_LOG_FILE})"
    )
    run.add_argument("--pid-file", help=f"write the pid here while running, locked (--daemon: default {DEFAULT_PID_FILE})")
    run.add_argument("--daemon", action="store_true", help="detach; return once serving (exit 0) or failed (non-zero)")

    check = sub.add_parser("check", help="validate a config file and print every error")
    check.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")

    stop = sub.add_parser("stop", help="gracefully stop a running proxy (SIGTERM, then wait)")
    stop.add_argument("-c", "--config", help="config file of the running proxy (accepted; the pid file is --pid-file)")
    stop.add_argument("--pid-file", default=DEFAULT_PID_FILE, help=f"pid file of the running proxy (default {DEFAULT_PID_FILE})")
    stop.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for it to exit")

    worker = sub.add_parser("worker", help=argparse.SUPPRESS)  # spawned by the keeper only
    worker.add_argument("--control-fd", type=int, required=True)

    from proxy.admin import client as admin_client  # `proxy ctl`

    admin_client.add_parser(sub)
    return parser


class _VersionAction(argparse.Action):
    """`--version`, computed only when asked (it says whether the compiled build or the sources run)."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:  # noqa: A002
        super().__init__(option_strings, dest, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option_string: str | None = None) -> None:
        import platform

        import proxy
        from proxy import native

        mode = "compiled" if native.NATIVE else ("python, the compiled build is stale" if native.STALE_BUILD else "python")
        print(f"proxy {proxy.__version__} (Python {platform.python_version()}, build: {mode})")
        parser.exit()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check":
        return _check(args.config)
    if args.command == "run":
        return _run(args)
    if args.command == "stop":
        return _stop(args.pid_file, args.timeout)
    if args.command == "worker":
        from proxy.upgrade import control

        return control.main(args.control_fd)
    if args.command == "ctl":
        from proxy.admin import client as admin_client

        return admin_client.main(args)
    return 2


def _check(path: str) -> int:
    from proxy.config import ConfigError
    from proxy.http.filter import load_config

    try:
        config, _ = load_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        print(f"{path}: {plural(len(exc.issues), 'error')}", file=sys.stderr)
        return 1
    print(f"{path}: ok ({plural(len(config.listeners), 'listener')}, {plural(len(config.clusters), 'cluster')})")
    return 0


def _run(args: argparse.Namespace) -> int:
    from proxy.config import ConfigError
    from proxy.upgrade import reexec
    from proxy.http.filter import load_config

    state = reexec.load_state()
    if state is not None:  # a keeper re-executed by an upgrade: already detached, already serving
        return _serve(args, None, state=state)
    if args.daemon:
        # the daemon runs in "/": every path given relative is resolved against the launch directory
        args.config = os.path.abspath(args.config)
        args.pid_file = os.path.abspath(args.pid_file or DEFAULT_PID_FILE)
        args.log_file = os.path.abspath(args.log_file or DEFAULT_LOG_FILE)
    try:
        # read once: the keeper binds for, and its workers run, exactly this text
        config, args.config_text = load_config(args.config)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        print(f"proxy: refusing to start: {args.config} has {plural(len(exc.issues), 'error')}", file=sys.stderr)
        return 1
    if args.daemon:
        return _daemonize(args, config)
    return _serve(args, config)


def _serve(args: argparse.Namespace, config: Any, report: Callable[[str], None] | None = None, state: dict[str, Any] | None = None) -> int:
    """Run the keeper in this process until it stops. `report` is the `--daemon` readiness pipe:
    it gets "ok" once the first worker generation serves, or "error: <reason>" when the start
    fails. `state`: what a keeper passed to itself across an upgrade's re-exec."""
    from proxy import log
    from proxy.config import ConfigError, load_text
    from proxy.config.paths import config_dir
    from proxy.http.filter import FilterLoadError
    from proxy.network.listener import BindError
    from proxy.server import raise_fd_limit
    from proxy.upgrade import reexec
    from proxy.upgrade.keeper import Keeper, StartFailed

    def fail(message: str) -> int:
        print(f"proxy: {message}", file=sys.stderr)
        if report is not None:
            report(f"error: {message}")
        return 1

    if state is not None:
        try:
            config = load_text(state["config_text"], state["config_path"], base_dir=config_dir(state["config_path"]))
            text = state["config_text"]
        except ConfigError:  # the new code reads the old text differently: the file passed its precheck
            from proxy.http.filter import load_config

            config, text = load_config(state["config_path"])
        logging_ = state["logging"]
        # argv is replayed as given, but a daemon runs in "/": take the resolved paths
        args.config, args.pid_file = state["config_path"], state.get("pid_file")
    else:
        text = args.config_text
        logging_ = {"level": args.log_level or config.logging.level, "format": config.logging.format, "file": args.log_file}
    log.setup(logging_["level"], logging_["format"], logging_["file"])
    raise_fd_limit()
    pid_file = None
    if state is not None and state.get("pid_fd") is not None:
        pid_file = PidFile.adopt(args.pid_file, state["pid_fd"])  # still locked: never released
    elif args.pid_file:
        try:
            pid_file = PidFile(args.pid_file)
        except AlreadyRunning as exc:
            return fail(str(exc))
        except OSError as exc:
            return fail(f"refusing to start: cannot write pid file {args.pid_file}: {exc.strerror or exc}")

    keeper = Keeper(config, text, args.config, logging_)
    keeper.pid_file = os.path.abspath(args.pid_file) if args.pid_file else None
    keeper.pid_fd = pid_file.fd if pid_file is not None else None

    def ready() -> None:
        if report is not None:
            report("ok")
        sd_notify("READY=1" + (f"\nMAINPID={os.getpid()}" if args.daemon else ""))

    def stopping() -> None:
        sd_notify("STOPPING=1")

    def reloading(phase: str) -> None:
        # systemd Type=notify-reload: RELOADING=1 with the monotonic time, then READY=1
        if phase == "start":
            sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        else:
            _, result, error = phase.split(":", 2)
            sd_notify("READY=1" + ("" if result == "ok" else f"\nSTATUS=Reload failed: {error}"))

    keeper.on_ready.append(ready)
    keeper.on_stopping.append(stopping)
    keeper.on_reload.append(reloading)
    try:
        if state is not None:
            reexec.restore(keeper, state)
        else:
            keeper.bind_for(config)
            keeper.bind_admin()
        import trio

        return trio.run(keeper.run)
    except (BindError, FilterLoadError) as exc:
        log.get_logger("server").error("start.failed", error=str(exc))
        return fail(f"refusing to start: {exc}")
    except StartFailed as exc:
        return fail(f"refusing to start: the worker did not start ({exc})")
    finally:
        if not keeper._exec_requested:
            keeper._close_all()
        if pid_file is not None:
            pid_file.release()


# ---------------------------------------------------------------- --daemon


def _daemonize(args: argparse.Namespace, config: Any) -> int:
    """Double fork + setsid; the launcher returns once the daemon serves (0) or failed (1).

    The daemon reports over a pipe it inherits: "ok" when the worker logs `ready`, or
    "error: <reason>"; end of file without either means it died before it was ready."""
    try:
        for path in (args.pid_file, args.log_file):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        log_fd = os.open(args.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        print(f"proxy: refusing to start: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # first child: new session, fork again so the daemon is no session leader
        code = 1
        try:
            os.close(read_end)
            os.setsid()
            if os.fork() == 0:
                code = _daemon_main(args, config, write_end, log_fd)
                logging.shutdown()
            else:
                code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    os.close(write_end)
    os.close(log_fd)
    os.waitpid(child, 0)
    try:
        status = _read_status(read_end, DAEMON_READY_TIMEOUT)
    finally:
        os.close(read_end)
    if status == "ok":
        print(f"proxy: serving (pid {_read_pid(args.pid_file) or '?'})")
        return 0
    if status is None:
        pid = _read_pid(args.pid_file)
        print(f"proxy: not ready after {DAEMON_READY_TIMEOUT:g}s (pid {pid or '?'}); see {args.log_file}", file=sys.stderr)
        return 1
    if status.startswith("error: "):
        print(f"proxy: {status[len('error: '):]}", file=sys.stderr)
        return 1
    print(f"proxy: the daemon exited before it was ready; see {args.log_file}", file=sys.stderr)
    return 1


def _daemon_main(args: argparse.Namespace, config: Any, status_fd: int, log_fd: int) -> int:
    os.chdir("/")
    os.umask(0o022)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    pipe: list[int] = [status_fd]

    def report(message: str) -> None:
        """Send the one status line to the launcher (the first call wins) and close the pipe."""
        if pipe:
            fd = pipe.pop()
            try:
                os.write(fd, f"{message}\n".encode())
            except OSError:
                pass
            os.close(fd)

    try:
        return _serve(args, config, report)
    except BaseException as exc:
        report(f"error: {type(exc).__name__}: {exc}")
        traceback.print_exc()
        return 1
    finally:
        report("error: the daemon exited before it was ready")  # no-op once "ok" was sent


def _read_status(fd: int, timeout: float) -> str | None:
    """The daemon's status line; "" on end of file, None on timeout."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        readable, _, _ = select.select([fd], [], [], left)
        if not readable:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").split("\n", 1)[0] if b"\n" in data else ""


class AlreadyRunning(Exception):
    def __init__(self, pid: int | None) -> None:
        super().__init__(f"already running (pid {pid if pid is not None else '?'})")
        self.pid = pid


class PidFile:
    """A pid file held under an exclusive `lockf` lock for the life of the process; a second
    proxy with the same pid file gets AlreadyRunning. Removed (and unlocked) by release()."""

    def __init__(self, path: str) -> None:
        self.path = path
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                pid = _pid_from_fd(fd)
                os.close(fd)
                if exc.errno in (errno.EACCES, errno.EAGAIN):
                    raise AlreadyRunning(pid) from None
                raise
            if self._same_file(fd):
                break
            os.close(fd)  # the previous holder removed it between our open and lock: retry
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd: int | None = fd

    @classmethod
    def adopt(cls, path: str, fd: int) -> PidFile:
        """The pid file a re-executed keeper inherited, lock held (same pid, nothing to write)."""
        self = cls.__new__(cls)
        self.path = path
        os.set_inheritable(fd, False)
        self.fd = fd
        return self

    def _same_file(self, fd: int) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        fst = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            if self._same_file(self.fd):
                os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)  # releases the lock
        self.fd = None


def _pid_from_fd(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 64, 0).decode().strip())
    except (OSError, ValueError):
        return None


def _read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- sd_notify


def sd_notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1") to systemd's NOTIFY_SOCKET, a path or an abstract "@name";
    False when unset or unreachable. A plain AF_UNIX datagram, as sd_notify(3) does."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


def _stop(pid_file: str, timeout: float) -> int:
    try:
        with open(pid_file) as f:
            pid = int(f.read().strip())
    except FileNotFoundError:
        print(f"proxy: not running (no pid file {pid_file})", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"proxy: cannot read pid file {pid_file}: {exc}", file=sys.stderr)
        return 1
    if not _alive(pid):
        print(f"proxy: not running (stale pid file {pid_file}: no process {pid})", file=sys.stderr)
        return 1
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        print(f"proxy: not running (stale pid file {pid_file}: no process {pid})", file=sys.stderr)
        return 1
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return 0
        time.sleep(0.05)
    print(f"proxy: process {pid} still running after {timeout:g}s", file=sys.stderr)
    return 1


def _alive(pid: int) -> bool:
    """True while `pid` runs; an exited process not yet reaped by its parent (zombie) is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError as exc:
            return exc.errno != errno.ESRCH
        return True
