"""A TCP relay whose upstream side is TLS (a `protocol: tcp` listener to a cluster with `tls`):
plaintext from the client, records to the host, copied (never spliced: the bytes must be
sealed and opened).

The same semantics as `relay.Relay` (Envoy's tcp_proxy): EOF one way becomes a half-close the
other way (towards the host: close_notify, then the TCP half-close); an error on either side
resets both; no bytes either way for `idle_timeout` closes both. It never parks and never moves
in a hot upgrade (OpenSSL holds the session's state): `stop` declines, and the connection
drains here. It reports through `on_close` with the attributes `relay.count_downstream_close`
and the TCP proxy read (`outcome`, `error`, `rx_bytes`, `tx_bytes`).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import trio

from proxy.http.stream_tunnel import run_both
from proxy.network import relay as relay_mod
from proxy.network.sockio import ConnectionLost, SockIO


class TlsRelay:
    __slots__ = ("down", "up", "idle_timeout", "on_close", "rx_bytes", "tx_bytes", "outcome", "error", "pipe_fallbacks", "_scope", "_early")

    def __init__(self, down: socket.socket, up: SockIO, *, idle_timeout: float | None, on_close: Callable[[Any], None], early: bytes = b"") -> None:
        self.down = down
        self.up = up  # a TlsIO
        self.idle_timeout = idle_timeout
        self.on_close = on_close
        self.rx_bytes = 0  # downstream -> upstream (plaintext)
        self.tx_bytes = 0  # upstream -> downstream
        self.outcome = relay_mod.CLOSED
        self.error: BaseException | None = None
        self.pipe_fallbacks = 0  # (none: no splice here; read by count_downstream_close)
        self._scope: trio.CancelScope | None = None
        self._early = early  # plaintext that came with the handshake (a server that speaks first)

    def stop(self, handover: Any) -> bool:
        """A hot upgrade: declined, the connection stays and drains here."""
        return False

    def _touch(self) -> None:
        if self.idle_timeout is not None and self._scope is not None:
            self._scope.deadline = trio.current_time() + self.idle_timeout

    async def run(self, nursery: trio.Nursery) -> None:
        """Relay until both directions end (in the caller's task: this relay never leaves it)."""
        down = SockIO(self.down)
        up = self.up
        try:
            with trio.CancelScope() as self._scope:
                self._touch()
                if self._early:
                    await down.send_all(self._early)
                    self.tx_bytes += len(self._early)
                await run_both(lambda: self._copy(up, down, False), lambda: self._copy(down, up, True))
            if self._scope.cancelled_caught:
                self.outcome = relay_mod.IDLE_TIMEOUT
        except ConnectionLost as lost:
            self.outcome = relay_mod.RESET
            self.error = lost
            try:
                self.down.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, relay_mod._LINGER_RST)
            except OSError:
                pass
        except trio.Cancelled:
            self.outcome = relay_mod.CANCELLED
            raise
        except Exception as exc:
            self.outcome = relay_mod.ERROR
            self.error = exc
        finally:
            up.close()  # (close_notify when nothing is queued)
            down.close()
            self.on_close(self)

    async def _copy(self, src: SockIO, dst: SockIO, upstream_bound: bool) -> None:
        while True:
            data = await src.recv()
            self._touch()
            if not data:
                dst.shutdown_write()  # (towards TLS: close_notify first)
                return
            if upstream_bound:
                self.rx_bytes += len(data)
            else:
                self.tx_bytes += len(data)
            await dst.send_all(data)
