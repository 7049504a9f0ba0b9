"""Load a config file into the typed model, reporting every error with its path and line.

Three passes, each collecting issues instead of stopping at the first:

1. parse: YAML is composed into nodes and built into plain dicts/lists by hand, so every path
   gets the line it starts on (a mapping entry: the line of its key; a list item: its own line)
   and duplicate keys are caught. JSON is parsed with `json` (no lines, except syntax errors).
   Relative paths are then made absolute against the config file's directory (`paths`).
2. structure: a walker over `msgspec.inspect.type_info(Config)` reports unknown and missing keys,
   wrong types and bad values anywhere in the tree.
3. meaning: `proxy.config.semantic` checks names, references and addresses across the tree.

Only a config with no issues at all is converted with `msgspec.convert` into the frozen model.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import msgspec
import msgspec.inspect as mi
import yaml

from proxy.config import paths, semantic
from proxy.config.errors import ROOT, ConfigError, ConfigIssue, Issues, PathTuple
from proxy.config.model import Config
from proxy.config.values import CUSTOM_TYPES, Address, Duration, PositiveDuration, ZeroDuration, decode_hook

try:
    _BaseLoader: type = yaml.CSafeLoader
except AttributeError:  # PyYAML built without libyaml
    _BaseLoader = yaml.SafeLoader


class _YamlLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """YAML 1.2 booleans: only true/false. PyYAML follows YAML 1.1, where an unquoted `on`
    (as in `retry: {on: [5xx]}`), `yes`, `no` and `off` are booleans too: a key `on` would
    silently become True."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in _BaseLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)

Format = Literal["yaml", "json"]

# Nodes built from one YAML file, counting every alias expansion: stops "billion laughs".
MAX_YAML_NODES = 1_000_000

_CONFIG_INFO = mi.type_info(Config)


def load(path: str | os.PathLike[str]) -> Config:
    """Load a config file: `.json` files as JSON, anything else as YAML. Raises ConfigError."""
    return read(path)[0]


def read(path: str | os.PathLike[str]) -> tuple[Config, str]:
    """`load`, also returning the text it read (a keeper hands exactly that to its workers).
    Relative paths in it are resolved against the file's directory (proxy.config.paths)."""
    filename = os.fspath(path)
    try:
        data = Path(filename).read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([ConfigIssue(ROOT, f"cannot read config file: {reason}", None, filename)]) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        message = f"config file is not valid UTF-8 (byte {exc.start})"
        raise ConfigError([ConfigIssue(ROOT, message, line, filename)]) from None
    fmt: Format = "json" if Path(filename).suffix.lower() == ".json" else "yaml"
    return load_text(text, filename=filename, fmt=fmt, base_dir=paths.config_dir(filename)), text


def load_text(text: str, filename: str = "<config>", fmt: Format | None = None, *, base_dir: str | None = None) -> Config:
    """Load config text. `fmt` is "yaml" or "json"; by default `.json` filenames are JSON.
    `base_dir`: the directory relative paths in it mean (`paths.config_dir(filename)` for text
    read from a file); None leaves them as written."""
    if fmt is None:
        fmt = "json" if filename.lower().endswith(".json") else "yaml"
    if fmt not in ("yaml", "json"):
        raise ValueError(f"unknown config format {fmt!r}: expected 'yaml' or 'json'")
    issues = Issues(filename)
    try:
        ok, raw = _parse_json(text, issues) if fmt == "json" else _parse_yaml(text, issues)
        if not ok:
            raise issues.error()
        if base_dir is not None:
            paths.resolve(raw, base_dir)
        _Walker(issues).check(_CONFIG_INFO, raw, ())
        semantic.check(raw, issues)
    except RecursionError:
        issues.items.clear()
        issues.add((), "the config is nested too deeply")
    if issues:
        raise issues.error()
    try:
        return msgspec.convert(raw, Config, dec_hook=decode_hook)
    except (msgspec.ValidationError, ValueError, TypeError) as exc:
        # The walker accepted what msgspec rejects: a bug here, shown rather than crashing.
        issues.add((), f"internal error: config passed validation but failed to convert: {exc}")
        raise issues.error() from None


# --- parsing ------------------------------------------------------------------------------------


class _Bad:
    """A value that could not be built; its issue is already reported, so checks skip it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<invalid>"


BAD: Any = _Bad()

_TAG = "tag:yaml.org,2002:"
_MAP, _SEQ, _MERGE = _TAG + "map", _TAG + "seq", _TAG + "merge"


def _parse_yaml(text: str, issues: Issues) -> tuple[bool, Any]:
    loader = _YamlLoader(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.YAMLError as exc:
            message, line = _yaml_error(exc, text)
            issues.add((), message, line=line)
            return False, None
        if root is None:  # empty file, or only comments
            return True, {}
        issues.lines[()] = root.start_mark.line + 1
        value = _YamlBuilder(loader, issues).build(root, ())
        if value is None:  # a document that is just `null` / `~`
            return True, {}
        return True, value
    finally:
        loader.dispose()


def _yaml_error(exc: yaml.YAMLError, text: str) -> tuple[str, int | None]:
    line: int | None = None
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        message = exc.problem or exc.context or "syntax error"
        if exc.context and exc.problem:
            context_mark = exc.context_mark
            at = f" started on line {context_mark.line + 1}" if context_mark and context_mark.line + 1 != line else ""
            # PyYAML reads context first: "expected a single document ..., but found another document".
            message = f"{exc.context}{at}, {exc.problem}" if exc.problem.startswith("but ") else f"{exc.problem} ({exc.context}{at})"
    elif isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        message = f"unacceptable character #x{exc.character:04x}" if isinstance(exc.character, int) else str(exc)
    else:
        message = str(exc)
    return f"invalid YAML: {message}", line


class _YamlBuilder:
    """Builds plain Python data from composed YAML nodes, recording the line of every path."""

    def __init__(self, loader: Any, issues: Issues) -> None:
        self.loader = loader
        self.issues = issues
        self.lines = issues.lines
        self.budget = MAX_YAML_NODES
        self.building: set[int] = set()  # collection nodes being built: an alias to one recurses
        self.reported: set[tuple[int, str]] = set()  # (node, problem): an alias must not repeat it

    def _report(self, node: yaml.Node, kind: str, path: PathTuple, message: str, line: int | None = None) -> None:
        if (id(node), kind) in self.reported:
            return
        self.reported.add((id(node), kind))
        self.issues.add(path, message, line=line)

    def build(self, node: yaml.Node, path: PathTuple) -> Any:
        self.budget -= 1
        if self.budget < 0:
            if self.budget == -1:
                self.issues.add(path, f"document too large: more than {MAX_YAML_NODES} values after expanding aliases")
            return BAD
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path)
        if id(node) in self.building:
            self._report(node, "recursive", path, "recursive alias: a value cannot contain itself")
            return BAD
        self.building.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return self._sequence(node, path)
            return self._mapping(node, path)
        finally:
            self.building.discard(id(node))

    def _scalar(self, node: yaml.ScalarNode, path: PathTuple) -> Any:
        try:
            return self.loader.construct_object(node)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            self._report(node, "construct", path, f"invalid YAML value: {problem}", line=node.start_mark.line + 1)
            return BAD

    def _sequence(self, node: yaml.SequenceNode, path: PathTuple) -> Any:
        if node.tag != _SEQ:
            self._report(node, "tag", path, f"unsupported YAML tag {node.tag!r}")
            return BAD
        items = []
        for index, item in enumerate(node.value):
            self.lines[path + (index,)] = item.start_mark.line + 1
            items.append(self.build(item, path + (index,)))
        return items

    def _mapping(self, node: yaml.MappingNode, path: PathTuple) -> Any:
        if node.tag != _MAP:
            self._report(node, "tag", path, f"unsupported YAML tag {node.tag!r}")
            return BAD
        result: dict[Any, Any] = {}
        merges = [value for key, value in node.value if _is_merge_key(key)]
        # `<<: [*a, *b]`: keys of earlier mappings win over later ones, the mapping's own keys over all.
        for source in reversed(self._merge_sources(merges, path)):
            merged = self.build(source, path)
            if isinstance(merged, dict):
                result.update(merged)
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if _is_merge_key(key_node):
                continue
            key = self._key(key_node, path)
            if key is BAD:
                continue
            line = key_node.start_mark.line + 1
            if key in first_line:
                message = f"duplicate key {key!r} (first on line {first_line[key]})"
                self._report(key_node, "duplicate", path + (key,), message, line=line)
                continue
            first_line[key] = line
            self.lines[path + (key,)] = line
            result[key] = self.build(value_node, path + (key,))
        return result

    def _merge_sources(self, merges: list[yaml.Node], path: PathTuple) -> list[yaml.MappingNode]:
        sources: list[yaml.MappingNode] = []
        for value in merges:
            candidates = value.value if isinstance(value, yaml.SequenceNode) else [value]
            for candidate in candidates:
                if isinstance(candidate, yaml.MappingNode):
                    sources.append(candidate)
                else:
                    message = "a merge key '<<' takes a mapping or a list of mappings"
                    self._report(candidate, "merge", path, message, line=candidate.start_mark.line + 1)
        return sources

    def _key(self, node: yaml.Node, path: PathTuple) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            self._report(node, "key", path, "mapping keys must be plain values, not lists or mappings", line=node.start_mark.line + 1)
            return BAD
        key = self._scalar(node, path)
        if key is not BAD:
            try:
                hash(key)
            except TypeError:
                self._report(node, "key", path, f"unusable mapping key {key!r}", line=node.start_mark.line + 1)
                return BAD
        return key


def _is_merge_key(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _MERGE


class _JsonObject(list):  # type: ignore[type-arg]
    """A JSON object's (key, value) pairs as parsed, so duplicate keys can be reported with a path."""


def _parse_json(text: str, issues: Issues) -> tuple[bool, Any]:
    if not text.strip():
        return True, {}
    try:
        parsed = json.loads(text.removeprefix("\ufeff"), object_pairs_hook=_JsonObject)
    except json.JSONDecodeError as exc:
        issues.add((), f"invalid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno)
        return False, None
    return True, _from_json(parsed, (), issues)


def _from_json(value: Any, path: PathTuple, issues: Issues) -> Any:
    if isinstance(value, _JsonObject):
        result: dict[str, Any] = {}
        for key, item in value:
            if key in result:
                issues.add(path + (key,), f"duplicate key {key!r}")
                continue
            result[key] = _from_json(item, path + (key,), issues)
        return result
    if isinstance(value, list):
        return [_from_json(item, path + (index,), issues) for index, item in enumerate(value)]
    return value


# --- structure ----------------------------------------------------------------------------------

_MAPPING_TYPES = (mi.StructType, mi.DictType, mi.TypedDictType, mi.DataclassType)
_LIST_TYPES = (mi.ListType, mi.SetType, mi.FrozenSetType, mi.VarTupleType)


def _literal_order(info: mi.Type) -> dict[frozenset[Any], tuple[Any, ...]]:
    """Literal choices in the order the model declares them (type info sorts them)."""
    order: dict[frozenset[Any], tuple[Any, ...]] = {}
    for struct in _structs(info):
        stack = list(typing.get_type_hints(struct.cls, include_extras=True).values())
        while stack:
            hint = stack.pop()
            if typing.get_origin(hint) is Literal:
                order.setdefault(frozenset(typing.get_args(hint)), typing.get_args(hint))
            else:
                stack.extend(typing.get_args(hint))
    return order


def _structs(info: Any, seen: set[type] | None = None) -> list[mi.StructType]:
    """Every struct type reachable from `info`, each once."""
    seen = set() if seen is None else seen
    found: list[mi.StructType] = []
    if isinstance(info, mi.StructType):
        if info.cls in seen:
            return found
        seen.add(info.cls)
        found.append(info)
        children: list[Any] = [field.type for field in info.fields]
    else:
        children = [getattr(info, name) for name in ("item_type", "key_type", "value_type") if hasattr(info, name)]
        children += list(getattr(info, "types", ())) + list(getattr(info, "item_types", ()))
    for child in children:
        found += _structs(child, seen)
    return found


_LITERAL_ORDER = _literal_order(_CONFIG_INFO)
_CUSTOM_DESCRIPTIONS: dict[type, str] = {
    Duration: "a duration such as '5s'",
    PositiveDuration: "a duration above 0 such as '5s'",
    Address: "an address such as 'host:port'",
}


class _Walker:
    """Checks raw data against msgspec type info, reporting every problem with its path."""

    def __init__(self, issues: Issues) -> None:
        self.issues = issues

    def check(self, t: mi.Type, value: Any, path: PathTuple) -> None:
        if value is BAD:
            return
        if isinstance(t, mi.StructType):
            self._struct(t, value, path)
        elif isinstance(t, _LIST_TYPES):
            self._list(t, value, path)
        elif isinstance(t, mi.DictType):
            self._dict(t, value, path)
        elif isinstance(t, mi.UnionType):
            self._union(t, value, path)
        elif isinstance(t, mi.CustomType):
            self._custom(t, value, path)
        elif isinstance(t, mi.IntType):
            self._number(t, value, path, int)
        elif isinstance(t, mi.FloatType):
            self._number(t, value, path, float)
        elif isinstance(t, mi.StrType):
            self._str(t, value, path)
        elif isinstance(t, mi.LiteralType):
            self._literal(t, value, path)
        elif isinstance(t, mi.BoolType):
            if not isinstance(value, bool):
                self.issues.add(path, f"expected true or false, got {_got(value)}")
        elif isinstance(t, mi.NoneType):
            if value is not None:
                self.issues.add(path, f"expected null, got {_got(value)}")
        elif isinstance(t, mi.AnyType):
            pass
        else:
            self._convert(t, value, path)

    def _struct(self, t: mi.StructType, value: Any, path: PathTuple) -> None:
        if not isinstance(value, dict):
            where = "the top level must be a mapping" if not path else "expected a mapping"
            self.issues.add(path, f"{where}, got {_got(value)}")
            return
        fields = {field.encode_name: field for field in t.fields}
        allowed = set(fields) | ({t.tag_field} if t.tag_field else set())
        if t.forbid_unknown_fields:
            for key in value:
                if key not in allowed:
                    self.issues.add(path + (key,), _unknown_key(key, [f.encode_name for f in t.fields]))
        for name, field in fields.items():
            if name in value:
                self.check(field.type, value[name], path + (name,))
            elif field.required:
                self.issues.add(path, f"missing required key {name!r}")

    def _list(self, t: Any, value: Any, path: PathTuple) -> None:
        if not isinstance(value, list):
            self.issues.add(path, f"expected a list, got {_got(value)}")
            return
        self._length(t, value, path, "item")
        for index, item in enumerate(value):
            self.check(t.item_type, item, path + (index,))

    def _dict(self, t: mi.DictType, value: Any, path: PathTuple) -> None:
        if not isinstance(value, dict):
            self.issues.add(path, f"expected a mapping, got {_got(value)}")
            return
        self._length(t, value, path, "entry")
        for key, item in value.items():
            keys = _Walker(Issues(self.issues.filename, self.issues.lines))
            keys.check(t.key_type, key, path + (key,))
            for issue in keys.issues.items:  # say that it is the key that is wrong
                self.issues.items.append(dataclasses.replace(issue, message=f"bad key: {issue.message}"))
            self.check(t.value_type, item, path + (key,))

    def _length(self, t: Any, value: Any, path: PathTuple, noun: str) -> None:
        lo, hi = getattr(t, "min_length", None), getattr(t, "max_length", None)
        if lo is not None and len(value) < lo:
            got = "none" if not value else str(len(value))
            self.issues.add(path, f"needs at least {_plural(lo, noun)}, got {got}")
        if hi is not None and len(value) > hi:
            self.issues.add(path, f"allows at most {_plural(hi, noun)}, got {len(value)}")

    def _union(self, t: mi.UnionType, value: Any, path: PathTuple) -> None:
        members = [m for m in t.types if not isinstance(m, mi.NoneType)]
        if value is None and len(members) < len(t.types):
            return
        if len(members) == 1:  # `X | None` with a value that is not None: check it as an X
            if isinstance(members[0], mi.CustomType):
                self._custom(members[0], value, path, nullable=True)
            else:
                self.check(members[0], value, path)
            return
        shaped = [m for m in members if _shape_matches(m, value)]
        if len(shaped) == 1 and isinstance(shaped[0], _MAPPING_TYPES + _LIST_TYPES):
            self.check(shaped[0], value, path)  # the detailed errors of the one container that fits
            return
        for member in shaped:
            trial = _Walker(Issues(self.issues.filename))
            trial.check(member, value, path)
            if not trial.issues:
                return
        self.issues.add(path, f"expected {_describe(t)}, got {_got(value)}")

    def _custom(self, t: mi.CustomType, value: Any, path: PathTuple, nullable: bool = False) -> None:
        parse = CUSTOM_TYPES.get(t.cls)
        if parse is None:
            self._convert(t, value, path)
            return
        try:
            parse(value)
        except ZeroDuration as exc:
            # "0s" is how Envoy turns a timeout off; here that is null, where it may be off.
            self.issues.add(path, f"{exc}; null turns it off" if nullable else str(exc))
        except (ValueError, TypeError) as exc:
            self.issues.add(path, str(exc))

    def _number(self, t: mi.IntType | mi.FloatType, value: Any, path: PathTuple, kind: type) -> None:
        accepted = (int,) if kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, accepted):
            self.issues.add(path, f"expected {_describe(t)}, got {_got(value)}")
            return
        if not _converts(value, _annotation(t)):
            self.issues.add(path, f"expected {_describe(t)}, got {value!r}")

    def _str(self, t: mi.StrType, value: Any, path: PathTuple) -> None:
        if not isinstance(value, str):
            self.issues.add(path, f"expected a string, got {_got(value)}")
            return
        if _converts(value, _annotation(t)):
            return
        if t.min_length is not None and len(value) < t.min_length:
            message = "must not be empty" if t.min_length == 1 else f"must be at least {_plural(t.min_length, 'character')} long"
        elif t.max_length is not None and len(value) > t.max_length:
            message = f"must be at most {_plural(t.max_length, 'character')} long, got {len(value)}"
        else:
            message = f"invalid value {value!r}: must match the pattern {t.pattern}"
        self.issues.add(path, message)

    def _literal(self, t: mi.LiteralType, value: Any, path: PathTuple) -> None:
        if any(type(value) is type(choice) and value == choice for choice in t.values):
            return
        message = f"expected {_describe(t)}, got {_got(value)}"
        if isinstance(value, str):
            strings = [choice for choice in t.values if isinstance(choice, str)]
            close = difflib.get_close_matches(value, strings, n=1, cutoff=0.6)
            if close:
                message += f"; did you mean {close[0]!r}?"
        self.issues.add(path, message)

    def _convert(self, t: mi.Type, value: Any, path: PathTuple) -> None:
        annotation = _annotation(t)
        if annotation is Any:
            return  # no check here for this type; the final conversion still validates it
        try:
            msgspec.convert(value, annotation, dec_hook=decode_hook)
        except msgspec.ValidationError as exc:
            self.issues.add(path, _strip_msgspec_path(str(exc)))


def _unknown_key(key: Any, names: list[str]) -> str:
    if not isinstance(key, str):
        return f"unknown key {key!r}: keys must be strings"
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if not close and len(key) >= 3:  # a shortened or lengthened name: 'drain' for 'drain_timeout'
        close = [name for name in names if name.startswith(key) or key.startswith(name)][:1]
    if close:
        return f"unknown key {key!r}; did you mean {close[0]!r}?"
    return f"unknown key {key!r}; expected one of: {', '.join(names)}"


def _shape_matches(t: mi.Type, value: Any) -> bool:
    if isinstance(t, _MAPPING_TYPES):
        return isinstance(value, dict)
    if isinstance(t, _LIST_TYPES + (mi.TupleType,)):
        return isinstance(value, list)
    return not isinstance(value, (dict, list))


def _converts(value: Any, annotation: Any) -> bool:
    try:
        msgspec.convert(value, annotation, dec_hook=decode_hook)
    except (msgspec.ValidationError, ValueError, TypeError):
        return False
    return True


def _strip_msgspec_path(message: str) -> str:
    # msgspec ends messages with " - at `$.a[0]`"; the issue carries the path itself.
    head, sep, _ = message.rpartition(" - at `")
    return head if sep else message


def _annotation(t: mi.Type) -> Any:
    """The Python type for a msgspec type-info leaf, to hand to `msgspec.convert`."""
    if isinstance(t, (mi.IntType, mi.FloatType)):
        base = int if isinstance(t, mi.IntType) else float
        bounds = {name: getattr(t, name) for name in ("gt", "ge", "lt", "le", "multiple_of")}
        return Annotated[base, msgspec.Meta(**{k: v for k, v in bounds.items() if v is not None})]
    if isinstance(t, mi.StrType):
        limits = {"min_length": t.min_length, "max_length": t.max_length, "pattern": t.pattern}
        return Annotated[str, msgspec.Meta(**{k: v for k, v in limits.items() if v is not None})]
    if isinstance(t, mi.BoolType):
        return bool
    if isinstance(t, mi.NoneType):
        return None
    if isinstance(t, mi.LiteralType):
        return Literal[t.values]
    if isinstance(t, (mi.CustomType, mi.StructType, mi.EnumType, mi.DataclassType)):
        return t.cls
    if isinstance(t, mi.ListType):
        return list[_annotation(t.item_type)]  # type: ignore[misc]
    if isinstance(t, mi.DictType):
        return dict[_annotation(t.key_type), _annotation(t.value_type)]  # type: ignore[misc]
    if isinstance(t, mi.UnionType):
        return Union[tuple(_annotation(member) for member in t.types)]  # noqa: UP007
    return Any


def _describe(t: mi.Type) -> str:
    """What a value of this type looks like, for "expected ..." messages."""
    if isinstance(t, (mi.IntType, mi.FloatType)):
        noun = "an integer" if isinstance(t, mi.IntType) else "a number"
        return noun + _bounds(t)
    if isinstance(t, mi.StrType):
        return "a string"
    if isinstance(t, mi.BoolType):
        return "true or false"
    if isinstance(t, mi.NoneType):
        return "null"
    if isinstance(t, mi.LiteralType):
        values = _LITERAL_ORDER.get(frozenset(t.values), t.values)
        shown = ", ".join(_show(v) for v in values)
        return shown if len(values) == 1 else f"one of {shown}"
    if isinstance(t, mi.CustomType):
        return _CUSTOM_DESCRIPTIONS.get(t.cls, f"a {t.cls.__name__}")
    if isinstance(t, _MAPPING_TYPES):
        return "a mapping"
    if isinstance(t, _LIST_TYPES + (mi.TupleType,)):
        return "a list"
    if isinstance(t, mi.UnionType):
        return " or ".join(_describe(member) for member in t.types)
    return type(t).__name__.removesuffix("Type").lower()


def _bounds(t: mi.IntType | mi.FloatType) -> str:
    if t.ge is not None and t.le is not None:
        text = f" from {t.ge} to {t.le}"
    else:
        parts = [f"{op} {bound}" for op, bound in ((">", t.gt), (">=", t.ge), ("<", t.lt), ("<=", t.le)) if bound is not None]
        text = f" {' and '.join(parts)}" if parts else ""
    if t.multiple_of is not None:
        text += f" (a multiple of {t.multiple_of})"
    return text


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _got(value: Any) -> str:
    """How a wrong value is shown after "got": the value itself when short, else its kind."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({_show(value)})"
    if isinstance(value, str):
        return repr(value) if len(value) <= 80 else f"a string of {len(value)} characters"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__} ({value})"


def _plural(count: int, noun: str) -> str:
    if count == 1:
        return f"1 {noun}"
    return f"{count} {noun[:-1] + 'ies' if noun.endswith('y') else noun + 's'}"
