"""Sans-IO protocol codecs: bytes in, events out, no trio imports (see DESIGN.md, layout).

The HTTP/1.1 codec modules and the HTTP/2 codec's HPACK coders and head translation may also be
compiled by mypyc from this same source (`scripts/build-native`, run by `scripts/setup`): ~27 %
less Python work per proxied HTTP/1 request (docs/performance.md). Python
would import a compiled module in preference to its .py, so this package decides first: the
compiled build is used only if its stamp matches this interpreter and the current source of
every compiled module (an edited or newly deployed .py is never shadowed by an old build), and
PROXY_NATIVE=0 is not set. Otherwise the sources are loaded explicitly. `NATIVE` says which.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path

_HERE = Path(__file__).parent
_COMPILED = ("_http1_write", "http1", "_hpack", "_http2_heads")  # in import order
# What the build's stamp hashes: the compiled modules and those whose types mypyc built into
# them (scripts/build-native: DEPENDS + MODULES).
_HASHED = ("_http1_events", *_COMPILED)


def _build_matches() -> bool:
    if os.environ.get("PROXY_NATIVE", "1") == "0":
        return False
    try:
        stamp = json.loads((_HERE / "_native.json").read_text())
        sources = stamp["sources"]
        if stamp["cache_tag"] != sys.implementation.cache_tag:
            return False
        return all(
            sources.get(f"proxy/codec/{name}.py") == hashlib.sha256((_HERE / f"{name}.py").read_bytes()).hexdigest() for name in _HASHED
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _import_compiled() -> bool:
    try:
        for name in _COMPILED:
            importlib.import_module(f"{__name__}.{name}")
    except Exception:  # noqa: BLE001 - ImportError, or a build that fails as it loads: use the source
        for name in _COMPILED:
            sys.modules.pop(f"{__name__}.{name}", None)
        return False
    return True


def _load_sources() -> None:
    package = sys.modules[__name__]
    for name in _COMPILED:
        full = f"{__name__}.{name}"
        spec = importlib.util.spec_from_file_location(full, _HERE / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        spec.loader.exec_module(module)
        setattr(package, name, module)


NATIVE = False
STALE_BUILD = False  # a compiled build is here but does not match: worth a warning at start
if any(_HERE.glob("*.so")):
    NATIVE = _build_matches() and _import_compiled()
    if not NATIVE:
        STALE_BUILD = os.environ.get("PROXY_NATIVE", "1") != "0"
        _load_sources()
