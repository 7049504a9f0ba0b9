"""One admin answer from several workers' answers to the same request (sans-IO).

With `runtime.workers` above 1 the keeper asks every worker and folds their answers here, by a
schema declared where the answers are built (`proxy.admin.server.MERGE` for the JSON endpoints,
`proxy.metrics.SUMMED_GAUGES` and `PER_WORKER` for the Prometheus text). A number adds up only
where the schema says it counts something: counters, histograms, and gauges of amounts each
worker holds (open connections, requests in flight). Everything else (names, addresses,
weights, limits, timeouts, enabled flags, health, states, config values) is a property of the
worker and is taken once. Where the workers disagree on one, the field holds null and its
object's `per_worker` map gives each worker's value by worker index:

    {"address": "10.0.0.7:80", "weight": 3, "enabled": null, "healthy": true,
     "per_worker": {"enabled": {"0": true, "1": false}}, "stats": {"cx_total": 12, ...}}

In the Prometheus text, a family that is not summed and on which the workers disagree is given
once per worker, each sample with a `worker="I"` label.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

# ---------------------------------------------------------------- the schema


class Rule:
    """How one JSON value folds over workers."""

    __slots__ = ()


class _Sum(Rule):
    """Numbers that add up; a worker without the field adds nothing (a code seen by one worker)."""

    __slots__ = ()


class _Once(Rule):
    """A property: the common value, or null with a `per_worker` entry where workers differ.
    Dicts are folded key by key, so a difference is reported where it is, not at the top."""

    __slots__ = ()


SUM = _Sum()
ONCE = _Once()


class Fields(Rule):
    """A dict whose named fields have their own rules; any other field by `rest(key)`."""

    __slots__ = ("fields", "rest")

    def __init__(self, fields: dict[str, Rule] | None = None, rest: Callable[[str], Rule] | None = None) -> None:
        self.fields = fields or {}
        self.rest = rest or (lambda _key: ONCE)


class Each(Rule):
    """A list of dicts, one per thing (a listener, a cluster, a host), matched across workers
    by their `key` field (not by position) and each folded by `item`. A thing only some
    workers have is folded over those, and `per_worker[key]` says who has it (null: not)."""

    __slots__ = ("key", "item")

    def __init__(self, key: str, item: Rule) -> None:
        self.key = key
        self.item = item


def summed_where(adds_up: Callable[[str], bool]) -> Fields:
    """A dict of numbers whose fields add up where `adds_up(field)` says so (a stats snapshot)."""
    return Fields(rest=lambda key: SUM if adds_up(key) else ONCE)


# ---------------------------------------------------------------- JSON


class _Missing:
    __slots__ = ()


_MISSING = _Missing()


class _Split:
    """Workers that disagree on a property: each one's value (None where it has none)."""

    __slots__ = ("values",)

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values


def merge(rule: Rule, answers: dict[str, Any]) -> Any:
    """The one answer over `answers` (each worker's decoded JSON by worker index, in order)."""
    out = _merge(rule, answers)
    return {"per_worker": out.values} if isinstance(out, _Split) else out


def _merge(rule: Rule, docs: dict[str, Any]) -> Any:
    values = [v for v in docs.values() if v is not _MISSING]
    if isinstance(rule, _Sum) and values and all(_is_number(v) for v in values):
        return _add(values)
    if isinstance(rule, Each) and values and all(isinstance(v, list) for v in values):
        return _each(rule, {w: v for w, v in docs.items() if v is not _MISSING})
    if isinstance(rule, (Fields, _Once)) and values and all(isinstance(v, dict) for v in docs.values()):
        return _fields(rule if isinstance(rule, Fields) else Fields(), docs)
    first = next(iter(docs.values()))
    if all(v == first and type(v) is type(first) for v in docs.values()):
        return first
    return _Split({w: None if v is _MISSING else v for w, v in docs.items()})


def _fields(rule: Fields, docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    keys = list(dict.fromkeys(k for d in docs.values() for k in d))
    out: dict[str, Any] = {}
    split: dict[str, Any] = {}
    for key in keys:
        value = _merge(rule.fields.get(key) or rule.rest(key), {w: d.get(key, _MISSING) for w, d in docs.items()})
        if isinstance(value, _Split):
            out[key] = None
            split[key] = value.values
        else:
            out[key] = value
    if split:
        out["per_worker"] = split
    return out


def _each(rule: Each, docs: dict[str, list[Any]]) -> list[Any]:
    groups: dict[Any, dict[str, Any]] = {}
    for w, items in docs.items():
        for position, item in enumerate(items):
            key = item.get(rule.key, ("#", position)) if isinstance(item, dict) else ("#", position)
            groups.setdefault(_hashable(key), {})[w] = item
    out = []
    for group in groups.values():
        item = _merge(rule.item, group)
        if isinstance(item, _Split):
            item = {"per_worker": item.values}
        if len(group) < len(docs) and isinstance(item, dict):
            present = next(iter(group.values()))
            key = present.get(rule.key) if isinstance(present, dict) else None
            item.setdefault("per_worker", {})[rule.key] = {w: key if w in group else None for w in docs}
        out.append(item)
    return out


def _hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _add(values: list[Any]) -> int | float:
    if all(isinstance(v, int) for v in values):
        return sum(values)
    return round(sum(float(v) for v in values), 6)  # the snapshots' sums are rounded: no 0.30000000000000004


# ---------------------------------------------------------------- task trees


def task_trees(trees: dict[str, tuple[int, Any]]) -> dict[str, Any]:
    """Each worker's task tree ({name, children}) under one root, one node per worker."""
    return {
        "name": f"{len(trees)} workers",
        "children": [{"name": f"worker #{w} (pid {pid})", "children": [tree]} for w, (pid, tree) in trees.items()],
    }


# ---------------------------------------------------------------- Prometheus text


class _Family:
    __slots__ = ("name", "kind", "meta", "samples")

    def __init__(self, name: str, kind: str) -> None:
        self.name = name
        self.kind = kind
        self.meta: list[str] = []  # its HELP and TYPE lines
        self.samples: dict[str, str] = {}  # `name{labels}` -> value text, in order


_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


def _families(text: str) -> dict[str, _Family]:
    families: dict[str, _Family] = {}
    current: _Family | None = None
    meta: list[str] = []
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 4 and parts[1] == "TYPE":
                current = families.setdefault(parts[2], _Family(parts[2], parts[3].strip()))
                current.meta += [*meta, line]
                meta = []
            elif len(parts) >= 3 and parts[1] == "HELP":
                meta = [line]
            continue
        key, _, value = line.rpartition(" ")
        sample = key.split("{", 1)[0]
        if current is None or not (sample == current.name or sample in (current.name + s for s in _SUFFIXES.get(current.kind, ()))):
            current = families.setdefault(sample, _Family(sample, "untyped"))  # a sample with no TYPE of its own
            current.meta += meta
            meta = []
        current.samples[key] = value
    return families


def merge_metrics(texts: dict[str, str], summed_gauges: frozenset[str], per_worker: frozenset[str] = frozenset()) -> str:
    """One exposition over several workers' (`texts` by worker index, in order). Counters and
    histograms add up sample by sample (a histogram's cumulative buckets, sum and count), and
    so do the gauges in `summed_gauges`; any other family is taken once where every worker
    gives the same samples, else (and always for `per_worker` families) once per worker with a
    `worker` label. A summary's quantiles do not add up: it is such an other family."""
    parsed = {w: _families(text) for w, text in texts.items()}
    names = list(dict.fromkeys(name for families in parsed.values() for name in families))
    out: list[str] = []
    for name in names:
        have = {w: families[name] for w, families in parsed.items() if name in families}
        first = next(iter(have.values()))
        out += first.meta
        if first.kind in ("counter", "histogram") or (first.kind == "gauge" and name in summed_gauges):
            keys = list(dict.fromkeys(k for f in have.values() for k in f.samples))
            out += [f"{key} {_sum_values([f.samples[key] for f in have.values() if key in f.samples])}" for key in keys]
        elif name not in per_worker and len(have) == len(parsed) and all(f.samples == first.samples for f in have.values()):
            out += [f"{key} {value}" for key, value in first.samples.items()]
        else:
            out += [f"{_with_worker(key, w)} {value}" for w, f in have.items() for key, value in f.samples.items()]
    return "\n".join(out) + "\n"


def _with_worker(key: str, worker: str) -> str:
    label = f'worker="{worker}"'
    if key.endswith("}"):
        return f"{key[:-1]},{label}}}" if not key.endswith("{}") else f"{key[:-1]}{label}}}"
    return f"{key}{{{label}}}"


def _sum_values(values: list[str]) -> str:
    try:
        ints = [int(v) for v in values]
    except ValueError:
        total = sum(float(v) for v in values)
        if math.isnan(total):
            return "NaN"
        if math.isinf(total):
            return "+Inf" if total > 0 else "-Inf"
        return repr(total)
    return str(sum(ints))
