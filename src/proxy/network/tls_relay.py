"""A TCP relay with TLS on either side or both: a `protocol: tcp` listener that terminates the
client's TLS, or whose cluster has `tls`, or both. Copied through the two sides' SockIO (a
TlsIO opens and seals), never spliced.

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
    __slots__ = ("down", "up", "idle_timeout", "on_close", "rx_bytes", "tx_bytes", "outcome", "error", "pipe_fallbacks", "_scope", "_pending")

    def __init__(
        self,
        down: SockIO,
        up: SockIO,
        *,
        idle_timeout: float | None,
        on_close: Callable[[Any], None],
        pending: tuple[bytes, bytes] = (b"", b""),
    ) -> None:
        self.down = down  # a SockIO, or a TlsIO when the client's TLS ends here
        self.up = up  # a SockIO, or a TlsIO to a cluster with tls
        self.idle_timeout = idle_timeout
        self.on_close = on_close
        self.rx_bytes = 0  # downstream -> upstream (plaintext)
        self.tx_bytes = 0  # upstream -> downstream
        self.outcome = relay_mod.CLOSED
        self.error: BaseException | None = None
        self.pipe_fallbacks = 0  # (none: no splice here; read by count_downstream_close)
        self._scope: trio.CancelScope | None = None
        # Plaintext to go first (as Relay's `pending`): what came right behind a handshake
        # (a client's first bytes; a server that speaks first) or what an inspection read.
        self._pending = pending

    def stop(self, handover: Any) -> bool:
        """A hot upgrade: declined, the connection stays and drains here."""
        return False

    def _touch(self) -> None:
        if self.idle_timeout is not None and self._scope is not None:
            self._scope.deadline = trio.current_time() + self.idle_timeout

    async def run(self, nursery: trio.Nursery) -> None:
        """Relay until both directions end (in the caller's task: this relay never leaves it)."""
        down = self.down
        up = self.up
        to_up, to_down = self._pending
        try:
            with trio.CancelScope() as self._scope:
                self._touch()
                if to_up:
                    await up.send_all(to_up)
                    self.rx_bytes += len(to_up)
                if to_down:
                    await down.send_all(to_down)
                    self.tx_bytes += len(to_down)
                await run_both(lambda: self._copy(up, down, False), lambda: self._copy(down, up, True))
            if self._scope.cancelled_caught:
                self.outcome = relay_mod.IDLE_TIMEOUT
        except ConnectionLost as lost:
            self.outcome = relay_mod.RESET
            self.error = lost
            try:
                self.down.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, relay_mod._LINGER_RST)
            except OSError:
                pass
        except trio.Cancelled:
            self.outcome = relay_mod.CANCELLED
            raise
        except Exception as exc:
            self.outcome = relay_mod.ERROR
            self.error = exc
        finally:
            up.close()  # (a TlsIO: close_notify when nothing is queued)
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
