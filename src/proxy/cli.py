"""Command line: `proxy run`, `proxy check`, `proxy stop`, `proxy ctl` (admin socket client).

Exit codes: 0 success, 1 bad config or refused start, 2 usage error (argparse).
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import time
from typing import Any

DEFAULT_CONFIG = "config/proxy.yaml"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="proxy", description="A cloud-native network proxy on trio.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="start the proxy (foreground)")
    run.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="override logging.level")
    run.add_argument("--log-file", help="append logs to this file instead of stderr (reopened on SIGUSR1)")
    run.add_argument("--pid-file", help="write the pid here while running")

    check = sub.add_parser("check", help="validate a config file and print every error")
    check.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")

    stop = sub.add_parser("stop", help="gracefully stop a running proxy (SIGTERM, then wait)")
    stop.add_argument("--pid-file", required=True, help="pid file of the running proxy")
    stop.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for it to exit")

    from proxy.admin import client as admin_client  # `proxy ctl`

    admin_client.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check":
        return _check(args.config)
    if args.command == "run":
        return _run(args)
    if args.command == "stop":
        return _stop(args.pid_file, args.timeout)
    if args.command == "ctl":
        from proxy.admin import client as admin_client

        return admin_client.main(args)
    return 2


def _check(path: str) -> int:
    from proxy.config import ConfigError, load

    try:
        config = load(path)
        _check_filters(path, config)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        n = len(exc.issues)
        print(f"{path}: {n} error{'s' if n != 1 else ''}", file=sys.stderr)
        return 1
    print(f"{path}: ok ({len(config.listeners)} listeners, {len(config.clusters)} clusters)")
    return 0


def _check_filters(path: str, config: Any) -> None:
    """Build every listener's filter chain once, so `proxy check` catches a filter that does
    not load or rejects its config, as `proxy run` would."""
    from proxy.config import ConfigError, ConfigIssue
    from proxy.http.filter import FilterLoadError, build_chain

    issues = []
    for i, listener in enumerate(config.listeners):
        for j, fc in enumerate(listener.filters):
            try:
                build_chain([fc])
            except FilterLoadError as exc:
                issues.append(ConfigIssue(f"listeners[{i}].filters[{j}]", str(exc).split(": ", 1)[-1], None, path))
    if issues:
        raise ConfigError(issues)


def _run(args: argparse.Namespace) -> int:
    from proxy import log
    from proxy.config import ConfigError, load
    from proxy.http.filter import FilterLoadError
    from proxy.network.listener import BindError
    from proxy.server import run_worker

    try:
        config = load(args.config)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        print(f"proxy: refusing to start: {args.config} has {len(exc.issues)} error(s)", file=sys.stderr)
        return 1
    log.setup(args.log_level or config.logging.level, config.logging.format, args.log_file)
    if args.pid_file:
        with open(args.pid_file, "w") as f:
            f.write(f"{os.getpid()}\n")
    try:
        return run_worker(config)
    except (BindError, FilterLoadError) as exc:
        log.get_logger("server").error("start.failed", error=str(exc))
        print(f"proxy: refusing to start: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.pid_file:
            try:
                os.unlink(args.pid_file)
            except OSError:
                pass


def _stop(pid_file: str, timeout: float) -> int:
    try:
        with open(pid_file) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError) as exc:
        print(f"proxy: cannot read pid file {pid_file}: {exc}", file=sys.stderr)
        return 1
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        print(f"proxy: not running (no process {pid})", file=sys.stderr)
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
