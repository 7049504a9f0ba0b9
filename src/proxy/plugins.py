"""Classes named in a config by `package.module:Class` (filters, codecs): import and check."""

from __future__ import annotations

import importlib
from typing import Any


class PluginError(Exception):
    """The named class cannot be used; the message says why (for a config error)."""


def split_target(target: str) -> tuple[str, str] | None:
    """(module, attribute) of `package.module:Class`; None if it is not of that form."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        return None
    return module_name, attr


def load_class(module_name: str, attr: str, base: type, label: str, base_name: str) -> Any:
    """The class `attr` of `module_name`, which must subclass `base`. `label` starts every
    error ("filter 'x'"), `base_name` names what it must be ("a StreamFilter subclass")."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginError(f"{label}: cannot import {module_name}: {exc}") from exc
    cls = getattr(module, attr, None)
    if cls is None:
        raise PluginError(f"{label}: {module_name} has no {attr}")
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise PluginError(f"{label}: {attr} is not {base_name}")
    return cls
