"""The plain-HTTP metrics listener (`admin.metrics: host:port`): for Prometheus and load balancers.

    GET /metrics   200, the Prometheus text format (proxy.metrics)
    GET /ready     200 "ready" while the worker is serving, 503 with the state otherwise
                   (e.g. "draining" after SIGTERM), so a load balancer stops sending traffic
    anything else  404 (405 for a method other than GET/HEAD on a known path)

One request per connection (`Connection: close`). Unauthenticated and read-only: bind it to
loopback or a private interface. It is bound up front with the listeners (bind errors are start-up
errors) and served from the worker's root nursery, so it keeps answering while draining. A bad or
failing connection is logged and never takes the worker down.
"""

from __future__ import annotations

import socket
from typing import Any

import trio

from proxy import metrics
from proxy.config.values import Address
from proxy.admin._socket_server import HeadTooLarge, SocketServer, read_head, status_line
from proxy.log import get_logger
from proxy.network.listener import bind, bound_address

log = get_logger("admin")

MAX_HEAD = 8 * 1024
READ_TIMEOUT = 10.0



def response(status: int, body: bytes, content_type: str = "text/plain; charset=utf-8", *, head_only: bool = False, allow: str | None = None) -> bytes:
    lines = [
        status_line(status),
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-cache",
        "Connection: close",
    ]
    if allow:
        lines.append(f"Allow: {allow}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head_only else body)


def handle(worker: Any, head: bytes) -> bytes:
    """The complete response to one request head (without the final blank line)."""
    request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[0].isupper() or parts[2] not in ("HTTP/1.0", "HTTP/1.1") or not parts[1].startswith("/"):
        return response(400, b"bad request\n")
    method, target, _ = parts
    path = target.split("?", 1)[0]
    head_only = method == "HEAD"
    if path == "/metrics":
        if method not in ("GET", "HEAD"):
            return response(405, b"method not allowed\n", allow="GET, HEAD")
        return response(200, metrics.render(worker).encode(), metrics.CONTENT_TYPE, head_only=head_only)
    if path == "/ready":
        if method not in ("GET", "HEAD"):
            return response(405, b"method not allowed\n", allow="GET, HEAD")
        state = str(worker.state)
        if state == "serving":
            return response(200, b"ready\n", head_only=head_only)
        return response(503, f"{state}\n".encode(), head_only=head_only)
    return response(404, b"not found\n", head_only=head_only)


class MetricsServer(SocketServer):
    name = "metrics"

    def __init__(self, worker: Any, address: Address) -> None:
        self.worker = worker
        self.config_address = address
        self.sock: socket.socket | None = None
        self.address = ""  # the bound address (port 0 resolved), set by bind()

    def bind(self) -> None:
        """Raises BindError with a clear reason."""
        self.sock = bind(self.config_address, 128)
        self.address = bound_address(self.sock)

    def started_fields(self) -> dict[str, Any]:
        return {"address": self.address}

    async def answer(self, head: bytes) -> bytes:
        """The response to one request head (the keeper's metrics server asks its worker)."""
        return handle(self.worker, head)

    async def _connection(self, conn: socket.socket) -> None:
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(conn))
        try:
            async with stream:
                got = None
                with trio.move_on_after(READ_TIMEOUT):
                    try:
                        got = await read_head(stream, b"", MAX_HEAD)
                    except HeadTooLarge:
                        await stream.send_all(response(431, b"request head too large\n"))
                        return
                if got is None:
                    return  # closed or timed out: no answer
                try:
                    answer = await self.answer(got[0])
                except Exception as exc:  # noqa: BLE001 - a metrics request must never end the worker
                    log.error("metrics.handler_error", exc_info=exc, error=str(exc))
                    answer = response(500, b"internal error\n")
                with trio.move_on_after(READ_TIMEOUT):
                    await stream.send_all(answer)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception as exc:  # noqa: BLE001
            log.error("metrics.connection_error", exc_info=exc, error=str(exc))
