"""The keeper's admin socket and metrics listener.

The keeper answers what is its own (`/status` with generations and the last reload, `/reload`,
`/upgrade`, `/drain`) and forwards everything else to worker 0 of the current generation over
its control channel (ADMIN / ADMIN_REPLY), so the worker's stats, clusters, config, task tree
and profiles are read where they live. Commands that change worker state (`/log_level`, host
enable/disable) go to every current worker. `/metrics` is the worker's text plus the keeper's
upgrade families.
"""

from __future__ import annotations

import contextvars
import re
import socket
from typing import Any
from urllib.parse import urlsplit

import trio

from proxy import log as proxy_log
from proxy.admin.metrics_server import MetricsServer, response
from proxy.admin.server import AdminServer, TextBody
from proxy.log import get_logger
from proxy.metrics import CONTENT_TYPE, escape_label_value
from proxy.upgrade.migration import b64d

log = get_logger("admin")

_current_conn: contextvars.ContextVar[socket.socket | None] = contextvars.ContextVar("admin_conn", default=None)
_BROADCAST = re.compile(r"/log_level|/clusters/[^/]+/hosts/[^/]+/(enable|disable)")


class KeeperAdmin(AdminServer):
    def __init__(self, keeper: Any, path: str, allowed_uids: Any = ()) -> None:
        super().__init__(keeper, path, allowed_uids)
        self.keeper = keeper

    def close(self) -> None:
        if not self.keeper._exec_requested:  # a re-executed keeper keeps serving this socket
            super().close()

    async def _connection(self, conn: socket.socket) -> None:
        _current_conn.set(conn)
        await super()._connection(conn)

    async def _dispatch_async(self, method: str, target: str, body: bytes) -> tuple[int, Any, str | None]:
        keeper = self.keeper
        path = urlsplit(target).path.rstrip("/") or "/"
        try:
            if path == "/status" and "worker=" not in target:  # ?worker=I: that worker's own view
                if method != "GET":
                    return 405, {"error": f"{method} not allowed on /status"}, "GET"
                return 200, keeper.status(), None
            if path in ("/reload", "/upgrade"):
                if method != "POST":
                    return 405, {"error": f"{method} not allowed on {path}"}, "POST"
                if path == "/reload":
                    result = await keeper.reload("reload")
                else:
                    result = await keeper.upgrade(reply=_current_conn.get())
                    if result.get("result") == "reexec":
                        await trio.sleep_forever()  # the re-executed keeper answers on this connection
                return reload_status(result), result, None
            if path == "/drain":
                if method != "POST":
                    return 405, {"error": f"{method} not allowed on /drain"}, "POST"
                assert keeper._nursery is not None
                keeper._nursery.start_soon(keeper.drain)
                return 200, {"draining": True}, None
            workers = [w for w in keeper.current if not w.gone.is_set()]
            if not workers:
                return 503, {"error": "no worker is running"}, None
            if _BROADCAST.fullmatch(path) and method in ("PUT", "POST"):
                replies = [await w.admin(method, target, body) for w in workers]
                reply = replies[0]
                if reply is not None and reply.get("status") == 200:
                    done = _json_body(reply)
                    if path == "/log_level":
                        if done.get("level") in proxy_log.LEVELS:
                            proxy_log.set_level(done["level"])
                            keeper.logging["level"] = done["level"]  # new generations start with it too
                    else:  # host enable/disable: replayed into the workers of later generations
                        keeper.host_overrides[(done.get("cluster"), done.get("host"))] = bool(done.get("enabled"))
            elif method == "GET" and path in _SUMMED and len(workers) > 1:
                replies = [await w.admin(method, target, body) for w in workers]
                reply = _sum_replies(path, [r for r in replies if r is not None and r.get("status") == 200]) or replies[0]
            else:
                reply = await _pick(workers, target).admin(method, target, body)
            if reply is None:
                return 503, {"error": "the worker did not answer"}, None
            data = b64d(reply.get("body", ""))
            if path == "/metrics" and reply.get("status") == 200:
                data += keeper_metrics(keeper).encode()
            return int(reply["status"]), TextBody(reply.get("content_type", "application/json"), data), reply.get("allow")
        except _NoSuchWorker as exc:
            return 404, {"error": f"no worker with index {exc}"}, None
        except Exception as exc:  # an admin request never takes the keeper down
            log.error("admin.handler_error", exc_info=exc, method=method, target=target)
            return 500, {"error": f"internal error: {exc}"}, None


_SUMMED = {"/stats", "/listeners", "/clusters", "/metrics"}
_NOT_SUMMED = ("proxy_info", "proxy_uptime_seconds", "proxy_state")


def _sum_replies(path: str, replies: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One view over several workers: counters and gauges added up (worker 0 gives the shape)."""
    import json

    from proxy.upgrade.migration import b64e

    if not replies:
        return None
    bodies = [b64d(r.get("body", "")) for r in replies]
    if path == "/metrics":
        merged = _sum_metrics([b.decode() for b in bodies]).encode()
    else:
        docs = [json.loads(b) for b in bodies]
        merged = json.dumps(_sum_json(docs, counters=path == "/stats"), default=str).encode() + b"\n"
    return {**replies[0], "body": b64e(merged)}


def _sum_json(docs: list[Any], counters: bool = False) -> Any:
    """Worker 0's document with its counters added up over `docs`. Counters are the numbers of
    /stats and those under a `stats` key (/listeners, /clusters); any other number is config
    (a host's weight) and is the same in every worker: worker 0's is kept, not summed."""
    first = docs[0]
    if isinstance(first, bool) or not isinstance(first, (int, float, dict, list)):
        return first
    if isinstance(first, (int, float)):
        if not counters:
            return first
        return sum(d for d in docs if isinstance(d, (int, float)) and not isinstance(d, bool))
    if isinstance(first, dict):
        return {k: _sum_json([d.get(k, v) if isinstance(d, dict) else v for d in docs], counters or k == "stats") for k, v in first.items()}
    # lists of listeners/clusters/hosts: matched by position (every worker has the same config)
    return [_sum_json([d[i] if isinstance(d, list) and i < len(d) else item for d in docs], counters) for i, item in enumerate(first)]


def _sum_metrics(texts: list[str]) -> str:
    values: dict[str, float] = {}
    for text in texts[1:]:
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                values[key] = values.get(key, 0.0) + float(value)
    out = []
    for line in texts[0].splitlines():
        if line and not line.startswith("#") and not line.startswith(_NOT_SUMMED):
            key, _, value = line.rpartition(" ")
            total = float(value) + values.get(key, 0.0)
            line = f"{key} {int(total) if total.is_integer() and '.' not in value else repr(total)}"
        out.append(line)
    return "\n".join(out) + "\n"


async def metrics_text(keeper: Any) -> bytes | None:
    """Every current worker's metrics added up, plus the keeper's own families."""
    workers = [w for w in keeper.current if not w.gone.is_set()]
    replies = [await w.admin("GET", "/metrics", b"") for w in workers]
    reply = _sum_replies("/metrics", [r for r in replies if r is not None and r.get("status") == 200])
    if reply is None:
        return None
    return b64d(reply.get("body", "")) + keeper_metrics(keeper).encode()


def _pick(workers: list[Any], target: str) -> Any:
    """`?worker=I` picks the worker of that index (for /tasks, /debug/profile, /config with
    several workers); worker 0 by default."""
    from urllib.parse import parse_qs

    wanted = parse_qs(urlsplit(target).query).get("worker")
    if wanted:
        for w in workers:
            if str(w.index) == wanted[-1]:
                return w
        raise _NoSuchWorker(wanted[-1])
    return workers[0]


class _NoSuchWorker(Exception):
    pass


def reload_status(result: dict[str, Any]) -> int:
    outcome = result.get("result")
    if outcome == "ok":
        return 200
    if outcome == "busy":
        return 409
    if result.get("stage") == "config":
        return 400
    return 500


def _json_body(reply: dict[str, Any]) -> dict[str, Any]:
    import json

    try:
        body = json.loads(b64d(reply.get("body", "")))
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def keeper_metrics(keeper: Any) -> str:
    lines = [
        "# HELP proxy_upgrade_generation Current worker generation (1 at start, +1 per reload or upgrade).",
        "# TYPE proxy_upgrade_generation gauge",
        f"proxy_upgrade_generation {keeper.generation}",
        "# HELP proxy_upgrades_total Reloads and upgrades by result.",
        "# TYPE proxy_upgrades_total counter",
    ]
    for result, n in sorted(keeper.upgrades.items()):
        lines.append(f'proxy_upgrades_total{{result="{escape_label_value(result)}"}} {n}')
    lines += [
        "# HELP proxy_workers Worker processes of the current generation.",
        "# TYPE proxy_workers gauge",
        f"proxy_workers {len(keeper.current)}",
    ]
    if keeper.migrated_total:
        lines += [
            "# HELP proxy_connections_migrated_total Live connections handed to a new generation, by kind.",
            "# TYPE proxy_connections_migrated_total counter",
        ]
        for kind, n in sorted(keeper.migrated_total.items()):
            lines.append(f'proxy_connections_migrated_total{{kind="{escape_label_value(kind)}"}} {n}')
    last = keeper.last_result or {}
    durations = [(stage, last[key]) for key, stage in (("ready_seconds", "ready"), ("seconds", "total")) if key in last]
    if durations:
        lines += [
            "# HELP proxy_upgrade_duration_seconds Duration of the last reload or upgrade, by stage.",
            "# TYPE proxy_upgrade_duration_seconds gauge",
        ]
        lines += [f'proxy_upgrade_duration_seconds{{stage="{stage}"}} {value}' for stage, value in durations]
    return "\n".join(lines) + "\n"


class KeeperMetrics(MetricsServer):
    def __init__(self, keeper: Any, address: Any) -> None:
        super().__init__(keeper, address)
        self.keeper = keeper

    def close(self) -> None:
        if not self.keeper._exec_requested:
            super().close()

    async def answer(self, head: bytes) -> bytes:
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if len(parts) == 3 and parts[1].split("?", 1)[0] == "/metrics" and parts[0] in ("GET", "HEAD"):
            body = await metrics_text(self.keeper)
            if body is None:
                return response(503, b"no worker is running\n")
            return response(200, body, CONTENT_TYPE, head_only=parts[0] == "HEAD")
        return await super().answer(head)  # /ready and errors from the keeper's state
