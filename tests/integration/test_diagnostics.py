"""Diagnostics against a real `proxy run`: a connections threshold writes exactly one dump (with
the task tree and stats) per cooldown, and GET /debug/profile answers collapsed stacks."""

from __future__ import annotations

import trio

from tests.integration.harness import connect, echo_handler, running_proxy, start_server, tcp_config


async def _admin_get(sock: str, target: str) -> tuple[int, dict[str, str], bytes]:
    stream = await trio.open_unix_socket(sock)
    async with stream:
        await stream.send_all(f"GET {target} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n".encode())
        data = b""
        with trio.fail_after(30):
            async for chunk in stream:
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


async def test_connections_threshold_writes_one_dump_and_profile_works(nursery, tmp_path):
    upstream = await start_server(nursery, echo_handler)
    diag = tmp_path / "diag"
    sock = str(tmp_path / "admin.sock")
    config = tcp_config([upstream])
    config["admin"] = {"socket": sock}
    config["diagnostics"] = {"directory": str(diag), "interval": "200ms", "connections": 2, "cooldown": "60s", "profile_seconds": 0.2}
    async with running_proxy(config, tmp_path) as proxy:
        streams = []
        for _ in range(3):
            stream = await connect(proxy.address("tcp"))
            await stream.send_all(b"ping")
            assert await stream.receive_some(10) == b"ping"
            streams.append(stream)
        try:
            with trio.fail_after(10):
                while not (diag.exists() and list(diag.glob("*-connections.txt"))):
                    await trio.sleep(0.05)
            await trio.sleep(1.5)  # several more samples over the threshold: still in cooldown
            files = sorted(p.name for p in diag.iterdir())
            assert len(files) == 1 and files[0].endswith("-connections.txt"), files
            text = (diag / files[0]).read_text()
            assert text.startswith("reason: connections ")
            assert "\n== tasks\n<init>\n" in text and "proxy.server.Worker.run" in text
            assert "proxy.diagnostics.Watcher.run" in text and "proxy.network.tcp_proxy.TcpProxy.handle" in text
            assert "== stats" in text and "listener.tcp.downstream_cx_total" in text
            assert "cluster.up.upstream_cx_total" in text
            assert "== profile (0.2s, collapsed stacks)" in text
            assert f"event=diagnostics.dump path={diag / files[0]}" in proxy.log()
        finally:
            for stream in streams:
                await stream.aclose()

        status, headers, body = await _admin_get(sock, "/debug/profile?seconds=1")
        assert status == 200, body
        assert headers["content-type"].startswith("text/plain")
        lines = body.decode().splitlines()
        assert lines and any("trio/" in line for line in lines)
        assert all(line.rsplit(" ", 1)[1].isdigit() for line in lines)

        async def two_at_once():
            results = []

            async def one():
                results.append((await _admin_get(sock, "/debug/profile?seconds=1"))[0])

            async with trio.open_nursery() as n:
                n.start_soon(one)
                await trio.sleep(0.3)
                n.start_soon(one)
            return sorted(results)

        assert await two_at_once() == [200, 409]
        assert (await _admin_get(sock, "/debug/profile?seconds=61"))[0] == 400
        assert (await _admin_get(sock, "/debug/profile?seconds=abc"))[0] == 400
