"""The compiled codec (scripts/build-native) and its guard in proxy/codec/__init__.py: the
build is used only when it matches the sources, and the pure-Python source passes the same
codec suite."""

from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

import proxy.codec

SRC = Path(proxy.codec.__file__).resolve().parent.parent.parent
REPO = SRC.parent
STAMP = SRC / "proxy" / "codec" / "_native.json"

needs_build = pytest.mark.skipif(not STAMP.exists(), reason="no compiled codec here (scripts/build-native)")

COMPILED = ["_http1_write", "http1", "_hpack", "_http2_heads"]  # proxy.codec._COMPILED
# The http2 import pulls in the compiled modules the way the proxy does (through proxy.codec).
PROBE = (
    "import proxy.codec as c, proxy.codec.http2, sys; "
    f"print(c.NATIVE, c.STALE_BUILD, *(sys.modules['proxy.codec.' + m].__file__ for m in {COMPILED!r}))"
)


def _probe(env_extra: dict[str, str] | None = None, pythonpath: Path | None = None) -> tuple[bool, bool, dict[str, str]]:
    """In a fresh interpreter: (NATIVE, STALE_BUILD, {compiled module: the file it came from})."""
    env = {k: v for k, v in os.environ.items() if k != "PROXY_NATIVE"}
    env.update(env_extra or {})
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60, check=True)
    native, stale, *files = out.stdout.split()
    return native == "True", stale == "True", dict(zip(COMPILED, files, strict=True))


def test_the_package_and_the_build_script_agree_on_what_is_compiled():
    loader = importlib.machinery.SourceFileLoader("build_native", str(REPO / "scripts" / "build-native"))
    script = types.ModuleType(loader.name)
    script.__file__ = loader.path
    loader.exec_module(script)
    assert list(proxy.codec._COMPILED) == COMPILED
    assert script.MODULES == [f"proxy/codec/{m}.py" for m in COMPILED]
    assert [*script.DEPENDS, *script.MODULES] == [f"proxy/codec/{m}.py" for m in proxy.codec._HASHED]


def test_proxy_native_0_loads_the_sources():
    native, stale, files = _probe({"PROXY_NATIVE": "0"})
    assert not native and not stale  # asked for: not reported as a stale build
    assert all(files[m].endswith(f"{m}.py") for m in COMPILED), files


@needs_build
def test_a_matching_build_is_used():
    native, stale, files = _probe()
    assert native and not stale
    assert all(f.endswith(".so") for f in files.values()), files
    assert json.loads(STAMP.read_text())["cache_tag"] == sys.implementation.cache_tag


@needs_build
@pytest.mark.parametrize("edited", ["_http1_write.py", "_http1_events.py", "_hpack.py", "_http2_heads.py"])  # compiled; types built in
def test_an_edited_source_is_never_shadowed_by_an_old_build(tmp_path, edited):
    """A copy of the tree with the build in place and a codec source edited after the build,
    as a deploy that forgot to rebuild: the sources are loaded, all of them."""
    copy = tmp_path / "src"
    shutil.copytree(SRC / "proxy", copy / "proxy", ignore=shutil.ignore_patterns("__pycache__"))
    for runtime in SRC.glob("proxy_native__mypyc*.so"):
        shutil.copy2(runtime, copy / runtime.name)
    assert _probe(pythonpath=copy)[0], "the untouched copy uses its build"
    changed = copy / "proxy" / "codec" / edited
    changed.write_text(changed.read_text() + "\nEDITED = True\n")
    native, stale, files = _probe(pythonpath=copy)
    assert not native and stale
    assert files == {m: str(copy / "proxy" / "codec" / f"{m}.py") for m in COMPILED}


@needs_build
def test_the_pure_python_codec_passes_the_codec_suite_too():
    """CI runs everything on the compiled codec; this runs tests/codec on the sources."""
    env = dict(os.environ, PROXY_NATIVE="0")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/codec", "--deselect", "tests/codec/test_native.py"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout.splitlines()[-1]
