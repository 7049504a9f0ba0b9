"""`proxy ctl`: talk to a running proxy over its admin socket (HTTP/1.1 + JSON, blocking).

Human output is aligned tables; `--json` prints the server's JSON. The ctl options go before
or after the command. Any failure (no socket, refused, error answer) is one line on stderr and
exit status 1.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import Any
from urllib.parse import quote

DEFAULT_SOCKET = "/run/proxy/admin.sock"
TIMEOUT = 10.0


class CtlError(Exception):
    pass


def request(path: str, method: str = "GET", target: str = "/", body: Any = None, timeout: float = TIMEOUT) -> Any:
    """One request over the Unix socket at `path`; returns the decoded JSON or raises CtlError."""
    status, payload = exchange(path, method, target, body, timeout)
    if status != 200:
        message = payload.get("error") if isinstance(payload, dict) else None
        raise CtlError(f"{message or 'error'} (HTTP {status})")
    return payload


def exchange(path: str, method: str = "GET", target: str = "/", body: Any = None, timeout: float = TIMEOUT) -> tuple[int, Any]:
    """One request; the status and decoded body, whatever the status."""
    data = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {target} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: {len(data)}\r\n"
    if body is not None:
        head += "Content-Type: application/json\r\n"
    chunks: list[bytes] = []
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise CtlError(f"not running (no admin socket at {path})") from None
        except PermissionError:
            raise CtlError(f"permission denied on admin socket {path}") from None
        except OSError as exc:
            raise CtlError(f"cannot connect to admin socket {path}: {exc.strerror or exc}") from None
        try:
            try:
                sock.sendall(head.encode() + b"\r\n" + data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server may answer (403) and close before reading: read the answer
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except TimeoutError:
            raise CtlError(f"no answer from {path} within {timeout:g}s") from None
        except OSError as exc:
            if not chunks:  # a reset after a full answer (e.g. a 403 then close) is still an answer
                raise CtlError(f"connection to {path} failed: {exc.strerror or exc}") from None
    finally:
        sock.close()
    raw = b"".join(chunks)
    return _parse_response(raw, path)


def _parse_response(raw: bytes, path: str) -> tuple[int, Any]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise CtlError(f"connection to {path} closed without an answer")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ")[1])
    except (IndexError, ValueError):
        raise CtlError(f"bad answer from {path}: {lines[0]!r}") from None
    length = None
    content_type = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        lname = name.strip().lower()
        if lname == "content-length":
            length = int(value.strip())
        elif lname == "content-type":
            content_type = value.strip().lower()
    if length is not None:
        body = body[:length]
    if content_type.startswith("text/"):
        return status, body.decode("utf-8", "replace")  # /metrics, /debug/profile
    try:
        return status, json.loads(body) if body.strip() else None
    except ValueError:
        raise CtlError(f"bad JSON from {path} (HTTP {status})") from None


# ---------------------------------------------------------------- command line


def _add_ctl_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """The options every ctl command takes. Added to `proxy ctl` itself (with real defaults)
    and to each command (`default` SUPPRESS: absent there, they leave what came before the
    command alone), so they go before or after COMMAND, as with kubectl and systemctl."""
    parser.add_argument("-c", "--config", metavar="FILE", default=default, help="config file whose admin.socket to use")
    parser.add_argument(
        "--socket", metavar="PATH", default=default, help=f"admin socket path (default: the config's admin.socket, else {DEFAULT_SOCKET})"
    )
    parser.add_argument("--json", action="store_true", default=default, help="print JSON instead of tables")


def add_parser(sub: Any) -> None:
    ctl = sub.add_parser(
        "ctl",
        help="control a running proxy over its admin socket",
        description="Control a running proxy over its admin socket.",
        epilog="-c, --socket and --json may come before or after COMMAND:\n"
        "  proxy ctl status --json  is  proxy ctl --json status\n"
        "proxy ctl COMMAND --help lists that command's arguments.",
        formatter_class=argparse.RawDescriptionHelpFormatter,  # the epilog's lines as written
    )
    _add_ctl_options(ctl, None)
    ctl.set_defaults(json=False)
    common = argparse.ArgumentParser(add_help=False)
    _add_ctl_options(common, argparse.SUPPRESS)
    cmds = ctl.add_subparsers(dest="ctl_command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:  # noqa: A002
        return cmds.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".", parents=[common])

    command("status", "pid, state, uptime, version, workers and the last reload")
    stats = command("stats", "counters (optionally those containing PATTERN)")
    stats.add_argument("pattern", nargs="?", metavar="PATTERN", help="only counters whose name contains this")
    command("listeners", "listeners with their connection counts")
    command("clusters", "clusters and hosts")
    command("config", "the running config (secrets redacted)")
    level = command("log-level", "change the log level")
    level.add_argument("level", choices=["debug", "info", "warning", "error"], metavar="LEVEL", help="debug, info, warning or error")
    command("drain", "stop accepting; let open connections finish")
    for name, what in (("reload", "re-read the config and start a new worker generation"), ("upgrade", "re-execute the keeper, then start a new generation (new code)")):
        cmd = command(name, f"{what}; waits for the outcome (exit 1 on failure)")
        cmd.add_argument("--timeout", type=float, metavar="SECONDS", default=600.0, help="seconds to wait for the outcome (default 600)")
    host = command("host", "enable or disable an upstream host")
    host.add_argument("action", choices=["enable", "disable"], metavar="enable|disable", help="take the host back into, or out of, load balancing")
    host.add_argument("cluster", metavar="CLUSTER", help="the cluster's name")
    host.add_argument("address", metavar="ADDRESS", help="the host's address as in the config, e.g. 10.0.0.7:8000")
    command("tasks", "the live trio task tree")
    command("metrics", "the Prometheus metrics text")
    profile = command("profile", "sample the worker for SECONDS; print collapsed stacks (flamegraph input)")
    profile.add_argument("seconds", nargs="?", type=float, default=5.0, metavar="SECONDS", help="how long to sample (default 5)")


def socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    if args.config:
        from proxy.config import ConfigError, load

        try:
            config = load(args.config)
        except ConfigError as exc:
            raise CtlError(f"cannot read {args.config}: {exc.issues[0] if exc.issues else exc}") from None
        if config.admin.socket:
            return config.admin.socket
    return DEFAULT_SOCKET


def main(args: argparse.Namespace) -> int:
    try:
        path = socket_path(args)
        cmd = args.ctl_command
        if cmd == "status":
            result = request(path, "GET", "/status")
        elif cmd == "stats":
            target = "/stats" + (f"?filter={quote(args.pattern, safe='')}" if args.pattern else "")
            result = request(path, "GET", target)
        elif cmd in ("listeners", "clusters", "config", "tasks"):
            result = request(path, "GET", f"/{cmd}")
        elif cmd == "metrics":
            result = request(path, "GET", "/metrics")
        elif cmd == "profile":
            result = request(path, "GET", f"/debug/profile?seconds={args.seconds:g}", timeout=args.seconds + TIMEOUT)
        elif cmd == "log-level":
            result = request(path, "PUT", "/log_level", {"level": args.level})
        elif cmd == "drain":
            result = request(path, "POST", "/drain")
        elif cmd in ("reload", "upgrade"):
            status, result = exchange(path, "POST", f"/{cmd}", timeout=args.timeout)
            if not isinstance(result, dict):
                raise CtlError(f"bad answer (HTTP {status})")
            print(json.dumps(result, indent=2) if args.json else render_reload(cmd, result))
            return 0 if status == 200 else 1
        elif cmd == "host":
            target = f"/clusters/{quote(args.cluster, safe='')}/hosts/{quote(args.address, safe='')}/{args.action}"
            result = request(path, "POST", target)
        else:  # pragma: no cover - argparse restricts the choices
            raise CtlError(f"unknown command {cmd}")
    except CtlError as exc:
        print(f"proxy: {exc}", file=sys.stderr)
        return 1
    if isinstance(result, str):
        print(result, end="" if result.endswith("\n") else "\n")  # text endpoints print as they are
    elif args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render(cmd, result))
    return 0


def table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def render_reload(cmd: str, r: dict[str, Any]) -> str:
    outcome = r.get("result")
    if outcome == "ok":
        migrated = r.get("migrated") or {}
        moved = ", ".join(f"{n} {kind}" for kind, n in sorted(migrated.items())) or "none"
        return (
            f"{cmd}: ok, generation {r.get('generation')} serving (workers {r.get('workers')})\n"
            f"  ready after {r.get('ready_seconds')}s, done after {r.get('seconds')}s\n"
            f"  live connections migrated: {moved}; closed at the drain deadline: {r.get('forced', 0)}"
        )
    if outcome == "busy":
        return f"{cmd}: refused, busy (a {r.get('running') or 'reload'} is running)"
    lines = [f"{cmd}: FAILED at {r.get('stage')}: {r.get('error')}; generation {r.get('generation')} serves on"]
    lines += [f"  {e}" for e in r.get("errors", ())]
    return "\n".join(lines)


def render(cmd: str, result: Any) -> str:
    if cmd == "status":
        lines = []
        for k, v in result.items():
            if k in ("workers", "retiring"):
                v = ", ".join(f"#{w['index']} pid {w['pid']} gen {w['generation']} {w['state']}" for w in v) or "-"
            elif k == "last_reload" and isinstance(v, dict):
                v = f"{v.get('kind')} {v.get('result')} at {v.get('at')}" + (f" ({v.get('stage')}: {v.get('error')})" if v.get("result") != "ok" else "")
            lines.append(f"{k}: {v}")
        return "\n".join(lines)
    if cmd == "stats":
        return table(["NAME", "VALUE"], [[k, v] for k, v in sorted(result.items())])
    if cmd == "listeners":
        return table(
            ["NAME", "ADDRESS", "PROTOCOL", "ACTIVE", "TOTAL"],
            [[lr["name"], lr["address"], lr["protocol"], lr["stats"]["downstream_cx_active"], lr["stats"]["downstream_cx_total"]] for lr in result],
        )
    if cmd == "clusters":
        rows = []
        for c in result:
            for h in c["hosts"]:
                rows.append(
                    [c["name"], h["address"], h["weight"], _yn(h["enabled"]), _yn(h["healthy"]), h["stats"]["cx_active"], h["stats"]["cx_total"]]
                )
        return table(["CLUSTER", "HOST", "WEIGHT", "ENABLED", "HEALTHY", "ACTIVE", "TOTAL"], rows)
    if cmd == "config":
        return json.dumps(result, indent=2)
    if cmd == "log-level":
        return f"log level: {result['level']}"
    if cmd == "drain":
        return "draining: the proxy stopped accepting; open connections finish up to drain_timeout"
    if cmd == "host":
        return f"{result['cluster']} {result['host']}: {'enabled' if result['enabled'] else 'disabled'}"
    if cmd == "tasks":
        lines: list[str] = []
        _render_tree(result, 0, lines)
        return "\n".join(lines)
    return json.dumps(result, indent=2)


def _yn(value: bool) -> str:
    return "yes" if value else "no"


def _render_tree(node: dict[str, Any], depth: int, lines: list[str]) -> None:
    lines.append("  " * depth + node["name"])
    for child in node.get("children", []):
        _render_tree(child, depth + 1, lines)
    if node.get("omitted"):
        lines.append("  " * (depth + 1) + f"... {node['omitted']} more")
