"""The keeper's admin socket and metrics listener.

The keeper answers what is its own (`/status` with generations and the last reload, `/reload`,
`/upgrade`, `/drain`) and asks the workers of the current generation for the rest over their
control channels (ADMIN / ADMIN_REPLY), so stats, clusters, config, task trees and profiles are
read where they live. With several workers, every one is asked and the answers are folded into
one by the schema declared where they are built (`proxy.admin.aggregate`): counters and gauges
of amounts add up, properties are taken once or shown per worker. Commands that change worker
state (`/log_level`, host enable/disable) go to every worker. `?worker=I` on any worker endpoint
reads (or changes) that worker alone. `/metrics` is the workers' text plus the keeper's upgrade
families.
"""

from __future__ import annotations

import contextvars
import json
import re
import socket
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trio

from proxy import log as proxy_log
from proxy import metrics as proxy_metrics
from proxy.admin import aggregate
from proxy.admin.metrics_server import MetricsServer, response
from proxy.admin.server import MERGE, AdminServer, TextBody
from proxy.log import get_logger
from proxy.metrics import CONTENT_TYPE, escape_label_value
from proxy.upgrade.migration import b64d

log = get_logger("admin")

_current_conn: contextvars.ContextVar[socket.socket | None] = contextvars.ContextVar("admin_conn", default=None)
_BROADCAST = re.compile(r"/log_level|/clusters/[^/]+/hosts/[^/]+/(enable|disable)")
_KEEPERS = ("/reload", "/upgrade", "/drain")  # and /status without ?worker
_FOLDED = {*MERGE, "/metrics", "/tasks"}  # GETs answered by every worker together; the rest by worker 0


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
            if path in _KEEPERS and _wanted(target) is not None:
                return 400, {"error": f"{path} is the keeper's (the whole proxy's): ?worker does not apply"}, None
            if path == "/status" and _wanted(target) is None:  # ?worker=I: that worker's own view
                if method != "GET":
                    return 405, {"error": f"{method} not allowed on /status"}, "GET"
                status = keeper.status()
                if any(listener.tls is not None for listener in keeper.config.listeners):
                    status["certificate_errors"] = await certificate_errors(keeper)
                return 200, status, None
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
            return await ask_workers(keeper, method, target, body)
        except _BadWorker as exc:
            return exc.status, {"error": str(exc)}, None
        except Exception as exc:  # an admin request never takes the keeper down
            log.error("admin.handler_error", exc_info=exc, method=method, target=target)
            return 500, {"error": f"internal error: {exc}"}, None


async def ask_workers(keeper: Any, method: str, target: str, body: bytes) -> tuple[int, Any, str | None]:
    """A worker endpoint's answer: from the worker `?worker=I` names; else, with several
    workers, every worker's answer folded into one (reads) or applied by each (commands);
    else worker 0's. Raises _BadWorker for a `?worker` that names none."""
    workers = [w for w in keeper.current if not w.gone.is_set()]
    if not workers:
        return 503, {"error": "no worker is running"}, None
    path = urlsplit(target).path.rstrip("/") or "/"
    wanted = _wanted(target)
    if wanted is not None:  # one worker's own view; a command changes that worker alone
        return _relay(await _pick(workers, wanted).admin(method, target, body))
    broadcast = _BROADCAST.fullmatch(path) is not None and method in ("PUT", "POST")
    folded = method == "GET" and path in _FOLDED
    if len(workers) == 1 or not (broadcast or folded):
        reply = await workers[0].admin(method, target, body)
        if broadcast and reply is not None and reply.get("status") == 200:
            _remember(keeper, path, _json(reply))
        status, payload, allow = _relay(reply)
        if path == "/metrics" and status == 200 and isinstance(payload, TextBody):
            payload = TextBody(payload.content_type, payload.body + keeper_metrics(keeper).encode())
        return status, payload, allow
    replies = await _ask_all(workers, method, target, body)
    if broadcast:
        return _applied(keeper, path, workers, replies)
    answered = [(w, r) for w, r in zip(workers, replies, strict=True) if r is not None]
    if len(answered) < len(workers):  # a sum without a worker's share would be a wrong number
        names = ", ".join(f"#{w.index} (pid {w.pid})" for w, r in zip(workers, replies, strict=True) if r is None)
        return 503, {"error": f"worker {names} did not answer; ?worker=I reads one worker"}, None
    for _, reply in answered:
        if reply.get("status") != 200:  # a request every worker refuses (a bad query): one of them says why
            return _relay(reply)
    bodies = {str(w.index): b64d(r.get("body", "")) for w, r in answered}
    if path == "/metrics":
        text = aggregate.merge_metrics({w: b.decode() for w, b in bodies.items()}, proxy_metrics.SUMMED_GAUGES, proxy_metrics.PER_WORKER)
        return 200, TextBody(CONTENT_TYPE, text.encode() + keeper_metrics(keeper).encode()), None
    docs = {w: json.loads(b) for w, b in bodies.items()}
    if path == "/tasks":
        return 200, aggregate.task_trees({str(w.index): (w.pid, docs[str(w.index)]) for w in workers}), None
    return 200, aggregate.merge(MERGE[path], docs), None


async def certificate_errors(keeper: Any, timeout: float = 2.0) -> list[dict[str, Any]]:
    """The current workers' TLS files that changed and could not be used, each with the
    workers that found it (a worker that does not answer in time is left out)."""
    workers = [w for w in keeper.current if not w.gone.is_set()]
    found: dict[tuple[Any, Any], dict[str, Any]] = {}

    async def ask(w: Any) -> None:
        reply = await w.admin("GET", "/status", b"", timeout=timeout)
        body = _json(reply) if reply is not None and reply.get("status") == 200 else None
        errors = body.get("certificate_errors") if isinstance(body, dict) else None
        for error in errors or ():
            entry = found.setdefault((error.get("listener"), error.get("error")), {**error, "workers": []})
            entry["workers"].append(w.index)

    async with trio.open_nursery() as nursery:
        for w in workers:
            nursery.start_soon(ask, w)
    for entry in found.values():
        entry["workers"].sort()
    return sorted(found.values(), key=lambda e: (str(e.get("listener")), str(e.get("error"))))


def _applied(keeper: Any, path: str, workers: list[Any], replies: list[dict[str, Any] | None]) -> tuple[int, Any, str | None]:
    """A command sent to every worker: its answer when every worker took it (or every worker
    refused it alike); else a 502 saying which workers took it and what the others said."""
    answers = {str(w.index): (None if r is None else r.get("status"), _json(r)) for w, r in zip(workers, replies, strict=True)}
    took = {w: body for w, (status, body) in answers.items() if status == 200}
    if took:
        _remember(keeper, path, aggregate.merge(aggregate.ONCE, took))
    statuses = {status for status, _ in answers.values()}
    if len(statuses) == 1 and None not in statuses:
        return (200, aggregate.merge(aggregate.ONCE, took), None) if took else _relay(replies[0])
    refused = "; ".join(f"#{w}: {_reason(status, body)}" for w, (status, body) in answers.items() if status != 200)
    error = f"applied by worker {', '.join(f'#{w}' for w in took) or 'none'}; not by {refused}"
    return 502, {"error": error, "per_worker": {w: body for w, (_, body) in answers.items()}}, None


def _reason(status: int | None, body: Any) -> str:
    if status is None:
        return "no answer"
    return str(body.get("error") if isinstance(body, dict) and body.get("error") else f"HTTP {status}")


def _remember(keeper: Any, path: str, done: Any) -> None:
    """A command the workers took is the keeper's too: its log level, and host enable/disable,
    which is replayed into the workers of later generations (not so for `?worker=I`)."""
    if not isinstance(done, dict):
        return
    if path == "/log_level":
        if done.get("level") in proxy_log.LEVELS:
            proxy_log.set_level(done["level"])
            keeper.logging["level"] = done["level"]  # new generations start with it too
    else:
        keeper.host_overrides[(done.get("cluster"), done.get("host"))] = bool(done.get("enabled"))


async def _ask_all(workers: list[Any], method: str, target: str, body: bytes) -> list[dict[str, Any] | None]:
    """Every worker's reply (None: no answer), asked at once."""
    replies: list[dict[str, Any] | None] = [None] * len(workers)

    async def ask(i: int) -> None:
        replies[i] = await workers[i].admin(method, target, body)

    async with trio.open_nursery() as nursery:
        for i in range(len(workers)):
            nursery.start_soon(ask, i)
    return replies


def _relay(reply: dict[str, Any] | None) -> tuple[int, Any, str | None]:
    """A worker's reply as this server's answer, its body as it is."""
    if reply is None:
        return 503, {"error": "the worker did not answer"}, None
    return int(reply["status"]), TextBody(reply.get("content_type", "application/json"), b64d(reply.get("body", ""))), reply.get("allow")


def _json(reply: dict[str, Any] | None) -> Any:
    if reply is None:
        return None
    try:
        return json.loads(b64d(reply.get("body", "")))
    except ValueError:
        return None


async def metrics_text(keeper: Any, target: str = "/metrics") -> tuple[int, bytes]:
    """The metrics listener's GET /metrics: the admin socket's answer (folded over the workers,
    plus the keeper's families; `?worker=I`: that worker's own)."""
    try:
        status, payload, _ = await ask_workers(keeper, "GET", target, b"")
    except _BadWorker as exc:
        return exc.status, f"{exc}\n".encode()
    if isinstance(payload, TextBody):
        return status, payload.body
    return status, f"{payload.get('error') if isinstance(payload, dict) else payload}\n".encode()


def _wanted(target: str) -> str | None:
    wanted = parse_qs(urlsplit(target).query).get("worker")
    return wanted[-1] if wanted else None


def _pick(workers: list[Any], wanted: str) -> Any:
    """The worker `?worker=I` names (its index, as `proxy ctl status` lists them)."""
    indices = ", ".join(str(w.index) for w in workers)
    if not wanted.isdigit():
        raise _BadWorker(400, f"worker must be a worker index ({indices}), got {wanted!r}")
    for w in workers:
        if w.index == int(wanted):
            return w
    raise _BadWorker(404, f"no worker with index {wanted} (workers: {indices})")


class _BadWorker(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def reload_status(result: dict[str, Any]) -> int:
    outcome = result.get("result")
    if outcome == "ok":
        return 200
    if outcome == "busy":
        return 409
    if result.get("stage") == "config":
        return 400
    return 500


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
            status, body = await metrics_text(self.keeper, parts[1])
            if status != 200:
                return response(status, body)
            return response(200, body, CONTENT_TYPE, head_only=parts[0] == "HEAD")
        return await super().answer(head)  # /ready and errors from the keeper's state
