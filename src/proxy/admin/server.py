"""The admin server: HTTP/1.1 with JSON bodies over the admin Unix socket.

The socket file is created with mode 0600 (a stale file from a dead process is replaced, a live
one is a start-up error, see `proxy.network.listener.bind`), and every accepted connection's peer
uid is checked with SO_PEERCRED: root, the proxy's own uid and `admin.allowed_uids` are let in,
anyone else gets a 403 and the connection closed. The server runs in the worker's root nursery;
a failing admin connection is logged and never takes the worker down.

Endpoints: GET /status /listeners /clusters /stats[?filter=S] /metrics (Prometheus text) /config /tasks,
GET /debug/profile[?seconds=N] (sampling profile, collapsed stacks; 409 while another runs),
PUT /log_level, POST /drain, POST /clusters/{name}/hosts/{addr}/(enable|disable).
`MERGE` declares how the keeper folds several workers' answers into one (proxy.admin.aggregate).
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec
import trio

import proxy
from proxy import log as proxy_log
from proxy import metrics as proxy_metrics
from proxy.config.values import Address, Duration
from proxy.admin._socket_server import HeadTooLarge, SocketServer, read_head, status_line
from proxy.admin.aggregate import ONCE, Each, Fields, Rule, summed_where
from proxy.log import get_logger
from proxy.network.listener import bind
from proxy.stats import ClusterStats, HostStats, ListenerStats

log = get_logger("admin")

MAX_HEAD = 16 * 1024
MAX_BODY = 1024 * 1024
IDLE_TIMEOUT = 60.0
TASK_CHILD_LIMIT = 50



class TextBody:
    """A handler result sent as is (not JSON), e.g. the Prometheus text of GET /metrics."""

    __slots__ = ("content_type", "body")

    def __init__(self, content_type: str, body: bytes) -> None:
        self.content_type = content_type
        self.body = body


class HttpError(Exception):
    def __init__(self, status: int, message: str, allow: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.allow = allow


# ---------------------------------------------------------------- pure helpers (unit tested)

_SECRET_WORDS = ("secret", "password", "passwd", "token", "credential")
_KEY_PART = re.compile(r"(^|[_\-.])(private_?|api_?)?keys?($|[_\-.])")
REDACTED = "[redacted]"


def is_secret_key(name: str) -> bool:
    lower = name.lower()
    return any(word in lower for word in _SECRET_WORDS) or bool(_KEY_PART.search(lower))


def redact(value: Any) -> Any:
    """A copy of a JSON-like value with every dict entry whose key names a secret replaced."""
    if isinstance(value, dict):
        return {k: (REDACTED if isinstance(k, str) and is_secret_key(k) else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def _format_duration(d: float) -> str:
    return f"{float(d):g}s"


def to_jsonable(value: Any) -> Any:
    """The config model as plain JSON values: Duration -> "Ns", Address -> its text."""
    if isinstance(value, Duration):  # before float: Duration is a float subclass
        return _format_duration(value)
    if isinstance(value, Address):
        return str(value)
    if isinstance(value, msgspec.Struct):
        return {f: to_jsonable(getattr(value, f)) for f in value.__struct_fields__}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, frozenset, set)):
        return [to_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return msgspec.to_builtins(value, enc_hook=_enc_hook)


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, Duration):
        return _format_duration(obj)
    if isinstance(obj, Address):
        return str(obj)
    return str(obj)


def config_json(config: Any) -> Any:
    return redact(to_jsonable(config))


def flatten_stats(listeners: Iterable[Any], clusters: Iterable[Any], pattern: str | None = None) -> dict[str, int]:
    """Flat counters: listener.NAME.x, cluster.NAME.x, cluster.NAME.host.ADDR.x (filtered by substring)."""
    out: dict[str, int] = {}
    for lr in listeners:
        for k, v in lr.stats.snapshot().items():
            out[f"listener.{lr.config.name}.{k}"] = v
    for c in clusters:
        for k, v in c.stats.snapshot().items():
            out[f"cluster.{c.name}.{k}"] = v
        for h in c.hosts:
            for k, v in h.stats.snapshot().items():
                out[f"cluster.{c.name}.host.{h.address}.{k}"] = v
    if pattern:
        out = {k: v for k, v in out.items() if pattern in k}
    return dict(sorted(out.items()))


def stat_adds_up(key: str) -> bool:
    """Whether a /stats key (`flatten_stats`'s names) adds up over workers: as the stats class
    it comes from declares (names hold dots, so the field is read from the end)."""
    head, _, field = key.rpartition(".")
    if head.endswith(".downstream_rq_code"):
        field = f"downstream_rq_code.{field}"
    if key.startswith("listener."):
        return ListenerStats.adds_up(field)
    if key.startswith("cluster."):
        return ClusterStats.adds_up(field) or (".host." in head and HostStats.adds_up(field))
    return False


# How the keeper folds several workers' answers into one (proxy.admin.aggregate): the numbers of
# a stats snapshot add up as its class declares; every other field (a name, an address, a weight,
# enabled, healthy, the config) is taken once, and shown per worker where the workers differ.
# /tasks is one tree per worker; /status is the keeper's own; commands answer like /config.
MERGE: dict[str, Rule] = {
    "/stats": summed_where(stat_adds_up),
    "/listeners": Each("name", Fields({"stats": summed_where(ListenerStats.adds_up)})),
    "/clusters": Each(
        "name",
        Fields({"stats": summed_where(ClusterStats.adds_up), "hosts": Each("address", Fields({"stats": summed_where(HostStats.adds_up)}))}),
    ),
    "/config": ONCE,
}


def task_tree(task: Any, limit: int = TASK_CHILD_LIMIT) -> dict[str, Any]:
    """{name, children: [...]} for a trio task and everything below it; each nursery lists at
    most `limit` children, the rest are counted in `omitted` (per-connection tasks)."""
    node: dict[str, Any] = {"name": task.name, "children": []}
    omitted = 0
    for nursery in task.child_nurseries:
        children = list(nursery.child_tasks)
        for child in children[:limit]:
            node["children"].append(task_tree(child, limit))
        omitted += max(0, len(children) - limit)
    if omitted:
        node["omitted"] = omitted
    return node


def peer_uid(sock: socket.socket) -> int:
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return uid


# ---------------------------------------------------------------- the server


class AdminServer(SocketServer):
    name = "admin"

    def __init__(self, worker: Any, path: str, allowed_uids: Iterable[int] = ()) -> None:
        self.worker = worker
        self.path = path
        self.allowed = {0, os.getuid(), *allowed_uids}
        self.sock: socket.socket | None = None
        self.started = time.monotonic()

    def bind(self) -> None:
        """Bind the socket file with mode 0600; raises BindError (stale files are replaced)."""
        old = os.umask(0o177)
        try:
            self.sock = bind(Address.parse(f"unix:{self.path}"), 64)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    def started_fields(self) -> dict[str, Any]:
        return {"socket": self.path}

    async def _connection(self, conn: socket.socket) -> None:
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(conn))
        try:
            async with stream:
                try:
                    uid = peer_uid(conn)
                except OSError:
                    uid = -1
                if uid not in self.allowed:
                    log.warning("admin.refused", uid=uid)
                    body = {"error": f"uid {uid} is not allowed on the admin socket"}
                    with trio.move_on_after(1):
                        await stream.send_all(_response(403, body, keep_alive=False))
                        # read what the client sent, so closing does not reset the connection
                        # (a Unix socket closed with unread data makes the peer's read fail)
                        await stream.receive_some(MAX_HEAD)
                    return
                await self._serve_requests(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception as exc:  # noqa: BLE001 - an admin connection must never end the worker
            log.error("admin.connection_error", exc_info=exc, error=str(exc))

    async def _serve_requests(self, stream: trio.SocketStream) -> None:
        buf = b""
        while True:
            got = None
            with trio.move_on_after(IDLE_TIMEOUT):
                try:
                    got = await read_head(stream, buf, MAX_HEAD)
                except HeadTooLarge:
                    await stream.send_all(_response(400, {"error": "request head too large"}, keep_alive=False))
                    return
            if got is None:
                return  # closed, or the idle timeout
            head, buf = got
            try:
                method, target, version, headers = _parse_head(head)
            except HttpError as exc:
                await stream.send_all(_response(exc.status, {"error": exc.message}, keep_alive=False))
                return
            if "transfer-encoding" in headers:
                await stream.send_all(_response(400, {"error": "chunked bodies are not supported; send Content-Length"}, keep_alive=False))
                return
            try:
                length = int(headers.get("content-length", "0"))
                if length < 0:
                    raise ValueError
            except ValueError:
                await stream.send_all(_response(400, {"error": "bad Content-Length"}, keep_alive=False))
                return
            if length > MAX_BODY:
                await stream.send_all(_response(413, {"error": "body too large"}, keep_alive=False))
                return
            with trio.fail_after(IDLE_TIMEOUT):
                while len(buf) < length:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buf += data
            body, buf = buf[:length], buf[length:]
            connection = headers.get("connection", "").lower()
            keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
            status, payload, allow = await self._dispatch_async(method, target, body)
            await stream.send_all(_response(status, payload, keep_alive=keep_alive, allow=allow))
            if not keep_alive:
                return

    async def _dispatch_async(self, method: str, target: str, body: bytes) -> tuple[int, Any, str | None]:
        """The async endpoints (GET /debug/profile), then everything else via `_dispatch`."""
        url = urlsplit(target)
        if (url.path.rstrip("/") or "/") != "/debug/profile":
            return self._dispatch(method, target, body)
        if method != "GET":
            return 405, {"error": f"{method} not allowed on /debug/profile"}, "GET"
        from proxy import diagnostics

        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            seconds = float(query.get("seconds", "5"))
            if not 0 < seconds <= diagnostics.MAX_PROFILE_SECONDS:
                raise ValueError
        except ValueError:
            return 400, {"error": f"seconds must be a number in (0, {diagnostics.MAX_PROFILE_SECONDS:g}]"}, None
        try:
            text = await diagnostics.profile(seconds)
        except diagnostics.ProfileBusy:
            return 409, {"error": "a profile is already running"}, None
        except Exception as exc:  # noqa: BLE001
            log.error("admin.handler_error", exc_info=exc, method=method, target=target)
            return 500, {"error": f"internal error: {exc}"}, None
        return 200, TextBody("text/plain; charset=utf-8", text.encode()), None

    def _dispatch(self, method: str, target: str, body: bytes) -> tuple[int, Any, str | None]:
        try:
            return 200, self.handle(method, target, body), None
        except HttpError as exc:
            return exc.status, {"error": exc.message}, exc.allow
        except Exception as exc:  # noqa: BLE001
            log.error("admin.handler_error", exc_info=exc, method=method, target=target)
            return 500, {"error": f"internal error: {exc}"}, None

    # ------------------------------------------------------------ endpoints

    def handle(self, method: str, target: str, body: bytes) -> Any:
        url = urlsplit(target)
        path = url.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        routes: dict[str, dict[str, Any]] = {
            "/status": {"GET": self.status},
            "/listeners": {"GET": self.listeners},
            "/clusters": {"GET": self.clusters},
            "/stats": {"GET": lambda: flatten_stats(self.worker.listeners, self.worker.clusters.values(), query.get("filter"))},
            "/metrics": {"GET": lambda: TextBody(proxy_metrics.CONTENT_TYPE, proxy_metrics.render(self.worker).encode())},
            "/config": {"GET": lambda: config_json(self.worker.config)},
            "/tasks": {"GET": lambda: task_tree(trio.lowlevel.current_root_task())},
            "/log_level": {"PUT": lambda: self.log_level(query, body)},
            "/drain": {"POST": self.drain},
        }
        if path in routes:
            handlers = routes[path]
            if method not in handlers:
                raise HttpError(405, f"{method} not allowed on {path}", allow=", ".join(handlers))
            return handlers[method]()
        match = re.fullmatch(r"/clusters/([^/]+)/hosts/([^/]+)/(enable|disable)", path)
        if match:
            if method != "POST":
                raise HttpError(405, f"{method} not allowed on {path}", allow="POST")
            return self.host_state(unquote(match.group(1)), unquote(match.group(2)), match.group(3) == "enable")
        raise HttpError(404, f"no such endpoint: {path}")

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "state": self.worker.state,
            "uptime_seconds": round(time.monotonic() - self.started, 3),
            "generation": getattr(self.worker, "generation", 1),
            "version": proxy.__version__,
            "listeners": len(self.worker.listeners),
            "log_level": proxy_log.current_level(),
            **self._certificate_errors(),
        }

    def _certificate_errors(self) -> dict[str, Any]:
        """TLS files changed on disk that could not be used (network/tls_watch.py)."""
        errors = getattr(self.worker, "certificate_errors", None)
        found = errors() if errors is not None else None
        return {} if found is None else {"certificate_errors": found}

    def listeners(self) -> list[dict[str, Any]]:
        return [
            {
                "name": lr.config.name,
                "address": lr.address,
                "protocol": lr.config.protocol,
                "filter_chains": lr.config.chain_names(),
                "stats": lr.stats.snapshot(),
            }
            for lr in self.worker.listeners
        ]

    def clusters(self) -> list[dict[str, Any]]:
        return [
            {
                "name": c.name,
                "lb": c.balancer.name,
                "hosts": [
                    {"address": str(h.address), "weight": h.weight, "enabled": h.enabled, "healthy": h.healthy, "stats": h.stats.snapshot()}
                    for h in c.hosts
                ],
                "stats": c.stats.snapshot(),
            }
            for c in self.worker.clusters.values()
        ]

    def log_level(self, query: dict[str, str], body: bytes) -> dict[str, Any]:
        level = query.get("level")
        if level is None and body:
            try:
                data = json.loads(body)
            except ValueError as exc:
                raise HttpError(400, f"body is not JSON: {exc}") from None
            level = data.get("level") if isinstance(data, dict) else None
        if level not in proxy_log.LEVELS:
            raise HttpError(400, f"level must be one of {', '.join(proxy_log.LEVELS)}, got {level!r}")
        proxy_log.set_level(level)
        log.info("admin.log_level", level=level)
        return {"level": level}

    def drain(self) -> dict[str, Any]:
        log.info("admin.drain")
        self.worker.drain()
        return {"draining": True}

    def host_state(self, cluster_name: str, address: str, enabled: bool) -> dict[str, Any]:
        cluster = self.worker.clusters.get(cluster_name)
        if cluster is None:
            raise HttpError(404, f"unknown cluster {cluster_name!r}")
        for host in cluster.hosts:
            if str(host.address) == address:
                host.enabled = enabled
                log.info("admin.host", cluster=cluster_name, host=address, enabled=enabled)
                return {"cluster": cluster_name, "host": address, "enabled": enabled}
        raise HttpError(404, f"cluster {cluster_name!r} has no host {address!r}")


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes everything
        raise HttpError(400, "bad request head") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0") or not parts[1].startswith("/"):
        raise HttpError(400, f"bad request line {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, f"bad header line {line!r}")
        key = name.lower()
        if key == "content-length" and key in headers and headers[key] != value.strip():
            raise HttpError(400, "conflicting Content-Length")
        headers[key] = value.strip()
    return parts[0], parts[1], parts[2], headers


def _response(status: int, payload: Any, *, keep_alive: bool, allow: str | None = None) -> bytes:
    if isinstance(payload, TextBody):
        body, content_type = payload.body, payload.content_type
    else:
        body, content_type = json.dumps(payload, default=str).encode() + b"\n", "application/json"
    head = [
        status_line(status),
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
    ]
    if allow:
        head.append(f"Allow: {allow}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body
