"""What the admin socket and the metrics listener share: a listening socket served by the
traffic listeners' batched accept loop, one task per connection, closed when serving ends."""

from __future__ import annotations

import socket
from http import HTTPStatus
from typing import Any

import trio

from proxy.log import get_logger
from proxy.network.listener import accept_loop, close_listener
from proxy.stats import ListenerStats

log = get_logger("admin")


class SocketServer:
    name = "server"  # log event prefix and accept-loop name
    sock: socket.socket | None = None

    def bind(self) -> None:
        raise NotImplementedError

    def started_fields(self) -> dict[str, Any]:
        """Fields of the `<name>.started` log line."""
        return {}

    async def _connection(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self.sock is not None:
            close_listener(self.sock)

    async def serve(self) -> None:
        if self.sock is None:
            self.bind()
        assert self.sock is not None
        log.info(f"{self.name}.started", **self.started_fields())
        try:
            async with trio.open_nursery() as nursery:
                await accept_loop(self.name, self.sock, self._accepted, nursery, ListenerStats())
        finally:
            self.close()

    async def _accepted(self, conn: socket.socket, peer: Any) -> None:
        await self._connection(conn)


class HeadTooLarge(Exception):
    pass


async def read_head(stream: trio.SocketStream, buf: bytes, max_head: int) -> tuple[bytes, bytes] | None:
    """Read until a blank line ends an HTTP request head: (head, bytes after it), or None if the
    peer closed first. Raises HeadTooLarge past `max_head` bytes. The caller bounds the time."""
    while b"\r\n\r\n" not in buf:
        if len(buf) > max_head:
            raise HeadTooLarge
        data = await stream.receive_some(65536)
        if not data:
            return None
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head, rest


def status_line(status: int) -> str:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    return f"HTTP/1.1 {status} {reason}"
