"""The L4 TCP proxy through a real `proxy run` process, with real loopback peers.

Every data-path test runs through both relays: splice(2) and the userspace copy.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import socket

import pytest
import trio

from proxy.network import pipes

from tests.integration.harness import (
    admin_get,
    connect,
    dead_address,
    echo_handler,
    echo_round_trip,
    pattern_chunks,
    read_all,
    running_proxy,
    start_server,
    start_unix_server,
    tcp_config,
)

RELAYS = ["splice", "copy"]


@pytest.fixture(params=RELAYS)
def relay(request: pytest.FixtureRequest) -> str:
    return request.param


async def _echo_round_trips(address: tuple[str, int] | str, rounds: int = 20) -> None:
    stream = await connect(address)
    async with stream:
        for i in range(rounds):
            message = f"ping {i} ".encode() * (i + 1)
            await stream.send_all(message)
            received = b""
            with trio.fail_after(5):
                while len(received) < len(message):
                    received += await stream.receive_some()
            assert received == message
        await stream.send_eof()
        assert await read_all(stream) == b""


async def test_echo_round_trips(nursery, tmp_path, relay):
    upstream = await start_server(nursery, echo_handler)
    async with running_proxy(tcp_config([upstream], relay=relay), tmp_path) as proxy:
        async with trio.open_nursery() as clients:
            for _ in range(10):
                clients.start_soon(_echo_round_trips, proxy.address("tcp"))


async def test_ipv6_listener_and_upstream(nursery, tmp_path, relay):
    upstream = await start_server(nursery, echo_handler, host="::1")
    async with running_proxy(tcp_config([upstream], relay=relay, listen="[::1]:0"), tmp_path) as proxy:
        assert proxy.addresses["tcp"].startswith("[::1]:")
        await _echo_round_trips(proxy.address("tcp"))


async def test_unix_listener_and_upstream(nursery, tmp_path, relay):
    upstream = await start_unix_server(nursery, echo_handler, str(tmp_path / "up.sock"))
    listen = f"unix:{tmp_path / 'proxy.sock'}"
    async with running_proxy(tcp_config([upstream], relay=relay, listen=listen), tmp_path) as proxy:
        await _echo_round_trips(proxy.address("tcp"))
    assert not (tmp_path / "proxy.sock").exists(), "the listener's socket file is removed on exit"


GIB = 1 << 30


async def test_1gib_upload_and_download_checksummed(nursery, tmp_path, relay):
    """1 GiB up to a hashing sink and 1 GiB down from a source, at the same time, both digests
    compared end to end. The upload direction also checks half-close: the sink answers with its
    digest only after it has seen the client's EOF through the proxy."""
    expected_up = hashlib.sha256()
    down_digest = trio.Event()
    source_digest = {}

    async def sink_then_digest(stream: trio.SocketStream) -> None:
        h = hashlib.sha256()
        n = 0
        async for data in stream:
            h.update(data)
            n += len(data)
        await stream.send_all(f"{n} {h.hexdigest()}".encode())
        await stream.send_eof()

    async def source(stream: trio.SocketStream) -> None:
        h = hashlib.sha256()
        for chunk in pattern_chunks(GIB):
            h.update(chunk)
            await stream.send_all(chunk)
        source_digest["value"] = h.hexdigest()
        down_digest.set()
        await stream.send_eof()

    sink_address = await start_server(nursery, sink_then_digest)
    source_address = await start_server(nursery, source)
    config = tcp_config([sink_address], relay=relay)
    config["listeners"].append({**config["listeners"][0], "name": "down", "cluster": "down"})
    config["clusters"].append({"name": "down", "hosts": [{"address": source_address}]})

    async def upload(address):
        stream = await connect(address)
        async with stream:
            for chunk in pattern_chunks(GIB):
                expected_up.update(chunk)
                await stream.send_all(chunk)
            await stream.send_eof()
            reply = (await read_all(stream, limit=120)).decode()
        assert reply == f"{GIB} {expected_up.hexdigest()}"

    async def download(address):
        stream = await connect(address)
        h = hashlib.sha256()
        n = 0
        async with stream:
            with trio.fail_after(120):
                async for data in stream:
                    h.update(data)
                    n += len(data)
        await down_digest.wait()
        assert (n, h.hexdigest()) == (GIB, source_digest["value"])

    async with running_proxy(config, tmp_path) as proxy:
        async with trio.open_nursery() as clients:
            clients.start_soon(upload, proxy.address("tcp"))
            clients.start_soon(download, proxy.address("down"))


async def test_half_close_keeps_other_direction_flowing(nursery, tmp_path, relay):
    """Client sends a request and shuts down its write side; the upstream sees EOF, and only then
    streams a response in several pieces, which the client still receives in full."""
    saw_eof = trio.Event()

    async def reply_after_eof(stream: trio.SocketStream) -> None:
        request = b""
        async for data in stream:
            request += data
        saw_eof.set()
        for i in range(5):
            await stream.send_all(b"part%d:" % i + request)
            await trio.sleep(0.05)
        await stream.send_eof()

    upstream = await start_server(nursery, reply_after_eof)
    async with running_proxy(tcp_config([upstream], relay=relay), tmp_path) as proxy:
        stream = await connect(proxy.address("tcp"))
        await stream.send_all(b"hello")
        await stream.send_eof()
        with trio.fail_after(5):
            await saw_eof.wait()
        reply = await read_all(stream)
        assert reply == b"".join(b"part%d:hello" % i for i in range(5))
        await stream.aclose()


async def test_idle_timeout_closes_both_sides_but_spares_active_ones(nursery, tmp_path, relay):
    upstream_closed = trio.Event()

    async def hold(stream: trio.SocketStream) -> None:
        async for data in stream:
            await stream.send_all(data)
        upstream_closed.set()

    upstream = await start_server(nursery, hold)
    async with running_proxy(tcp_config([upstream], relay=relay, idle_timeout="600ms"), tmp_path) as proxy:
        idle = await connect(proxy.address("tcp"))
        busy = await connect(proxy.address("tcp"))
        start = trio.current_time()
        # The busy connection talks every 200 ms for 1.5 s, longer than the idle timeout.
        for _ in range(8):
            await busy.send_all(b"x")
            with trio.fail_after(2):
                assert await busy.receive_some() == b"x"
            await trio.sleep(0.2)
        # The idle one was closed by the proxy: EOF on the client, and the upstream saw its end.
        assert await read_all(idle, limit=1) == b""
        with trio.fail_after(2):
            await upstream_closed.wait()
        assert trio.current_time() - start >= 0.6
        await busy.send_all(b"still here")
        with trio.fail_after(2):
            assert await busy.receive_some() == b"still here"
        await idle.aclose()
        await busy.aclose()


async def test_dead_host_is_skipped(nursery, tmp_path, relay):
    upstream = await start_server(nursery, echo_handler)
    config = tcp_config([dead_address(), upstream, dead_address()], relay=relay)
    async with running_proxy(config, tmp_path) as proxy:
        for _ in range(6):  # round robin lands on each dead host in turn; every connection works
            await _echo_round_trips(proxy.address("tcp"), rounds=2)
        assert "upstream.connect_failed" in proxy.log()


async def test_connect_timeout_moves_on(nursery, tmp_path, relay):
    """A host whose accept queue is full drops SYNs (no RST): the connect times out after the
    cluster's connect_timeout and the next host serves the connection."""
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    fillers = []
    for _ in range(4):  # fill the accept queue; later SYNs get no answer
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(blackhole.getsockname())
        fillers.append(s)
    await trio.sleep(0.1)
    try:
        upstream = await start_server(nursery, echo_handler)
        config = tcp_config([f"127.0.0.1:{blackhole.getsockname()[1]}", upstream], relay=relay)
        async with running_proxy(config, tmp_path) as proxy:
            start = trio.current_time()
            await _echo_round_trips(proxy.address("tcp"), rounds=1)
            await _echo_round_trips(proxy.address("tcp"), rounds=1)
            assert trio.current_time() - start >= 0.45  # one attempt waited out the 500 ms timeout
            assert "reason=timeout" in proxy.log()
    finally:
        for s in fillers:
            s.close()
        blackhole.close()


async def test_all_hosts_dead_closes_downstream_and_keeps_serving(nursery, tmp_path, relay):
    config = tcp_config([dead_address(), dead_address()], relay=relay)
    async with running_proxy(config, tmp_path) as proxy:
        for _ in range(3):
            stream = await connect(proxy.address("tcp"))
            try:
                assert await read_all(stream, limit=5) == b""
            except trio.BrokenResourceError:
                pass  # a reset is also a clean "no"
            await stream.aclose()
        assert "upstream.all_attempts_failed" in proxy.log()
        assert proxy.proc.poll() is None


async def test_upstream_reset_resets_downstream(nursery, tmp_path, relay):
    async def reset_after_greeting(stream: trio.SocketStream) -> None:
        await stream.send_all(b"bye")
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        await trio.sleep(0.1)
        await stream.aclose()

    upstream = await start_server(nursery, reset_after_greeting)
    async with running_proxy(tcp_config([upstream], relay=relay), tmp_path) as proxy:
        stream = await connect(proxy.address("tcp"))
        got = b""
        with pytest.raises(trio.BrokenResourceError), trio.fail_after(5):
            while True:
                data = await stream.receive_some()
                got += data
                if not data:
                    break  # a FIN instead of a RST would end here and fail the raises()
        assert got == b"bye"
        await stream.aclose()


async def test_downstream_reset_closes_upstream(nursery, tmp_path, relay):
    upstream_done = trio.Event()

    async def wait_for_end(stream: trio.SocketStream) -> None:
        try:
            async for _ in stream:
                pass
        finally:
            upstream_done.set()

    upstream = await start_server(nursery, wait_for_end)
    async with running_proxy(tcp_config([upstream], relay=relay), tmp_path) as proxy:
        before = proxy.fd_count("socket")
        sock = trio.socket.socket()
        await sock.connect(proxy.address("tcp"))
        await sock.send(b"hello")
        await trio.sleep(0.1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
        with trio.fail_after(5):
            await upstream_done.wait()
        await _wait_fd_count(proxy, before)


async def test_client_close_then_upstream_write_closes_both(nursery, tmp_path, relay):
    """The client closes fully (not a half-close); the upstream keeps writing. The proxy must not
    keep a half-open pair: it sees the client's RST on write and closes the upstream too."""
    upstream_done = trio.Event()

    async def chatter(stream: trio.SocketStream) -> None:
        try:
            with trio.fail_after(10):
                while True:
                    await stream.send_all(b"tick" * 1000)
                    await trio.sleep(0.02)
        finally:
            upstream_done.set()

    upstream = await start_server(nursery, chatter)
    async with running_proxy(tcp_config([upstream], relay=relay), tmp_path) as proxy:
        before = proxy.fd_count("socket")
        sock = trio.socket.socket()
        await sock.connect(proxy.address("tcp"))
        assert await sock.recv(100)
        sock.close()  # a full close: the proxy's next write to it draws a RST
        with trio.fail_after(5):
            await upstream_done.wait()
        await _wait_fd_count(proxy, before)


async def test_max_connections_overflow(nursery, tmp_path, relay):
    upstream = await start_server(nursery, echo_handler)
    async with running_proxy(tcp_config([upstream], relay=relay, max_connections=2), tmp_path) as proxy:
        a = await connect(proxy.address("tcp"))
        b = await connect(proxy.address("tcp"))
        for s in (a, b):
            await s.send_all(b"1")
            assert await s.receive_some() == b"1"
        c = await connect(proxy.address("tcp"))
        try:
            assert await read_all(c, limit=5) == b""  # closed at once
        except trio.BrokenResourceError:
            pass
        await a.aclose()
        await trio.sleep(0.2)
        await _echo_round_trips(proxy.address("tcp"), rounds=1)  # a slot is free again
        await b.aclose()
        await c.aclose()


async def _settled_socket_count(proxy) -> int:
    """The proxy's socket count once it has stayed put for 0.3 s (at most 5 s)."""
    last, steady = proxy.fd_count("socket"), 0
    with trio.move_on_after(5):
        while steady < 6:
            await trio.sleep(0.05)
            now = proxy.fd_count("socket")
            steady = steady + 1 if now == last else 0
            last = now
    return last


async def _wait_fd_count(proxy, expected: int, timeout: float = 5.0) -> None:
    """Sockets back to `expected`; splice pipes only as many as the worker's pool keeps."""
    with trio.move_on_after(timeout):
        while proxy.fd_count("socket") > expected:
            await trio.sleep(0.05)
    assert proxy.fd_count("socket") == expected, os.listdir(f"/proc/{proxy.pid}/fd")
    assert proxy.fd_count("pipe") <= 2 * pipes.DEFAULT_KEEP + 16  # + the keeper's own pipes


async def test_no_fd_leak_after_10000_connections(nursery, tmp_path, relay):
    upstream = await start_server(nursery, echo_handler)
    async with running_proxy(tcp_config([upstream], relay=relay), tmp_path) as proxy:
        address = proxy.address("tcp")
        await _echo_round_trips(address, rounds=1)  # warm up lazily opened fds
        before = await _settled_socket_count(proxy)  # the warm-up's relay may still be closing
        done = 0

        async def client_loop(n: int) -> None:
            nonlocal done
            for _ in range(n):
                stream = await connect(address)
                await stream.send_all(b"x")
                assert await stream.receive_some() == b"x"
                await stream.send_eof()
                assert await read_all(stream) == b""
                await stream.aclose()
                done += 1

        with trio.fail_after(240):
            async with trio.open_nursery() as clients:
                for _ in range(50):
                    clients.start_soon(client_loop, 200)
        assert done == 10_000
        await _wait_fd_count(proxy, before)


async def test_sigterm_drains_running_transfer_then_exits_0(nursery, tmp_path, relay):
    """SIGTERM: the listener closes at once (new connects refused) while a running transfer
    completes; then the process exits 0, well within drain_timeout."""

    async def slow_source(stream: trio.SocketStream) -> None:
        for _ in range(20):
            await stream.send_all(b"y" * 10_000)
            await trio.sleep(0.05)
        await stream.send_eof()

    upstream = await start_server(nursery, slow_source)
    async with running_proxy(tcp_config([upstream], relay=relay, drain_timeout="10s"), tmp_path) as proxy:
        address = proxy.address("tcp")
        stream = await connect(address)
        first = await stream.receive_some()
        proxy.signal(signal.SIGTERM)
        await trio.sleep(0.2)
        with pytest.raises(OSError) as refused:
            await connect(address)
        assert refused.value.errno in (errno.ECONNREFUSED, None) or "refused" in str(refused.value).lower()
        rest = await read_all(stream, limit=10)
        assert len(first) + len(rest) == 200_000
        await stream.aclose()  # the last open direction ends: nothing left to drain
        start = trio.current_time()
        assert await proxy.wait(timeout=5) == 0
        assert trio.current_time() - start < 2
        assert "event=draining" in proxy.log()


async def test_sigterm_drain_timeout_cuts_long_connections(nursery, tmp_path, relay):
    upstream = await start_server(nursery, echo_handler)
    async with running_proxy(tcp_config([upstream], relay=relay, drain_timeout="1s"), tmp_path) as proxy:
        stream = await connect(proxy.address("tcp"))
        await stream.send_all(b"a")
        assert await stream.receive_some() == b"a"
        start = trio.current_time()
        proxy.signal(signal.SIGTERM)
        assert await read_all(stream, limit=5) == b""  # closed by the proxy at the deadline
        assert await proxy.wait(timeout=5) == 0
        elapsed = trio.current_time() - start
        assert 0.9 <= elapsed < 3, elapsed
        assert "drain.timeout" in proxy.log()
        await stream.aclose()


async def test_sigint_stops_fast(nursery, tmp_path):
    upstream = await start_server(nursery, echo_handler)
    async with running_proxy(tcp_config([upstream], drain_timeout="30s"), tmp_path) as proxy:
        stream = await connect(proxy.address("tcp"))
        await stream.send_all(b"a")
        assert await stream.receive_some() == b"a"
        proxy.signal(signal.SIGINT)
        assert await proxy.wait(timeout=3) == 0
        await stream.aclose()


async def test_5000_idle_pairs_fit_a_20000_fd_limit(nursery, tmp_path):
    """A splice relay takes its pipes from the worker's pool only while bytes move: 5,000 pairs
    that each moved bytes both ways and went idle hold ~2 fds each, not 6 (which would need
    30,000 fds, over the limit)."""
    upstream = await start_server(nursery, echo_handler)
    admin = str(tmp_path / "admin.sock")
    config = tcp_config([upstream], relay="splice", backlog=4096)
    config["admin"] = {"socket": admin}
    pairs = 5000
    async with running_proxy(config, tmp_path, nofile=20_000) as proxy:
        address = proxy.address("tcp")
        streams: list[trio.SocketStream] = []

        async def open_and_echo(n: int) -> None:
            for _ in range(n):
                stream = await connect(address)
                streams.append(stream)
                await stream.send_all(b"x")
                assert await stream.receive_some() == b"x"

        with trio.fail_after(120):
            async with trio.open_nursery() as clients:
                for _ in range(50):
                    clients.start_soon(open_and_echo, pairs // 50)
        assert len(streams) == pairs
        sockets, pipe_fds = proxy.fd_count("socket"), proxy.fd_count("pipe")
        assert sockets >= 2 * pairs
        assert pipe_fds <= 2 * pipes.DEFAULT_KEEP + 16, pipe_fds
        assert sockets + pipe_fds < 20_000 * 0.6

        async def echo_again(batch: list[trio.SocketStream]) -> None:  # every pair still relays
            for stream in batch:
                await stream.send_all(b"y")
                assert await stream.receive_some() == b"y"

        with trio.fail_after(60):
            async with trio.open_nursery() as clients:
                for i in range(50):
                    clients.start_soon(echo_again, streams[i::50])
        await trio.sleep(1.0)  # idle again: every pair parks (no task; network/parking.py)
        counters = json.loads(await admin_get(admin, "/stats"))
        assert counters["listener.tcp.downstream_cx_active"] == pairs
        assert counters["listener.tcp.downstream_cx_parked"] == pairs
        assert counters["listener.tcp.downstream_cx_error"] == 0
        assert counters["listener.tcp.downstream_cx_no_upstream"] == 0
        for stream in streams:
            await stream.aclose()


async def test_out_of_fds_waits_then_closes_cleanly_counts_and_logs_once(nursery, tmp_path):
    """Under a tiny RLIMIT_NOFILE the worker runs out of fds, either on accept (the client then
    waits in the backlog: accepting pauses) or for a connection's upstream socket (it waits for
    an fd within the connect timeout, then is closed with a FIN, nothing dialled). A pair takes
    2 fds, so limits of 60 and 61 run out each way once. Everyone who waited is served once
    fds come back; no traceback; one counted log line per interval."""
    accepted_upstream = 0

    async def counting_echo(stream: trio.SocketStream) -> None:
        nonlocal accepted_upstream
        accepted_upstream += 1
        await echo_handler(stream)

    upstream = await start_server(nursery, counting_echo)
    seen = set()
    for nofile in (60, 61):
        workdir = tmp_path / str(nofile)
        workdir.mkdir()
        admin = str(workdir / "admin.sock")
        config = tcp_config([upstream], relay="splice")
        config["admin"] = {"socket": admin}
        config["clusters"][0]["connect_timeout"] = "1s"
        accepted_upstream = 0
        async with running_proxy(config, workdir, nofile=nofile) as proxy:
            address = proxy.address("tcp")
            held: list[trio.SocketStream] = []
            starved = None
            with trio.fail_after(30):
                while starved is None:  # open and hold pairs until one gets no answer
                    stream = await connect(address)
                    await stream.send_all(b"x")
                    with trio.move_on_after(0.3):
                        assert await stream.receive_some() == b"x"
                        held.append(stream)
                        continue
                    starved = stream
            assert len(held) >= 5
            waiting = []
            for _ in range(3):
                stream = await connect(address)
                await stream.send_all(b"x")
                waiting.append(stream)
            path = "backlog"  # accept ran out: it waits there
            with trio.move_on_after(2):  # past the connect timeout
                data = await starved.receive_some()
                path = "closed"  # accepted, then no fd for its upstream socket
            seen.add(path)
            if path == "closed":
                assert data == b""  # a clean close, not a reset
                assert accepted_upstream == len(held)  # nothing was dialled for it
            else:
                waiting.insert(0, starved)  # served below
            for stream in held:  # fds come back ...
                await stream.aclose()
            with trio.fail_after(10):  # ... and the clients that waited are served
                for stream in waiting:
                    assert await stream.receive_some() == b"x"
                    await stream.aclose()
            assert await echo_round_trip(address, b"after") == b"after"
            counters = json.loads(await admin_get(admin, "/stats"))
            assert counters["listener.tcp.downstream_cx_error"] == 0
            log_text = proxy.log()
            assert "Traceback" not in log_text
            lines = [line for line in log_text.splitlines() if "worker.out_of_fds" in line]
            assert 1 <= len(lines) <= 2, lines  # once per 10 s interval, with the count
            assert "refusals=1" in lines[0]
            if path == "closed":
                assert counters["listener.tcp.downstream_cx_fd_exhausted"] >= 1
    assert seen == {"closed", "backlog"}
