"""Which build of the hot path runs: the mypyc-compiled modules or their Python source.

`scripts/build-native` (run by `scripts/setup`) compiles the modules in COMPILED with mypyc, in
place: a .so beside each .py, from the very same source, plus one shared runtime
(src/proxy_native__mypyc.*.so). Compiled, the HTTP/1 request path (codec, stream layer, router,
pool, socket I/O) does the same work with native attribute access and calls instead of
bytecode (docs/performance.md has the measurements).

Python would import a .so in preference to its .py, so this module decides first, when the
`proxy` package is imported: the build is used only if its stamp (src/proxy/_native.json)
matches this interpreter and the current source of *every* module of the package, and
PROXY_NATIVE=0 is not set. Every module, not just the compiled ones: mypyc builds the declared
types of what the compiled code touches (a Cluster's fields, a config struct) into its checks,
so an edit anywhere could make an old build raise TypeError. Otherwise a finder on
sys.meta_path loads the sources of the compiled modules, all of them (the compiled modules call
one another directly, so a mix of the two would not work). `NATIVE` says which runs;
`STALE_BUILD` that a build is here but does not match (worth a warning at start).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
SRC = PACKAGE.parent
STAMP = PACKAGE / "_native.json"
GROUP = "proxy_native"  # the shared mypyc runtime: src/proxy_native__mypyc.*.so

# Compiled, as paths under src/ (import order: each may import those before it).
# Not the codec's events (codec/_http1_events.py): compiled, their fields would refuse at
# assignment what filters may set (str or bytearray for bytes; the chain makes heads canonical
# after the filters ran, proxy.http.filter).
COMPILED = (
    "proxy/codec/_http1_write.py",
    "proxy/codec/http1.py",
    "proxy/codec/_hpack.py",  # HTTP/2: HPACK coding, its Huffman loops
    "proxy/codec/_http2_heads.py",  # HTTP/2: pseudo-headers <-> heads, the field checks
    "proxy/network/edge_epoll.py",  # the waits of the stream layer (compiled: two per request)
    "proxy/network/sockio.py",
    "proxy/network/tls_io.py",  # SockIO over TLS (a native subclass of SockIO)
    "proxy/http/filter.py",
    "proxy/http/stream_info.py",
    "proxy/http/stream.py",
    "proxy/http/http1_upstream.py",
    "proxy/upstream/pool.py",
    "proxy/http/router.py",
    "proxy/http/http1_server.py",
    "proxy/http/codec_io.py",
    "proxy/http/multiplex.py",  # HTTP/2 (and every multiplexed codec) downstream
    "proxy/http/http2_upstream.py",
)


def module_name(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def source_hashes() -> dict[str, str]:
    """sha256 of every .py file of the package, by path under src/ (what a build's stamp records)."""
    return {
        str(p.relative_to(SRC)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(PACKAGE.rglob("*.py"))
        if "__pycache__" not in p.parts
    }


def built_files() -> list[Path]:
    return sorted([*PACKAGE.rglob("*.so"), *SRC.glob(f"{GROUP}__mypyc*.so")])


def stale_sources() -> list[str] | None:
    """The sources that differ from the build's (empty: the build matches), or None when there
    is no usable stamp (no build, or one made for another Python)."""
    try:
        stamp = json.loads(STAMP.read_text())
        built = stamp["sources"]
        if stamp["cache_tag"] != sys.implementation.cache_tag or not isinstance(built, dict):
            return None
        if not all((SRC / so).exists() for so in stamp["files"]):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    now = source_hashes()
    return sorted(path for path in built.keys() | now.keys() if built.get(path) != now.get(path))


class _SourceFinder:
    """Finds the .py of a compiled module, so the sources run although the .so files are there."""

    def __init__(self) -> None:
        self.names = {module_name(path): SRC / path for path in COMPILED}

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        source = self.names.get(fullname)
        if source is None:
            return None
        return importlib.util.spec_from_file_location(fullname, source)


def _decide(built: bool) -> tuple[bool, bool]:
    if not built:
        return False, False
    if os.environ.get("PROXY_NATIVE", "1") == "0":
        return False, False
    stale = stale_sources()
    if stale != []:
        return False, True
    try:
        __import__(f"{GROUP}__mypyc")  # the shared runtime: a build that cannot load runs the source
    except ImportError:
        return False, True
    return True, False


_BUILT = any(PACKAGE.rglob("*.so"))
NATIVE, STALE_BUILD = _decide(_BUILT)
if _BUILT and not NATIVE:
    sys.meta_path.insert(0, _SourceFinder())
