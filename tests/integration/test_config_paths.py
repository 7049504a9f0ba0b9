"""Relative paths in a config mean the config file's directory, in a real `proxy run --daemon`
started elsewhere (it runs in "/"), and still after a reload and a hot upgrade."""

from __future__ import annotations

import os
import uuid

from tests.integration.harness import connect, read_all
from tests.integration.test_daemon import _read_pid, daemons, launch, listener_address, wait_for, write_config

__all__ = ["daemons"]  # the fixture


async def get(address) -> bytes:
    stream = await connect(address)
    async with stream:
        await stream.send_all(b"GET /" + b" HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        return await read_all(stream)


async def test_a_daemon_resolves_relative_paths_against_the_config_files_directory(tmp_path, daemons):
    conf = tmp_path / "conf" / "proxy"
    conf.mkdir(parents=True)
    access_log = f"access-{uuid.uuid4().hex[:8]}.log"  # a name of its own: never meet another file in "/"
    write_config(
        conf / "proxy.yaml",
        {
            "admin": {"socket": "admin.sock"},
            "listeners": [
                {"name": "web", "address": "127.0.0.1:0", "protocol": "http1", "route": "main", "access_log": [{"path": access_log, "format": "%response_code% %path%\n"}]}
            ],
            "routes": {"main": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": "ok"}}]}]}},
        },
    )
    pid_file, log_file = tmp_path / "p.pid", tmp_path / "l.log"
    daemons.append(pid_file)
    try:
        started = await launch("run", "--daemon", "-c", "conf/proxy/proxy.yaml", "--pid-file", "p.pid", "--log-file", "l.log", cwd=tmp_path)
        assert started.returncode == 0, started.stderr
        pid = _read_pid(pid_file)
        assert pid is not None and os.readlink(f"/proc/{pid}/cwd") == "/"
        assert (conf / "admin.sock").is_socket()
        # `proxy ctl -c` reads the same config, so it finds the socket from anywhere
        status = await launch("ctl", "-c", "conf/proxy/proxy.yaml", "status", cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        for step in ("start", "reload", "upgrade"):  # workers, then a re-executed keeper, load it again
            if step != "start":
                done = await launch("ctl", "-c", "conf/proxy/proxy.yaml", step, cwd=tmp_path)
                assert done.returncode == 0, done.stderr
            assert (await get(listener_address(log_file, "web"))).startswith(b"HTTP/1.1 200 ")
        await wait_for(lambda: (conf / access_log).exists() and (conf / access_log).read_text().count("200 /\n") == 3)
    finally:
        stray = f"/{access_log}"  # where a path taken relative to the daemon's "/" would land
        if os.path.exists(stray):
            os.unlink(stray)
    assert not os.path.exists(tmp_path / access_log)
