"""`proxy ctl`: talk to a running proxy over its admin socket (HTTP/1.1 + JSON, blocking).

Human output is aligned tables with rounded numbers, durations and sizes in units; `--json`
prints the server's JSON as it is. The ctl options go before or after the command. Any failure
(no socket, refused, error answer) is one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import calendar
import json
import socket
import sys
import time
from typing import Any
from urllib.parse import quote

from proxy import humanize
from proxy.humanize import plural

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
            if not args.json:
                result = without_l4_request_counters(result, _config_or_none(path))
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
    elif cmd == "stats" and not result and args.pattern:
        print(f"no counter name contains {args.pattern!r}")
    else:
        print(render(cmd, result))
    return 0


def _config_or_none(path: str) -> Any:
    try:
        return request(path, "GET", "/config")
    except CtlError:
        return None  # the table then shows every counter


def without_l4_request_counters(stats: dict[str, Any], config: Any) -> dict[str, Any]:
    """The stats table without the HTTP request counters of TCP listeners and of the clusters
    only TCP listeners use: there they are always 0 and bury the counters that move."""
    if not isinstance(config, dict):
        return stats
    listeners = [lr for lr in config.get("listeners") or [] if isinstance(lr, dict)]
    tcp = [lr for lr in listeners if lr.get("protocol") == "tcp"]
    # A cluster is L4-only when a TCP listener names it and nothing else does: its name is no
    # string anywhere outside `clusters` and the TCP listeners (routes, filters, ...).
    elsewhere: set[str] = set()
    _strings({k: v for k, v in config.items() if k not in ("clusters", "listeners")}, elsewhere)
    _strings([lr for lr in listeners if lr.get("protocol") != "tcp"], elsewhere)
    named = [lr.get("cluster") for lr in tcp] + [c.get("cluster") for lr in tcp for c in lr.get("filter_chains") or [] if isinstance(c, dict)]
    l4_clusters = {str(name) for name in named if name is not None} - elsewhere
    hidden = tuple(f"listener.{lr.get('name')}.downstream_rq_" for lr in tcp)
    hidden += tuple(f"cluster.{name}.upstream_rq_" for name in l4_clusters)
    return {k: v for k, v in stats.items() if not k.startswith(hidden)}


def _strings(value: Any, out: set[str]) -> None:
    if isinstance(value, str):
        out.add(value)
    elif isinstance(value, dict):
        for v in value.values():
            _strings(v, out)
    elif isinstance(value, list):
        for v in value:
            _strings(v, out)


def table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header] + [[humanize.number(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def _outcome(r: dict[str, Any]) -> tuple[str, str, list[str]]:
    """A reload or upgrade result as (verb, the rest of its headline, detail lines), shared by
    `ctl reload|upgrade` and the `last reload` of `ctl status`."""
    outcome = r.get("result")
    if outcome == "ok":
        pids = [str(p) for p in r.get("workers") or ()]
        workers = f" ({plural(len(pids), 'worker')}: {'pid' if len(pids) == 1 else 'pids'} {', '.join(pids)})" if pids else ""
        timing = [f"{what} after {humanize.seconds(r[key])}" for what, key in (("ready", "ready_seconds"), ("done", "seconds")) if isinstance(r.get(key), (int, float))]
        migrated = r.get("migrated") or {}
        moved = ", ".join(f"{n} {kind}" for kind, n in sorted(migrated.items())) or "none"
        details = [", ".join(timing)] if timing else []
        details.append(f"live connections migrated: {moved}; closed at the drain deadline: {r.get('forced', 0)}")
        return "ok", f", generation {r.get('generation')} serving{workers}", details
    if outcome == "busy":
        running = r.get("running")
        why = f"busy ({_article(running)} {running} is running)" if running else "the proxy is not serving (it is draining or stopping)"
        return "refused", f", {why}", []
    stage = f" at {r['stage']}" if r.get("stage") else ""
    serves = f"; generation {r['generation']} serves on" if r.get("generation") is not None else ""
    return "FAILED", f"{stage}: {r.get('error') or 'no reason given'}{serves}", [str(e) for e in r.get("errors") or ()]


def render_reload(cmd: str, r: dict[str, Any]) -> str:
    verb, rest, details = _outcome(r)
    return "\n".join([f"{cmd}: {verb}{rest}"] + [f"  {line}" for line in details])


def _article(word: str) -> str:
    return "an" if word[:1] in ("a", "e", "i", "o", "u") else "a"


def _ago(at: Any, now: float | None) -> str:
    """`5s ago (2026-12-02T12:32:30Z)`, or just the text when it is not that UTC timestamp."""
    try:
        then = calendar.timegm(time.strptime(str(at), "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return f"at {at}"
    return f"{humanize.uptime((time.time() if now is None else now) - then)} ago ({at})"


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return _yn(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value) if value else "none"
    return humanize.number(value)


def render_status(r: dict[str, Any], now: float | None = None) -> str:
    """`label: value` lines, values aligned; a field of several lines continues under its value."""
    fields: list[tuple[str, list[str]]] = []
    for key, value in r.items():
        if key == "uptime_seconds" and isinstance(value, (int, float)):
            fields.append(("uptime", [humanize.uptime(value)]))
        elif key in ("workers", "retiring") and isinstance(value, list):
            lines = [f"#{w.get('index')} pid {w.get('pid')}, generation {w.get('generation')}, {w.get('state')}" for w in value if isinstance(w, dict)]
            fields.append((key, lines or ["none"]))
        elif key == "certificate_errors" and isinstance(value, list):
            # TLS files that changed and could not be used: the old ones serve on
            lines = [
                f"{e.get('listener')}: {e.get('error')} ({_ago(e.get('since'), now)}; the certificates before it serve on)"
                for e in value
                if isinstance(e, dict)
            ]
            fields.append(("certificate errors", lines or ["none"]))
        elif key == "busy":
            fields.append(("busy", [f"yes, {_article(str(value))} {value} is running" if value else "no"]))
        elif key == "last_reload":
            if not isinstance(value, dict):
                fields.append(("last reload", ["never" if value is None else _value(value)]))
                continue
            verb, rest, details = _outcome(value)
            fields.append(("last reload", [f"{value.get('kind', 'reload')} {verb} {_ago(value.get('at'), now)}{rest}", *details]))
        else:
            fields.append((key.replace("_", " "), [_value(value)]))
    width = max((len(label) for label, _ in fields), default=0) + 2
    out: list[str] = []
    for label, lines in fields:
        out.append(f"{label + ':':<{width}}{lines[0]}".rstrip())
        out += [" " * width + line for line in lines[1:]]
    return "\n".join(out)


def render(cmd: str, result: Any) -> str:
    if cmd == "status":
        return render_status(result)
    if cmd == "stats":
        if not result:
            return "no counters"
        return table(["NAME", "VALUE"], [[k, v] for k, v in sorted(result.items())])
    if cmd == "listeners":
        rows = []
        for lr in result:
            s = lr["stats"]
            # a TCP listener has no requests: its HTTP request counters are always 0
            requests = "-" if lr["protocol"] == "tcp" else s.get("downstream_rq_total", 0)
            rx, tx = (humanize.size(s[k]) if isinstance(s.get(k), int) else "-" for k in ("downstream_rx_bytes_total", "downstream_tx_bytes_total"))
            rows.append([lr["name"], lr["address"], lr["protocol"], s["downstream_cx_active"], s["downstream_cx_total"], requests, rx, tx])
        return table(["NAME", "ADDRESS", "PROTOCOL", "ACTIVE", "TOTAL", "REQUESTS", "RECEIVED", "SENT"], rows)
    if cmd == "clusters":
        rows = []
        for c in result:
            for h in c["hosts"]:
                weight, enabled, healthy = _per_worker(h, "weight", humanize.number), _per_worker(h, "enabled", _yn), _per_worker(h, "healthy", _yn)
                rows.append([c["name"], h["address"], weight, enabled, healthy, h["stats"]["cx_active"], h["stats"]["cx_total"]])
            if not c["hosts"]:
                rows.append([c["name"], "-", "-", "-", "-", "-", "-"])
        return table(["CLUSTER", "HOST", "WEIGHT", "ENABLED", "HEALTHY", "ACTIVE", "TOTAL"], rows)
    if cmd == "config":
        return json.dumps(result, indent=2)
    if cmd == "log-level":
        return f"log level: {result['level']}"
    if cmd == "drain":
        return "draining: the proxy stopped accepting; open connections finish up to drain_timeout"
    if cmd == "host":
        return f"cluster {result['cluster']}, host {result['host']}: {'enabled' if result['enabled'] else 'disabled'}"
    if cmd == "tasks":
        lines: list[str] = []
        _render_tree(result, 0, lines)
        return "\n".join(lines)
    return json.dumps(result, indent=2)


def _yn(value: bool) -> str:
    return "yes" if value else "no"


def _per_worker(obj: dict[str, Any], key: str, show: Any) -> str:
    """A field as shown; one the workers disagree on (null, with a `per_worker` entry) as each
    value with its workers: `yes (#0 #2), no (#1)`."""
    split = (obj.get("per_worker") or {}).get(key)
    if not isinstance(split, dict):
        return str(show(obj[key]))
    groups: dict[str, list[str]] = {}
    for worker, value in split.items():
        groups.setdefault(str(show(value)), []).append(f"#{worker}")
    return ", ".join(f"{value} ({' '.join(workers)})" for value, workers in groups.items())


def _render_tree(node: dict[str, Any], depth: int, lines: list[str]) -> None:
    lines.append("  " * depth + node["name"])
    for child in node.get("children", []):
        _render_tree(child, depth + 1, lines)
    if node.get("omitted"):
        lines.append("  " * (depth + 1) + f"... {plural(node['omitted'], 'more task')}")
