"""Test harness: a real `proxy run` subprocess, and small real upstream servers on loopback.

`ProxyProcess` writes a config, starts `python -m proxy run` with its log in a file, waits for
the `event=ready` line and reads each listener's bound address from the `listener.started`
lines (tests bind port 0, so there are no port clashes). It is stopped by its pid only.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import yaml

_STARTED = re.compile(r"event=listener\.started listener=(\S+) address=(\S+)")
_READY = re.compile(r'event=keeper\.ready|"event": "keeper\.ready"')  # the keeper, once every worker serves (text or JSON logs)


class ProxyProcess:
    def __init__(
        self,
        config: dict[str, Any],
        workdir: Path,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        nofile: int | None = None,
    ) -> None:
        self.config_path = workdir / "proxy.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = workdir / "proxy.log"
        self.extra_args = extra_args
        self.env = env  # extra environment variables for the proxy (e.g. PROXY_CHAOS_FILE)
        self.nofile = nofile  # RLIMIT_NOFILE for the proxy (its keeper and workers)
        self.proc: subprocess.Popen[bytes] | None = None
        self.addresses: dict[str, str] = {}

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    async def wait_log(self, text: str, timeout: float = 5.0) -> str:
        """The log once it holds `text` (a line may land just after the client saw its answer:
        the access log is written once the response is queued, not before)."""
        with trio.move_on_after(timeout):
            while text not in self.log():
                await trio.sleep(0.02)
        return self.log()

    async def start(self, timeout: float = 15.0) -> None:
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "run", "-c", str(self.config_path), *self.extra_args],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env} if self.env else None,
            preexec_fn=self._limit_fds if self.nofile else None,
        )
        with trio.fail_after(timeout):
            while not _READY.search(self.log()):
                if self.proc.poll() is not None:
                    raise AssertionError(f"proxy exited with {self.proc.returncode} before ready:\n{self.log()}")
                await trio.sleep(0.02)
        self.addresses = dict(_STARTED.findall(self.log()))

    def _limit_fds(self) -> None:
        assert self.nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def address(self, listener: str) -> tuple[str, int] | str:
        """The bound address of `listener` as a socket address."""
        text = self.addresses[listener]
        if text.startswith("unix:"):
            return text[5:]
        host, _, port = text.rpartition(":")
        return host.strip("[]"), int(port)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None
        with trio.fail_after(timeout):
            while self.proc.poll() is None:
                await trio.sleep(0.02)
        return self.proc.returncode

    def worker_pids(self) -> list[int]:
        """The keeper's children: its worker processes."""
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                return [int(p) for p in f.read().split()]
        except OSError:
            return []

    def fd_count(self, kind: str | None = None) -> int:
        """Open fds of the keeper and its workers (the connections live in the workers); with
        `kind` ("socket", "pipe", ...), only those whose /proc link names that kind."""
        total = 0
        for pid in [self.pid, *self.worker_pids()]:
            directory = f"/proc/{pid}/fd"
            try:
                fds = os.listdir(directory)
                if kind is not None:
                    fds = [fd for fd in fds if _fd_kind(f"{directory}/{fd}") == kind]
            except OSError:
                continue
            total += len(fds)
        return total

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast stop; still cleans up its socket files
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc is not None:
            self._log_file.close()


@asynccontextmanager
async def running_proxy(
    config: dict[str, Any], workdir: Path, *extra_args: str, env: dict[str, str] | None = None, nofile: int | None = None
) -> AsyncIterator[ProxyProcess]:
    proxy = ProxyProcess(config, workdir, extra_args, env, nofile)
    try:
        await proxy.start()
        yield proxy
    finally:
        proxy.stop()


def tcp_config(upstreams: list[str], *, relay: str = "auto", listen: str = "127.0.0.1:0", **listener: Any) -> dict[str, Any]:
    """A one-listener tcp config in front of `upstreams` (config address strings)."""
    return {
        "logging": {"level": "info"},
        "runtime": {"drain_timeout": listener.pop("drain_timeout", "5s")},
        "listeners": [{"name": "tcp", "address": listen, "protocol": "tcp", "cluster": "up", "relay": relay, **listener}],
        "clusters": [
            {"name": "up", "connect_timeout": "500ms", "hosts": [{"address": a} for a in upstreams]},
        ],
    }


# ---------------------------------------------------------------- upstream servers (trio)

ServerHandler = Callable[[trio.SocketStream], Awaitable[None]]


async def start_server(nursery: trio.Nursery, handler: ServerHandler, host: str = "127.0.0.1") -> str:
    """Serve `handler` on an ephemeral loopback port; return its address in config notation."""
    listeners = await nursery.start(functools.partial(trio.serve_tcp, _guarded(handler), 0, host=host))
    name = listeners[0].socket.getsockname()
    return f"[{name[0]}]:{name[1]}" if ":" in name[0] else f"{name[0]}:{name[1]}"


async def start_unix_server(nursery: trio.Nursery, handler: ServerHandler, path: str) -> str:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(128)
    listener = trio.SocketListener(sock)
    await nursery.start(trio.serve_listeners, _guarded(handler), [listener])
    return f"unix:{path}"


def _guarded(handler: ServerHandler) -> ServerHandler:
    """An upstream's failing connection must not end the test's server (trio's serve_listeners
    would cancel everything); errors such as resets are part of several tests."""

    async def run(stream: trio.SocketStream) -> None:
        try:
            await handler(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    return run


async def echo_handler(stream: trio.SocketStream) -> None:
    """Echo until EOF, then half-close back."""
    async for data in stream:
        await stream.send_all(data)
    await stream.send_eof()


def dead_address() -> str:
    """A loopback port with nothing listening (connect refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


# ---------------------------------------------------------------- clients


async def connect(address: tuple[str, int] | str) -> trio.SocketStream:
    if isinstance(address, str):
        return await trio.open_unix_socket(address)
    return await trio.open_tcp_stream(*address)


async def echo_round_trip(address: tuple[str, int] | str, message: bytes = b"hello") -> bytes:
    """Send `message` through the proxy to an echo upstream, half-close, return what came back."""
    stream = await connect(address)
    async with stream:
        await stream.send_all(message)
        await stream.send_eof()
        return await read_all(stream)


async def admin_get(admin: str, target: str) -> bytes:
    """GET `target` from the admin socket at path `admin`; the body of its 200."""
    stream = await connect(admin)
    async with stream:
        await stream.send_all(f"GET {target} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n".encode())
        raw = await read_all(stream)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), raw
    return body


def promtool_check(text: bytes | str) -> subprocess.CompletedProcess[bytes]:
    """`promtool check metrics` on `text`; skipped where promtool is missing, but not in CI
    (scripts/setup installs Debian's prometheus there)."""
    import pytest

    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool not installed")
        pytest.skip("promtool not installed (scripts/setup installs Debian's prometheus)")
    data = text.encode() if isinstance(text, str) else text
    return subprocess.run([promtool, "check", "metrics"], input=data, capture_output=True, timeout=30)


async def read_all(stream: trio.abc.ReceiveStream, limit: float = 10.0) -> bytes:
    chunks = []
    with trio.fail_after(limit):
        async for data in stream:
            chunks.append(data)
    return b"".join(chunks)


def pattern_chunks(total: int, chunk: int = 1 << 20) -> Any:
    """`total` bytes of a random 1 MiB block, each chunk stamped with its index so a lost,
    repeated or reordered chunk changes the digest."""
    block = bytearray(os.urandom(chunk))
    sent = 0
    index = 0
    while sent < total:
        size = min(chunk, total - sent)
        block[:8] = index.to_bytes(8, "big")
        yield bytes(block[:size])
        sent += size
        index += 1


def sha256_of_chunks(chunks: Any) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    for c in chunks:
        h.update(c)
        n += len(c)
    return h.hexdigest(), n


def _fd_kind(link: str) -> str:
    """"socket" for socket:[123], "pipe" for pipe:[456], "file" for a path; "" if it closed."""
    try:
        target = os.readlink(link)
    except OSError:
        return ""
    return target.split(":", 1)[0] if ":[" in target else "file"
