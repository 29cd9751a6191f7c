"""Design-space sweeps: many independent ``pimsim.simulate`` runs, one table row each.

A sweep is a document (a YAML file or a dict of the same shape, see docs/sweeps.md) that
names a base preset, models, and axes: any preset key through the same ``section.key``
override paths as ``--set``, plus ``strategy``, ``prompt`` and ``tokens``, expanded as a
grid or as random samples. The layers are:

* :func:`plan` validates the document and expands it into :class:`Point` s (every point's
  preset is resolved here, so a bad key or value is an error before anything runs);
* :func:`run_point` simulates one point and returns its row; it never raises: a failing
  point becomes a row with ``status`` "error" and the error's one-line message;
* :func:`sweep` runs the points on an executor (inline, a local process pool, or a Dask
  cluster), appends each finished row durably to a journal, and returns a
  :class:`SweepResult` whose rows are sorted by point index.

Rows are flat dicts (dotted keys for nested results) and carry no timestamps or wall
times, so a sweep gives byte-identical tables on 1 or N workers and after a resume.

The module itself is callable: ``pimsim.sweep(...)`` runs :func:`sweep`, and
``pimsim.sweep.pareto_front`` and the other helpers stay reachable under the same name
(a package attribute cannot be both a function and a submodule otherwise).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import re
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from pimsim.errors import OutputError, PimsimError

#: Top-level keys of a sweep document.
SWEEP_KEYS = ("name", "description", "preset", "models", "strategy", "prompt", "tokens",
              "set", "axes", "sampling", "samples", "seed", "points")
#: Axes that are simulation arguments rather than preset keys.
RUN_AXES = ("model", "strategy", "prompt", "tokens")
#: Keys of a range axis (instead of a list of values).
RANGE_KEYS = ("low", "high", "num", "scale", "integer")
#: Columns every row has, in table order (axis columns and results follow).
LEAD_COLUMNS = ("index", "point_key", "status", "error", "model", "preset", "strategy",
                "prompt", "tokens", "spec_digest", "trace_hash")
#: Result fields left out of rows: per-step lists, and inputs the row already holds.
_DROPPED = {"steps", "model", "preset", "strategy", "prompt_tokens", "decode_tokens",
            "spec_digest", "trace_hash"}

#: Most points one sweep may have (models x grid or samples, plus listed points); checked
#: before any point is resolved.
MAX_POINTS = 1_000_000

MANIFEST = "sweep.json"
JOURNAL = "journal.jsonl"
TABLE_CSV = "results.csv"
TABLE_JSONL = "results.jsonl"


# ----------------------------------------------------------------------------- planning

@dataclass(frozen=True)
class Point:
    """One simulation of a sweep: everything :func:`run_point` needs, as plain data."""

    index: int
    model: str
    preset: str
    strategy: str
    prompt: int
    tokens: int
    overrides: tuple[str, ...]          # "section.key=value", fixed ones first
    values: tuple[tuple[str, Any], ...]  # the axis values that made this point (key, value)
    spec_digest: str
    trace_hash: str
    key: str                            # hash of trace, spec and run arguments

    def to_dict(self) -> dict:
        return {"index": self.index, "model": self.model, "preset": self.preset,
                "strategy": self.strategy, "prompt": self.prompt, "tokens": self.tokens,
                "overrides": list(self.overrides), "values": [list(v) for v in self.values],
                "spec_digest": self.spec_digest, "trace_hash": self.trace_hash,
                "point_key": self.key}


@dataclass(frozen=True)
class Plan:
    """A validated sweep: its points in index order, the axis names, and its digest."""

    name: str
    points: tuple[Point, ...]
    axes: tuple[str, ...]   # preset-key axes (column names), in document order
    digest: str             # SHA-256 of every point's inputs; a resume must match it

    def manifest(self) -> dict:
        return {"name": self.name, "digest": self.digest, "axes": list(self.axes),
                "points": [p.to_dict() for p in self.points]}


class _Where:
    """Where a value came from, for one-line error messages."""

    def __init__(self, label: str):
        self.label = label

    def error(self, key: str, message: str) -> PimsimError:
        return PimsimError(f"{self.label}: {key}: {message}")


def _path_arg(value, what: str, error=PimsimError) -> Path:
    """``value`` (a str or os.PathLike naming a file or folder) as a Path; anything else,
    or an empty path, is a one-line error naming ``what``."""
    text = os.fspath(value) if isinstance(value, (str, os.PathLike)) else None
    if not isinstance(text, str):
        raise error(f"{what}: expected a path (str or os.PathLike), got {value!r}")
    if not text:
        raise error(f"{what}: empty path")
    return Path(text)


def _plain(value, depth: int = 3):
    """``value`` with numpy scalars (down to ``depth`` levels of lists and mappings) as
    their Python values: integers as int, floats as float, a numpy bool as bool (never a
    number); float subclasses as float. Anything else is left as it is."""
    if isinstance(value, Mapping):
        return {_plain(k, 0): _plain(v, depth - 1) for k, v in value.items()} if depth > 0 else value
    if isinstance(value, list):
        return [_plain(v, depth - 1) for v in value] if depth > 0 else value
    if type(value) in (str, int, float, bool) or value is None:
        return value
    if type(value).__module__ == "numpy":
        import numpy as np

        if isinstance(value, np.bool_):
            return bool(value)
        if isinstance(value, np.integer):
            return int(value)
        if isinstance(value, np.floating):
            return float(value)
    if isinstance(value, float):
        return float(value)
    return value


def _load_document(source) -> tuple[dict, str]:
    if isinstance(source, Mapping):
        return _plain(dict(source)), "sweep"
    from pimsim.config import load_yaml_text, read_text

    if not isinstance(source, (str, os.PathLike)):
        raise PimsimError(f"sweep: expected a sweep file path or a mapping, got {source!r}")
    path = _path_arg(source, "sweep file")
    label = str(path)
    if not path.is_file():
        raise PimsimError(f"{label}: no such sweep file")
    # UTF-8 only, and a key given twice (say under axes) is an error, not "last one wins"
    doc = load_yaml_text(read_text(path, label, error=PimsimError), label)
    if not isinstance(doc, dict):
        raise PimsimError(f"{label}: a sweep file must be a YAML mapping")
    return doc, label


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_scalar(v) -> bool:
    """A value an axis, a point or ``set`` may give a preset key (after :func:`_plain`)."""
    return isinstance(v, (str, int, float, bool))


def _scalar_text(v) -> str:
    """A value as an override writes it (YAML scalar; floats by repr)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _range_values(key: str, spec: dict, sampling: str, where: _Where) -> dict:
    unknown = sorted(str(k) for k in set(spec) - set(RANGE_KEYS))
    if unknown:
        raise where.error(f"axes.{key}.{unknown[0]}", f"unknown range key (known: {', '.join(RANGE_KEYS)})")
    for k in ("low", "high"):
        if k not in spec:
            raise where.error(f"axes.{key}", f"a range needs '{k}', got {spec!r}")
        if not _is_number(spec[k]):
            raise where.error(f"axes.{key}.{k}", f"expected a number, got {spec[k]!r}")
        try:
            finite = math.isfinite(spec[k])
        except OverflowError:  # an int too large for a float
            finite = False
        if not finite:
            raise where.error(f"axes.{key}.{k}", f"expected a finite number, got {spec[k]!r}")
    low, high = spec["low"], spec["high"]
    scale = spec.get("scale", "linear")
    if not isinstance(scale, str) or scale not in ("linear", "log"):
        raise where.error(f"axes.{key}.scale", f"expected linear or log, got {scale!r}")
    if high < low:
        raise where.error(f"axes.{key}", f"high {high!r} is below low {low!r}")
    if not math.isfinite(float(high) - float(low)):
        raise where.error(f"axes.{key}", f"the range from {low!r} to {high!r} is too wide to sample")
    if scale == "log" and low <= 0:
        raise where.error(f"axes.{key}.low", f"a log range needs low > 0, got {low!r}")
    integer = spec.get("integer", _is_int(low) and _is_int(high))
    if not isinstance(integer, bool):
        raise where.error(f"axes.{key}.integer", f"expected true or false, got {integer!r}")
    num = spec.get("num")
    if sampling == "grid":
        if not _is_int(num) or num < 1:
            raise where.error(f"axes.{key}.num", f"a grid range needs a positive integer num, got {num!r}")
    elif num is not None:
        raise where.error(f"axes.{key}.num", "num applies to grid sampling only")
    return {"low": low, "high": high, "scale": scale, "integer": integer, "num": num}


def _grid_range(r: dict) -> list:
    low, high, n = r["low"], r["high"], r["num"]
    out = []
    for i in range(n):
        f = i / (n - 1) if n > 1 else 0.0
        if r["scale"] == "log":
            x = math.exp(math.log(low) + f * (math.log(high) - math.log(low)))
        else:
            x = low + f * (high - low)
        out.append(_round(x, r["integer"]))
    return list(dict.fromkeys(out))  # integer rounding can repeat a value


def _sample_range(r: dict, rng) -> Any:
    low, high = r["low"], r["high"]
    if r["scale"] == "log":
        x = math.exp(rng.uniform(math.log(low), math.log(high)))
    else:
        x = rng.uniform(low, high)
    return _round(x, r["integer"])


def _round(x: float, integer: bool):
    if integer:
        return int(round(x))
    return float(f"{x:.6g}")  # short overrides and stable text


def _check_run_value(key: str, value, where: _Where, ctx: str) -> None:
    import mappings
    import workloads

    if key == "model":
        if not isinstance(value, str):
            raise where.error(ctx, f"expected a model name or trace .json file, got {value!r}")
        if not (value in workloads.model_names()
                                              or value.endswith(".json") and Path(value).is_file()):
            raise where.error(ctx, f"unknown model {value!r} (registry: {', '.join(workloads.model_names())}; "
                                   f"or a trace .json file)")
    elif key == "strategy":
        if not isinstance(value, str):
            raise where.error(ctx, f"expected one mapping strategy name, got {value!r} "
                                   f"(known: {', '.join(mappings.STRATEGIES)})")
        if value not in mappings.STRATEGIES:
            raise where.error(ctx, f"unknown mapping strategy {value!r} (known: {', '.join(mappings.STRATEGIES)})")
    elif key == "prompt":
        if not _is_int(value) or value < 0:
            raise where.error(ctx, f"expected a non-negative number of tokens, got {value!r}")
    elif key == "tokens":
        if not _is_int(value) or value < 1:
            raise where.error(ctx, f"expected a positive number of decode steps, got {value!r}")


def _check_size(models: list, axes: dict, sampling: str, samples, listed: int, where: _Where) -> None:
    """Refuse a sweep of more than :data:`MAX_POINTS` points before any is made."""
    limit = f"a sweep has at most {MAX_POINTS:,} points"
    if sampling == "grid":
        sizes = {k: len(v) if isinstance(v, list) else v["num"] for k, v in axes.items()}
        for k, n in sizes.items():
            if n > MAX_POINTS and not isinstance(axes[k], list):
                raise where.error(f"axes.{k}.num", f"{n} values; {limit}")
        made = len(models) * math.prod(sizes.values()) if sizes or not listed else 0
        how = " x ".join([f"{len(models)} model{'s' if len(models) != 1 else ''}"]
                         + [f"{n} {k}" for k, n in sizes.items()])
        key = "axes"
    else:
        made = len(models) * samples if axes or not listed else 0
        how = f"{samples} samples x {len(models)} model{'s' if len(models) != 1 else ''}"
        key = "samples"
    total = made + listed
    if total <= MAX_POINTS:
        return
    if made <= MAX_POINTS and listed:
        key = "points"
    parts = ([how] if made else []) + ([f"{listed} listed points"] if listed else [])
    raise where.error(key, f"{total} points ({' + '.join(parts)}); {limit}")


def plan(source) -> Plan:
    """Validate a sweep document (a YAML file path or a dict) and expand its points.

    Every point's preset is loaded with its overrides, so an unknown key or a bad value
    raises a one-line :class:`PimsimError` naming the file, the key and the value before
    anything runs.
    """
    from pimsim.api import trace_hash, load_model
    from pimsim.config import load_preset, parse_override

    doc, label = _load_document(source)
    where = _Where(label)
    for key in doc:
        if key not in SWEEP_KEYS:
            raise where.error(str(key), f"unknown key (known: {', '.join(SWEEP_KEYS)})")
    name = doc.get("name", Path(label).stem if label != "sweep" else "sweep")
    if not isinstance(name, str) or not name.strip() or not name.isprintable():
        raise where.error("name", f"expected a non-empty one-line string, got {name!r}")
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise where.error("description", f"expected a string, got {description!r}")
    preset = doc.get("preset", "pim-gpt")
    if not isinstance(preset, str):
        raise where.error("preset", f"expected a preset name or YAML file, got {preset!r}")

    models = doc.get("models", ["gpt2-small"])
    if isinstance(models, str):
        models = [models]
    if not isinstance(models, list) or not models:
        raise where.error("models", f"expected a non-empty list of models, got {models!r}")
    for i, m in enumerate(models):
        _check_run_value("model", m, where, f"models[{i}]")
    defaults = {"strategy": doc.get("strategy", "pim-gpt"), "prompt": doc.get("prompt", 32),
                "tokens": doc.get("tokens", 1)}
    for k, v in defaults.items():
        if isinstance(v, (list, Mapping)):
            raise where.error(k, f"expected one value, got {v!r} (to sweep {k}, list its values "
                                 f"under axes)")
        _check_run_value(k, v, where, k)

    fixed = doc.get("set", [])
    if isinstance(fixed, Mapping):
        for k, v in fixed.items():
            if not _is_scalar(v):
                raise where.error(f"set.{k}", f"expected a scalar (a string, number or true/false), "
                                              f"got {v!r}")
        fixed = [f"{k}={_scalar_text(v)}" for k, v in fixed.items()]
    if not isinstance(fixed, list) or not all(isinstance(s, str) for s in fixed):
        raise where.error("set", f"expected a list of KEY=VALUE strings or a mapping, got {fixed!r}")
    for s in fixed:
        try:
            parse_override(s)
        except PimsimError as exc:
            raise where.error("set", str(exc)) from None

    try:
        load_preset(preset, fixed)
    except PimsimError as exc:
        raise where.error("set" if fixed and "--set" in str(exc) else "preset", str(exc)) from None

    sampling = doc.get("sampling", "grid")
    if not isinstance(sampling, str) or sampling not in ("grid", "random"):
        raise where.error("sampling", f"expected grid or random, got {sampling!r}")
    samples, seed = doc.get("samples"), doc.get("seed", 0)
    if not _is_int(seed):  # only random sampling draws, but a bad seed is wrong either way
        raise where.error("seed", f"expected an integer, got {seed!r}")
    if sampling == "random":
        if not _is_int(samples) or samples < 1:
            raise where.error("samples", f"random sampling needs a positive integer, got {samples!r}")
    elif samples is not None:
        raise where.error("samples", "applies to random sampling only")

    axes_doc = doc.get("axes", {})
    if axes_doc is None or isinstance(axes_doc, list) and not axes_doc:
        axes_doc = {}  # "axes:" or "axes: []": none
    if not isinstance(axes_doc, Mapping):
        raise where.error("axes", f"expected a mapping of key: values, got {axes_doc!r}")
    axes: dict[str, Any] = {}
    for key, spec in axes_doc.items():
        key = str(key)
        if key in ("model", "models"):
            raise where.error(f"axes.{key}", "models are listed under the top-level 'models' key")
        if key not in RUN_AXES:
            try:
                parse_override(f"{key}=0")
            except PimsimError:
                raise where.error(f"axes.{key}", "not a section.key path") from None
            if "." not in key:
                raise where.error(f"axes.{key}", f"unknown axis (known: {', '.join(RUN_AXES[1:])}, "
                                                 f"or a preset key such as organization.channels)")
        if isinstance(spec, Mapping):
            axes[key] = _range_values(key, dict(spec), sampling, where)
        elif isinstance(spec, list) and spec:
            for i, v in enumerate(spec):
                if not _is_scalar(v):
                    raise where.error(f"axes.{key}[{i}]", f"expected a scalar (a string, number or "
                                                          f"true/false), got {v!r}")
                if key in RUN_AXES:
                    _check_run_value(key, v, where, f"axes.{key}[{i}]")
            axes[key] = list(spec)
        else:
            raise where.error(f"axes.{key}", f"expected a non-empty list of values or a range, got {spec!r}")

    extra = doc.get("points", [])
    if extra is None:
        extra = []  # "points:": none
    if not isinstance(extra, list) or not all(isinstance(p, Mapping) for p in extra):
        raise where.error("points", f"expected a list of mappings, got {extra!r}")
    _check_size(models, axes, sampling, samples, len(extra), where)

    # the assignments (axis -> value) of every point, in index order
    assignments: list[tuple[str, dict]] = []
    if not axes and extra:
        pass  # only the listed points (an axis-free sweep is otherwise the base point)
    elif sampling == "grid":
        lists = [v if isinstance(v, list) else _grid_range(v) for v in axes.values()]
        for model in models:
            for combo in itertools.product(*lists):
                assignments.append((model, dict(zip(axes, combo))))
    else:
        import random

        rng = random.Random(seed)
        for model in models:
            for _ in range(samples):
                assignments.append((model, {k: (rng.choice(v) if isinstance(v, list) else _sample_range(v, rng))
                                            for k, v in axes.items()}))
    for i, p in enumerate(extra):
        p = {str(k): v for k, v in p.items()}
        model = p.pop("model", models[0])
        _check_run_value("model", model, where, f"points[{i}].model")
        for k, v in p.items():
            if k in RUN_AXES:
                _check_run_value(k, v, where, f"points[{i}].{k}")
            elif "." not in k or not _is_scalar(v):
                raise where.error(f"points[{i}].{k}", f"expected a preset key with a scalar value, got {v!r}")
        assignments.append((model, p))

    preset_axes = [k for k in axes if k not in RUN_AXES]
    for _, a in assignments:
        preset_axes += [k for k in a if k not in RUN_AXES and k not in preset_axes]

    traces: dict[str, str] = {}
    specs: dict[tuple, str] = {}
    points = []
    for index, (model, a) in enumerate(assignments):
        run = {**defaults, **{k: v for k, v in a.items() if k in RUN_AXES}}
        overrides = tuple(fixed) + tuple(f"{k}={_scalar_text(v)}" for k, v in a.items() if k not in RUN_AXES)
        if overrides not in specs:
            try:
                specs[overrides] = load_preset(preset, list(overrides)).digest
            except PimsimError as exc:
                bad = [k for k in a if k not in RUN_AXES]
                ctx = "points" if index >= len(assignments) - len(extra) else "axes"
                keys = ", ".join(f"{k}={_scalar_text(a[k])}" for k in bad) or "set"
                msg = re.sub(r"^--set [^:]*: ", "", str(exc))
                raise where.error(f"{ctx} ({keys})", msg) from None
        if model not in traces:
            try:
                traces[model] = trace_hash(load_model(model))
            except PimsimError as exc:
                raise where.error("models", str(exc)) from None
        key_doc = {"trace_hash": traces[model], "spec_digest": specs[overrides], **run}
        key = hashlib.sha256(json.dumps(key_doc, sort_keys=True).encode()).hexdigest()[:16]
        points.append(Point(index=index, model=model, preset=preset, strategy=run["strategy"],
                            prompt=run["prompt"], tokens=run["tokens"], overrides=overrides,
                            values=tuple(a.items()), spec_digest=specs[overrides],
                            trace_hash=traces[model], key=key))
    digest_doc = [p.to_dict() for p in points]
    digest = hashlib.sha256(json.dumps(digest_doc, sort_keys=True).encode()).hexdigest()
    return Plan(name=str(name), points=tuple(points), axes=tuple(preset_axes), digest=digest)


# ----------------------------------------------------------------------------- one point

def _flatten(prefix: str, value, out: dict) -> None:
    if isinstance(value, Mapping):
        for k in sorted(value):
            _flatten(f"{prefix}.{k}" if prefix else str(k), value[k], out)
    else:
        out[prefix] = value


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ").rstrip()


#: A point's fields (as :meth:`Point.to_dict` gives them) and what each must be.
_POINT_FIELDS = (("index", "a point number"), ("point_key", "a string"), ("model", "a string"),
                 ("preset", "a string"), ("strategy", "a string"), ("prompt", "an integer"),
                 ("tokens", "an integer"), ("overrides", "a list of KEY=VALUE strings"),
                 ("values", "a list of [key, value] pairs"), ("spec_digest", "a string"),
                 ("trace_hash", "a string"))


def _point_problem(p: Mapping) -> str | None:
    for field, what in _POINT_FIELDS:
        if field not in p:
            return f"no {field!r}"
        v = p[field]
        if what == "a string":
            ok = isinstance(v, str)
        elif what == "a point number":
            ok = _is_int(v) and v >= 0
        elif what == "an integer":
            ok = _is_int(v)
        elif field == "overrides":
            ok = isinstance(v, (list, tuple)) and all(isinstance(o, str) for o in v)
        else:
            ok = isinstance(v, (list, tuple)) and all(
                isinstance(kv, (list, tuple)) and len(kv) == 2 and isinstance(kv[0], str) for kv in v)
        if not ok:
            return f"{field}: expected {what}, got {v!r}"
    return None


def _point_dict(point) -> dict:
    """``point`` (a :class:`Point` or its :meth:`~Point.to_dict`) as a dict; anything else
    is a one-line :class:`PimsimError`."""
    if isinstance(point, Point):
        return point.to_dict()
    if not isinstance(point, Mapping):
        raise PimsimError(f"not a sweep point: expected a Point or Point.to_dict(), got {point!r}")
    problem = _point_problem(point)
    if problem is not None:
        raise PimsimError(f"not a sweep point: {problem} (expected a Point or Point.to_dict())")
    return dict(point)


def point_row(point: Point | Mapping) -> dict:
    """A row's input columns (no results yet)."""
    p = _point_dict(point)
    row = {"index": p["index"], "point_key": p["point_key"], "status": None, "error": "",
           "model": p["model"], "preset": p["preset"], "strategy": p["strategy"],
           "prompt": p["prompt"], "tokens": p["tokens"], "spec_digest": p["spec_digest"],
           "trace_hash": p["trace_hash"]}
    for k, v in p["values"]:
        if k not in RUN_AXES:
            row[k] = v
    return row


def run_point(point: Point | Mapping) -> dict:
    """Simulate one point (a :class:`Point` or its :meth:`~Point.to_dict`) and return its
    row. A point that fails to run never raises: the error becomes the row's ``status``
    ("error") and ``error`` (one line). Only something that is not a point at all (not a
    Point, or a mapping without a point's fields) raises, a one-line :class:`PimsimError`,
    since it has no row to put the error in."""
    p = _point_dict(point)
    row = point_row(p)
    try:
        from pimsim.api import simulate

        result = simulate(p["model"], preset=p["preset"], overrides=p["overrides"],
                          prompt=p["prompt"], tokens=p["tokens"], strategy=p["strategy"]).to_dict()
        if result["spec_digest"] != p["spec_digest"] or result["trace_hash"] != p["trace_hash"]:
            raise PimsimError("the worker resolved a different spec or trace than the plan "
                              "(is the same pimsim installed on every worker?)")
        flat: dict = {}
        _flatten("", {k: v for k, v in result.items() if k not in _DROPPED}, flat)
        clash = sorted(set(flat) & set(row))
        if clash:
            raise PimsimError(f"result field {clash[0]!r} clashes with an axis column")
        row.update(flat)
        row["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - a failing point is recorded, the sweep goes on
        row["status"] = "error"
        row["error"] = _one_line(exc)
    return row


def _warm_up() -> None:
    """Import the simulator in a pool worker before its first point."""
    import pimsim.api  # noqa: F401
    import pimsim.system  # noqa: F401


# ----------------------------------------------------------------------------- the table

def _encode_line(row: dict) -> str:
    return json.dumps(row, sort_keys=True, separators=(",", ":"), allow_nan=True) + "\n"


def _record_problem(row, keys: Mapping[int, str] | None) -> str | None:
    """What is wrong with a decoded journal line as a row of the plan (``None``: nothing)."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    for field in ("index", "point_key", "status"):
        if field not in row:
            return f"not a sweep row: no {field!r}"
    idx = row["index"]
    if not _is_int(idx) or idx < 0:
        return f"index: expected a point number, got {idx!r}"
    if row["status"] not in ("ok", "error"):
        return f"status: expected ok or error, got {row['status']!r}"
    if keys is not None:
        if idx not in keys:
            return f"index {idx} is not a point of this sweep ({len(keys)} points)"
        if row["point_key"] != keys[idx]:
            return f"point_key {row['point_key']!r} is not point {idx}'s ({keys[idx]!r})"
    return None


def read_journal(path: str | os.PathLike, repair: bool = False,
                 keys: Mapping[int, str] | None = None) -> list[dict]:
    """The rows of a journal, first occurrence of each index.

    Only the text after the last newline may be damaged (a kill in the middle of a write):
    it is ignored, and with ``repair`` cut off the file once every other line has been
    checked. Any other line that is not a JSON row (an object with ``index``,
    ``point_key`` and ``status``; with ``keys``, index -> point_key of the plan, a row of
    that plan) raises a one-line :class:`PimsimError` naming ``path:LINE``; the file is
    left as it is.
    """
    path = _path_arg(path, "sweep journal")
    if not path.exists():
        return []
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PimsimError(f"{path}: cannot read: {exc.strerror}") from None
    rows: dict[int, dict] = {}
    good = data.rfind(b"\n") + 1   # complete lines end here; anything after is torn
    for number, line in enumerate(data[:good].split(b"\n")[:-1], start=1):
        try:
            row = json.loads(line)
        except ValueError:
            text = line[:40].decode("utf-8", "replace")
            raise PimsimError(f"{path}:{number}: not a JSON line: {text!r}"
                              f"{'...' if len(line) > 40 else ''}") from None
        problem = _record_problem(row, keys)
        if problem is not None:
            raise PimsimError(f"{path}:{number}: {problem}")
        rows.setdefault(row["index"], row)
    if repair and good < len(data):
        with open(path, "r+b") as fh:
            fh.truncate(good)
            fh.flush()
            os.fsync(fh.fileno())
    return [rows[i] for i in sorted(rows)]


def read_manifest(path: str | os.PathLike) -> dict:
    """A sweep folder's ``sweep.json``, checked: a one-line :class:`PimsimError` naming
    the file when it is unreadable or not a sweep manifest."""
    from pimsim.config import read_text

    path = _path_arg(path, "sweep manifest")
    text = read_text(path, str(path), error=PimsimError)
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise PimsimError(f"{path}: not a sweep manifest: malformed JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise PimsimError(f"{path}: not a sweep manifest: expected a JSON object, "
                          f"got {type(doc).__name__}")
    for field, kind, what in (("name", str, "a string"), ("digest", str, "a string"),
                              ("axes", list, "a list"), ("points", list, "a list")):
        if not isinstance(doc.get(field), kind):
            got = "nothing" if field not in doc else type(doc[field]).__name__
            raise PimsimError(f"{path}: not a sweep manifest: {field}: expected {what}, got {got}")
    for i, point in enumerate(doc["points"]):
        if (not isinstance(point, dict) or not _is_int(point.get("index")) or point["index"] != i
                or not isinstance(point.get("point_key"), str)):
            raise PimsimError(f"{path}: not a sweep manifest: points[{i}]: expected the "
                              f"point with index {i} and its point_key")
    return doc


def _manifest_keys(manifest: dict) -> dict[int, str]:
    return {p["index"]: p["point_key"] for p in manifest["points"]}


class _Journal:
    """Append-only JSON lines; every row flushed and fsynced before the next."""

    def __init__(self, path: Path):
        self.fh = open(path, "ab")

    def append(self, row: dict) -> None:
        self.fh.write(_encode_line(row).encode())
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    text = str(v)
    if any(c in text for c in ',"\n\r'):
        text = '"' + text.replace('"', '""') + '"'
    return text


@dataclass
class SweepResult:
    """A sweep's table: one flat row per point, sorted by index."""

    name: str
    rows: list[dict]
    axes: tuple[str, ...] = ()
    total: int = 0                      # points in the plan
    out: str | None = None              # folder the tables were written to
    skipped: int = 0                    # points a resume found finished

    @property
    def columns(self) -> list[str]:
        seen = dict.fromkeys(LEAD_COLUMNS)
        seen.update(dict.fromkeys(self.axes))
        rest = sorted({k for r in self.rows for k in r} - set(seen))
        return list(seen) + rest

    @property
    def ok(self) -> list[dict]:
        return [r for r in self.rows if r["status"] == "ok"]

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["status"] != "ok"]

    @property
    def complete(self) -> bool:
        return len(self.rows) == self.total

    def column(self, key: str, rows: Iterable[dict] | None = None) -> list:
        """One column's values (``None`` where a row lacks it)."""
        return [r.get(key) for r in (self.ok if rows is None else rows)]

    def where(self, **values) -> list[dict]:
        """Finished rows whose columns equal ``values`` (dotted keys as ``a__b``)."""
        want = {k.replace("__", "."): v for k, v in values.items()}
        return [r for r in self.ok if all(r.get(k) == v for k, v in want.items())]

    def to_csv(self) -> str:
        cols = self.columns
        lines = [",".join(_cell(c) for c in cols)]
        lines += [",".join(_cell(r.get(c)) for c in cols) for r in self.rows]
        return "\n".join(lines) + "\n"

    def to_jsonl(self) -> str:
        return "".join(_encode_line(r) for r in self.rows)


def pareto_front(rows: Iterable[dict], x: str = "tokens_per_s", y: str = "energy_per_token_J.nominal",
                 maximize_x: bool = True, minimize_y: bool = True) -> list[dict]:
    """The rows no other row beats on both ``x`` and ``y``, sorted by ``x``.

    ``rows`` are row dicts (or a :class:`SweepResult`, whose finished rows are used); rows
    that failed or lack ``x`` or ``y`` are left out. A value of ``x`` or ``y`` that is not a
    number is a one-line :class:`PimsimError` naming the row and the column."""
    if isinstance(rows, SweepResult):
        rows = rows.ok
    if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Iterable):
        raise PimsimError(f"pareto_front: expected an iterable of row dicts, got {rows!r}")
    for name, col in (("x", x), ("y", y)):
        if not isinstance(col, str):
            raise PimsimError(f"pareto_front: {name}: expected a column name, got {col!r}")
    pts = []
    for i, r in enumerate(rows):
        if not isinstance(r, Mapping):
            raise PimsimError(f"pareto_front: row {i}: expected a row dict, got {r!r}")
        if r.get("status", "ok") != "ok" or r.get(x) is None or r.get(y) is None:
            continue
        for col in (x, y):
            if not _is_number(r[col]):
                raise PimsimError(f"pareto_front: row {r.get('index', i)!r}: {col}: expected a "
                                  f"number, got {r[col]!r}")
        pts.append(r)
    sx = -1.0 if maximize_x else 1.0
    sy = 1.0 if minimize_y else -1.0
    pts.sort(key=lambda r: (sx * r[x], sy * r[y], r.get("index", 0)))
    front, best = [], math.inf
    for r in pts:
        if sy * r[y] < best:
            front.append(r)
            best = sy * r[y]
    return sorted(front, key=lambda r: (r[x], r.get("index", 0)))


def preset_value(key: str, preset: str = "pim-gpt"):
    """A preset's resolved value at a ``section.key`` path (to mark a baseline point)."""
    from pimsim.config import preset_path, _read_yaml

    if not isinstance(key, str) or not key:
        raise PimsimError(f"preset_value: expected a section.key path, got {key!r}")
    if not isinstance(preset, (str, os.PathLike)):
        raise PimsimError(f"preset_value: expected a preset name or YAML file, got {preset!r}")
    path, label = preset_path(preset)
    node: Any = _read_yaml(path, label)
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise PimsimError(f"{label}: no key {key!r}")
        node = node[part]
    return node


# ----------------------------------------------------------------------------- execution

def _default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _run_inline(points: list[dict]) -> Iterator[dict]:
    for p in points:
        yield run_point(p)


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Start worker processes without the calling script.

    spawn and forkserver workers normally re-run the ``__main__`` script (as
    ``__mp_main__``); a script or notebook export that calls :func:`sweep` at top level
    would then start the sweep again inside every worker. The workers run only pimsim
    code, so the script is hidden while they start.
    """
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
    try:
        if main is not None:
            main.__dict__.pop("__file__", None)
            main.__dict__["__spec__"] = None
        yield
    finally:
        if main is not None:
            main.__dict__.pop("__spec__", None)
            main.__dict__.update(saved)


def _run_pool(points: list[dict], workers: int) -> Iterator[dict]:
    """A local process pool (forkserver, so each worker's numba state starts clean). A
    point whose worker dies is retried once in a new pool, then recorded as failed."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    todo = list(points)
    attempts: dict[int, int] = {}
    while todo:
        pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx,
                                   initializer=_warm_up)
        broken = False
        try:
            with _main_module_hidden():  # workers start as the points are submitted
                futures = {pool.submit(run_point, p): p for p in todo}
            todo = []
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in sorted(done, key=lambda f: futures[f]["index"]):
                    p = futures[f]
                    try:
                        yield f.result()
                    except BrokenProcessPool:
                        broken = True
                        attempts[p["index"]] = attempts.get(p["index"], 0) + 1
                        if attempts[p["index"]] >= 2:
                            row = point_row(p)
                            row.update(status="error", error="worker process died")
                            yield row
                        else:
                            todo.append(p)
        finally:
            pool.shutdown(wait=not broken, cancel_futures=True)
        todo.sort(key=lambda p: p["index"])


#: Dask comm schemes a scheduler address may have (each followed by HOST:PORT)
_SCHEDULER_SCHEMES = ("tcp", "tls", "ws", "wss", "ucx")
#: seconds to wait for a Dask scheduler to answer
_CONNECT_TIMEOUT_S = 10


def _scheduler_host_port(address: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a ``[scheme://]HOST:PORT`` address (scheme tcp when
    missing); a malformed address is a one-line :class:`PimsimError`."""
    def bad(why: str) -> PimsimError:
        return PimsimError(f"scheduler address {address!r}: {why}; expected tcp://HOST:PORT, "
                           f"e.g. tcp://10.0.0.5:8786")

    if not address.strip() or address != address.strip():
        raise bad("empty or padded with spaces")
    scheme, sep, loc = address.rpartition("://")
    scheme = scheme if sep else "tcp"
    if scheme not in _SCHEDULER_SCHEMES:
        raise bad(f"unknown scheme {scheme!r} (known: {', '.join(_SCHEDULER_SCHEMES)})")
    if loc.startswith("["):  # [IPv6]:port
        host, close, tail = loc[1:].partition("]")
        port = tail[1:] if close and tail.startswith(":") else ""
    else:
        host, colon, port = loc.rpartition(":")
        if not colon or ":" in host:
            host, port = loc, ""
    if not host or "/" in host:
        raise bad("no host")
    if not port:
        raise bad("no port number")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise bad(f"port {port!r} is not a number from 1 to 65535")
    return scheme, host, int(port)


def _expect_dask_handshake(sock, address: str) -> None:
    """Check that the peer of a fresh TCP connection speaks first, as a Dask scheduler
    does: it sends its handshake message at once, framed as an 8-byte little-endian total
    length and an 8-byte frame count. A listener that sends nothing (a Dask ``Client``
    would wait for it without a timeout, dask/distributed#8071) or something else is a
    one-line :class:`PimsimError` within :data:`_CONNECT_TIMEOUT_S` seconds."""
    import socket

    head = b""
    sock.settimeout(_CONNECT_TIMEOUT_S)
    deadline = time.monotonic() + _CONNECT_TIMEOUT_S
    try:
        while len(head) < 16:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            chunk = sock.recv(16 - len(head))
            if not chunk:
                raise PimsimError(f"cannot reach the Dask scheduler at {address}: the "
                                  f"connection was closed before a Dask handshake")
            head += chunk
    except socket.timeout:
        raise PimsimError(f"cannot reach the Dask scheduler at {address}: no Dask handshake "
                          f"within {_CONNECT_TIMEOUT_S} s (is a Dask scheduler listening on "
                          f"that port?)") from None
    total = int.from_bytes(head[:8], "little")
    frames = int.from_bytes(head[8:16], "little")
    if not (0 < total < 1 << 24 and 1 <= frames <= 64):
        raise PimsimError(f"cannot reach the Dask scheduler at {address}: the service on that "
                          f"port is not a Dask scheduler (it sent {head!r})")


def _connect(scheduler):
    """A ``distributed.Client`` for ``scheduler`` (an address, a Client, or anything a
    Client takes, such as a ``LocalCluster``), and whether this call made it (and must
    close it). An address is checked and reached here, before a sweep writes anything: a
    malformed one fails at once, an unreachable one within :data:`_CONNECT_TIMEOUT_S`
    seconds, each as a one-line :class:`PimsimError`."""
    try:
        from distributed import Client
    except ImportError:
        raise PimsimError("--scheduler needs dask[distributed] (pip install 'pimsim[dist]')") from None
    if isinstance(scheduler, Client):
        return scheduler, False
    if isinstance(scheduler, str):
        scheme, host, port = _scheduler_host_port(scheduler)
        # a plain socket first: a refused or unknown address fails at once (a Client
        # would retry until its timeout, and can hang on close when it never connected)
        import socket

        try:
            with socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT_S) as sock:
                if scheme == "tcp":
                    _expect_dask_handshake(sock, scheduler)
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise PimsimError(f"cannot reach the Dask scheduler at {scheduler}: {reason}") from None
    try:
        client = Client(scheduler, timeout=f"{_CONNECT_TIMEOUT_S}s", set_as_default=False)
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        raise PimsimError(f"cannot reach the Dask scheduler at {scheduler}: {_one_line(exc)}") from None
    return client, True


def _run_dask(points: list[dict], client) -> Iterator[dict]:
    """The points on a Dask distributed cluster, through a connected ``Client``."""
    from distributed import as_completed

    futures = [client.submit(run_point, p, pure=False) for p in points]
    where = {f.key: p for f, p in zip(futures, points)}
    for f in as_completed(futures, loop=client.loop):
        try:
            row = f.result()
        except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker: record and go on
            row = point_row(where[f.key])
            row.update(status="error", error=_one_line(exc))
        f.release()
        yield row


def _new_folders(path: Path) -> list[Path]:
    """The folders that creating ``path`` would make, deepest first."""
    made = []
    while not path.exists() and path.parent != path:
        made.append(path)
        path = path.parent
    return made


def sweep(source, *, workers: int | None = 1, scheduler=None, out: str | os.PathLike | None = None,
          resume: bool = False, progress: Callable[[int, int, dict], None] | None = None) -> SweepResult:
    """Run a sweep (a YAML file path or a dict, see docs/sweeps.md) and return its table.

    ``workers`` 1 runs the points in this process; more uses a local process pool
    (``None``: one per core). ``scheduler`` (an address such as ``tcp://host:8786``, or a
    ``distributed.Client``) runs them on a Dask cluster instead; an address is reached
    before anything is written. With ``out`` the plan, the journal and the tables go to
    that folder: every finished row is appended to ``journal.jsonl`` (fsynced) as it
    arrives, and ``results.csv``/``results.jsonl`` (sorted by point index) are written
    when the sweep ends; ``resume`` skips points the journal already holds, after checking
    the folder's manifest and every journal line (a damaged folder is an error, and is
    left as it is). A new sweep that fails before its first point finishes leaves no
    files behind. ``progress(done, total, row)`` hears about each finished point.
    """
    # the arguments first, so a bad one fails before the (possibly long) plan is made
    if workers is not None and (not _is_int(workers) or workers < 1):
        raise PimsimError(f"workers must be a positive integer, got {workers!r}")
    if not isinstance(resume, bool):
        raise PimsimError(f"resume must be True or False, got {resume!r}")
    if progress is not None and not callable(progress):
        raise PimsimError(f"progress must be a callable (done, total, row) or None, got {progress!r}")
    out_dir = None if out is None else _path_arg(out, "out", error=OutputError)
    if out_dir is None and resume:
        raise PimsimError("resume needs an output folder (--out)")
    if scheduler is not None and isinstance(scheduler, str):
        _scheduler_host_port(scheduler)  # a malformed address fails before the plan is made
    if out_dir is not None:
        from pimsim.io import check_output

        check_output(out_dir, folder=True, what=f"out {out_dir}")
    the_plan = plan(source)
    n_workers = _default_workers() if workers is None else workers

    # everything that can be checked is checked before the first byte is written
    finished: list[dict] = []
    fresh = out_dir is not None
    keys = {p.index: p.key for p in the_plan.points}
    if out_dir is not None:
        manifest = out_dir / MANIFEST
        if manifest.exists():
            if not resume:
                raise PimsimError(f"{out_dir} already holds a sweep; pass --resume to finish it "
                                  f"or choose another --out")
            old = read_manifest(manifest)
            if old["digest"] != the_plan.digest:
                raise PimsimError(f"{out_dir} holds a different sweep ({old['name']!r}, "
                                  f"{len(old['points'])} points); choose another --out")
            finished = read_journal(out_dir / JOURNAL, keys=keys)  # checks every line
            fresh = False
        elif resume and (out_dir / JOURNAL).exists():
            raise PimsimError(f"{out_dir}: a journal without {MANIFEST}; cannot resume")
    client, own_client = _connect(scheduler) if scheduler is not None else (None, False)

    journal = None
    made = _new_folders(out_dir) if fresh else []
    recorded = 0
    try:
        if out_dir is not None:
            from pimsim.io import atomic_write

            if fresh:
                with atomic_write(out_dir / MANIFEST) as fh:
                    fh.write(json.dumps(the_plan.manifest(), indent=1, sort_keys=True) + "\n")
                (out_dir / JOURNAL).unlink(missing_ok=True)
            else:
                read_journal(out_dir / JOURNAL, repair=True, keys=keys)  # cut a torn last line
            journal = _Journal(out_dir / JOURNAL)

        done = {r["index"]: r for r in finished}
        todo = [p.to_dict() for p in the_plan.points if p.index not in done]
        total = len(the_plan.points)
        count = len(done)
        if client is not None:
            runner = _run_dask(todo, client)
        elif n_workers == 1 or len(todo) <= 1:
            runner = _run_inline(todo)
        else:
            runner = _run_pool(todo, n_workers)
        try:
            for row in runner:
                done[row["index"]] = row
                if journal is not None:
                    journal.append(row)
                    recorded += 1
                count += 1
                if progress is not None:
                    progress(count, total, row)
        finally:
            if hasattr(runner, "close"):
                runner.close()
            if journal is not None:
                journal.close()
                journal = None
    except BaseException:
        if journal is not None:
            journal.close()
        if fresh and recorded == 0:  # a new sweep that finished nothing: leave nothing
            for name in (MANIFEST, JOURNAL):
                with contextlib.suppress(OSError):
                    (out_dir / name).unlink(missing_ok=True)
            for folder in made:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty
        raise
    finally:
        if own_client:
            client.close()
    result = SweepResult(name=the_plan.name, rows=[done[i] for i in sorted(done)], axes=the_plan.axes,
                         total=total, out=str(out_dir) if out_dir is not None else None,
                         skipped=len(finished))
    if out_dir is not None:
        write_tables(result, out_dir)
    return result


def write_tables(result: SweepResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``results.csv`` and ``results.jsonl`` (each atomically) and return their paths."""
    from pimsim.io import atomic_write

    paths = {}
    for name, text in ((TABLE_CSV, result.to_csv()), (TABLE_JSONL, result.to_jsonl())):
        path = Path(out_dir) / name
        with atomic_write(path, "w") as fh:
            fh.write(text)
        paths[name] = path
    return paths


def load(out_dir: str | os.PathLike) -> SweepResult:
    """A sweep folder's table as it stands (finished rows of the journal, sorted)."""
    out_dir = _path_arg(out_dir, "sweep folder")
    if not (out_dir / MANIFEST).is_file():
        raise PimsimError(f"{out_dir}: no sweep manifest ({MANIFEST})")
    manifest = read_manifest(out_dir / MANIFEST)
    rows = read_journal(out_dir / JOURNAL, keys=_manifest_keys(manifest))
    return SweepResult(name=manifest["name"], rows=rows, axes=tuple(manifest.get("axes", ())),
                       total=len(manifest["points"]), out=str(out_dir))


class _CallableModule(types.ModuleType):
    """``pimsim.sweep(...)`` is :func:`sweep`; its helpers stay module attributes."""

    def __call__(self, *args, **kwargs):
        return sweep(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["Plan", "Point", "SweepResult", "load", "pareto_front", "plan", "preset_value",
           "read_journal", "read_manifest", "run_point", "sweep", "write_tables"]
