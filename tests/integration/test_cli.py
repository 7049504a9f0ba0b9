"""`proxy check`, `proxy run` refusing bad configs, and `proxy stop`, as real subprocesses."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import trio

from tests.integration.harness import echo_handler, running_proxy, start_server, tcp_config

BROKEN = textwrap.dedent(
    """\
    runtime:
      drain_timeout: 5 parsecs
    listeners:
      - name: web
        address: 127.0.0.1:99999
        protocol: tcp
        cluster: db
    clusters:
      - name: api
        conect_timeout: 1s
        hosts:
          - address: 127.0.0.1:8000
            weight: 0
    """
)
EXPECTED = [
    "broken.yaml:2: runtime.drain_timeout: invalid duration '5 parsecs'",
    "broken.yaml:5: listeners[0].address: invalid address '127.0.0.1:99999': port 99999 is out of range",
    "broken.yaml:7: listeners[0].cluster: unknown cluster 'db'",
    "broken.yaml:10: clusters[0].conect_timeout: unknown key 'conect_timeout'; did you mean 'connect_timeout'?",
    "broken.yaml:13: clusters[0].hosts[0].weight:",
]


def proxy_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True, timeout=timeout)


def test_check_reports_every_error_with_path_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    result = proxy_cli("check", "-c", str(path))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    for expected in EXPECTED:
        assert any(expected in line for line in lines), (expected, result.stderr)
    assert lines[-1].endswith("5 errors")


def test_check_accepts_the_bundled_default_config():
    result = proxy_cli("check", "-c", "config/proxy.yaml")
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_check_and_run_count_in_words(tmp_path):
    path = tmp_path / "one.yaml"
    path.write_text(
        "listeners: [{name: a, address: '127.0.0.1:0', protocol: tcp, cluster: c}]\n"
        "clusters: [{name: c, hosts: [{address: '127.0.0.1:1'}]}]\n"
    )
    result = proxy_cli("check", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{path}: ok (1 listener, 1 cluster)\n"
    path.write_text(path.read_text().replace("cluster: c}", "cluster: d}"))
    result = proxy_cli("check", "-c", str(path))
    assert result.returncode == 1 and result.stderr.splitlines()[-1] == f"{path}: 1 error", result.stderr
    result = proxy_cli("run", "-c", str(path))
    assert result.returncode == 1 and result.stderr.splitlines()[-1] == f"proxy: refusing to start: {path} has 1 error", result.stderr


def test_version_says_which_build_runs():
    import proxy
    from proxy import native

    result = proxy_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"proxy {proxy.__version__} (Python ")
    assert f"build: {'compiled' if native.NATIVE else 'python'}" in result.stdout
    forced = subprocess.run(
        [sys.executable, "-m", "proxy", "--version"], capture_output=True, text=True, timeout=20, env={**os.environ, "PROXY_NATIVE": "0"}
    )
    assert forced.stdout.rstrip().endswith("build: python)"), forced.stdout


def test_run_refuses_a_bad_config_and_binds_nothing(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN.replace("99999", "18099"))
    result = proxy_cli("run", "-c", str(path))
    assert result.returncode == 1
    assert "refusing to start" in result.stderr
    assert "unknown cluster 'db'" in result.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 18099))  # nothing was left listening


def test_run_refuses_when_the_address_is_taken(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "p.yaml"
        path.write_text(
            f"listeners: [{{name: a, address: '127.0.0.1:{port}', protocol: tcp, cluster: c}}]\n"
            "clusters: [{name: c, hosts: [{address: '127.0.0.1:1'}]}]\n"
        )
        result = proxy_cli("run", "-c", str(path))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


async def test_json_logs_pid_file_and_stop(nursery, tmp_path):
    upstream = await start_server(nursery, echo_handler)
    config = tcp_config([upstream])
    config["logging"]["format"] = "json"
    pid_file = tmp_path / "proxy.pid"
    async with running_proxy(config, tmp_path, "--pid-file", str(pid_file)) as proxy:
        assert int(pid_file.read_text()) == proxy.pid
        events = [json.loads(line) for line in proxy.log().splitlines()]
        assert {"listener.started", "ready"} <= {e["event"] for e in events}
        # the worker waits on its L7 sockets edge-triggered (network/edge_epoll.py)
        assert [e["epoll"] for e in events if e["event"] == "ready" and "build" in e] == ["edge"]
        assert all(e["level"] == "info" and e["ts"].endswith("Z") for e in events)
        stop = await trio.to_thread.run_sync(lambda: proxy_cli("stop", "--pid-file", str(pid_file)))
        assert stop.returncode == 0, stop.stderr
        assert await proxy.wait(timeout=5) == 0
        assert not pid_file.exists()


def test_check_reports_listeners_that_cannot_both_bind_and_zero_timeouts(tmp_path):
    path = tmp_path / "clash.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            listeners:
              - {name: all, address: "0.0.0.0:8080", protocol: tcp, cluster: c}
              - {name: v6, address: "[::]:8080", protocol: tcp, cluster: c}
              - {name: local, address: "127.0.0.1:8080", protocol: tcp, cluster: c}
            clusters:
              - name: c
                connect_timeout: 0s
                hosts: [{address: "127.0.0.1:1"}]
            """
        )
    )
    result = proxy_cli("check", "-c", str(path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{path}:4: listeners[2].address: '127.0.0.1:8080' cannot be bound beside '0.0.0.0:8080' (at listeners[0].address): "
        "0.0.0.0 takes port 8080 on every IPv4 address",
        f"{path}:7: clusters[0].connect_timeout: duration '0s' must be more than 0",
        f"{path}: 2 errors",
    ]
