"""The compiled build (scripts/build-native) and its guard in proxy/native.py: the build is
used only when it matches the sources, and the pure-Python source passes the same suites."""

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

from proxy import native

SRC = native.SRC
REPO = SRC.parent
STAMP = native.STAMP

needs_build = pytest.mark.skipif(not STAMP.exists(), reason="no compiled build here (scripts/build-native)")

COMPILED = [native.module_name(path) for path in native.COMPILED]
# Imports every compiled module the way the proxy does, then says where each came from.
PROBE = (
    "import proxy.native as n, proxy.server, proxy.http.connection_manager, proxy.http.multiplex, proxy.http.http2_upstream, proxy.codec.http2, sys; "
    f"print(n.NATIVE, n.STALE_BUILD, *(sys.modules[m].__file__ for m in {COMPILED!r}))"
)


def _probe(env_extra: dict[str, str] | None = None, pythonpath: Path | None = None) -> tuple[bool, bool, dict[str, str]]:
    """In a fresh interpreter: (NATIVE, STALE_BUILD, {compiled module: the file it came from})."""
    env = {k: v for k, v in os.environ.items() if k != "PROXY_NATIVE"}
    env.update(env_extra or {})
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60, check=True)
    native_, stale, *files = out.stdout.split()
    return native_ == "True", stale == "True", dict(zip(COMPILED, files, strict=True))


def test_the_package_and_the_build_script_agree_on_what_is_compiled():
    loader = importlib.machinery.SourceFileLoader("build_native", str(REPO / "scripts" / "build-native"))
    script = types.ModuleType(loader.name)
    script.__file__ = loader.path
    loader.exec_module(script)
    assert script.MODULES == list(native.COMPILED)
    assert all((SRC / path).is_file() for path in native.COMPILED)


def test_proxy_native_0_loads_the_sources():
    native_, stale, files = _probe({"PROXY_NATIVE": "0"})
    assert not native_ and not stale  # asked for: not reported as a stale build
    assert all(files[m].endswith(".py") for m in COMPILED), files


@needs_build
def test_a_matching_build_is_used():
    native_, stale, files = _probe()
    assert native_ and not stale
    assert all(f.endswith(".so") for f in files.values()), files
    assert json.loads(STAMP.read_text())["cache_tag"] == sys.implementation.cache_tag


@needs_build
@pytest.mark.parametrize("edited", ["codec/_http1_write.py", "http/router.py", "upstream/cluster.py", "config/model.py"])
def test_an_edited_source_is_never_shadowed_by_an_old_build(tmp_path, edited):
    """A copy of the tree with the build in place and a source edited after the build, as a
    deploy that forgot to rebuild: the sources are loaded, all of them. A module that is not
    compiled counts too (cluster.py, the config model): mypyc built its types into the checks."""
    copy = tmp_path / "src"
    shutil.copytree(SRC / "proxy", copy / "proxy", ignore=shutil.ignore_patterns("__pycache__"))
    for runtime in SRC.glob("proxy_native__mypyc*.so"):
        shutil.copy2(runtime, copy / runtime.name)
    assert _probe(pythonpath=copy)[0], "the untouched copy uses its build"
    changed = copy / "proxy" / edited
    changed.write_text(changed.read_text() + "\nEDITED = True\n")
    native_, stale, files = _probe(pythonpath=copy)
    assert not native_ and stale
    assert files == {m: str(copy / path) for m, path in zip(COMPILED, native.COMPILED, strict=True)}


@needs_build
def test_the_pure_python_build_passes_the_codec_and_http_suites_too():
    """CI runs everything on the compiled build; this runs tests/codec and tests/http on the
    sources."""
    env = dict(os.environ, PROXY_NATIVE="0")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/codec", "tests/http", "--deselect", "tests/codec/test_native.py"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout.splitlines()[-1]
