"""The trace file format: vocabulary, validation, loading and canonical writing.

A trace is one JSON object (see docs/traces.md for the full description). This module
needs nothing but the standard library, so simulation can load bundled traces without
torch. Every check names the file and the field path of the bad value, in one line.

The op vocabulary is data (``OP_FIELDS``): each op kind lists its own fields and their
types; the loader rejects unknown kinds, missing fields and unknown fields alike.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterator, Mapping

from pimsim.errors import PimsimError
from pimsim.io import atomic_write, not_utf8

#: Version of the trace format; bumped on any incompatible change.
SCHEMA_VERSION = 1

#: Name of the schema, written into every trace so that a stray JSON file is recognised.
SCHEMA_NAME = "pimsim-trace"

#: Symbol used for the KV length of attention ops: the context length *after* this
#: step's tokens are appended (past tokens + this step's tokens).
CTX = "ctx"

PHASES = ("prefill", "decode")


class TraceError(PimsimError):
    """A trace file (or a trace being built) is malformed; the message names the field."""


# --- field types -------------------------------------------------------------------------
# Each checker returns an error text (what was expected) or None when the value is fine.


def _pos_int(v: Any) -> str | None:
    return None if type(v) is int and v > 0 else "a positive integer"


def _nonneg_int(v: Any) -> str | None:
    return None if type(v) is int and v >= 0 else "a non-negative integer"


def _str(v: Any) -> str | None:
    return None if isinstance(v, str) and v else "a non-empty string"


def _opt_str(v: Any) -> str | None:
    return None if v is None or (isinstance(v, str) and v) else "null or a non-empty string"


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def _opt_num(v: Any) -> str | None:
    ok = v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)
                       and math.isfinite(v))
    return None if ok else "null or a finite number"


def _opt_pos_int(v: Any) -> str | None:
    return None if v is None or (type(v) is int and v > 0) else "null or a positive integer"


def _kv_len(v: Any) -> str | None:
    return None if isinstance(v, str) and v == CTX else f'"{CTX}"'


def _shape(v: Any) -> str | None:
    ok = isinstance(v, list) and all(type(x) is int and x >= 0 for x in v)
    return None if ok else "a list of non-negative integers"


def _one_of(*choices: str):
    def check(v: Any) -> str | None:
        return None if isinstance(v, str) and v in choices else "one of " + ", ".join(choices)

    return check


ACTIVATIONS = ("gelu", "gelu_tanh", "gelu_quick", "silu", "relu", "relu2", "tanh", "sigmoid")
ELEMENTWISE = ("add", "mul", "sub", "div", "neg", "cat", "other")

#: Fields every op carries, beyond its kind-specific fields.
COMMON_FIELDS: Mapping[str, Any] = MappingProxyType({
    "op": _str,          # the op kind, a key of OP_FIELDS
    "module": _str,      # dotted name of the owning torch module ("<root>" for the model)
    "layer": None,       # decoder layer index, or null outside the layers (checked separately)
    "deps": None,        # indices of earlier ops of the same phase whose outputs this op reads
    "dtype": _str,       # data type of the op's activations (inputs/outputs)
})

#: The op vocabulary: kind -> {field: checker}. Weights are referenced by name and listed
#: in the trace's ``weights`` table.
OP_FIELDS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    # token or position lookup: reads `tokens` rows of a (rows x dim) table
    "embedding": {"weight": _str, "rows": _pos_int, "dim": _pos_int, "tokens": _pos_int,
                  "role": _one_of("token", "position", "other")},
    # y[tokens, out] = x[tokens, in] . W (+ b); weight stored as `weight_layout`
    "linear": {"weight": _str, "bias": _opt_str, "in_features": _pos_int,
               "out_features": _pos_int, "tokens": _pos_int,
               "weight_layout": _one_of("out_in", "in_out")},
    # the output projection to the vocabulary (a linear; weight may be tied to the embedding)
    "lm_head": {"weight": _str, "bias": _opt_str, "in_features": _pos_int,
                "out_features": _pos_int, "tokens": _pos_int,
                "weight_layout": _one_of("out_in", "in_out")},
    "layernorm": {"weight": _opt_str, "bias": _opt_str, "features": _pos_int,
                  "tokens": _pos_int, "eps": _opt_num},
    "rmsnorm": {"weight": _opt_str, "bias": _opt_str, "features": _pos_int,
                "tokens": _pos_int, "eps": _opt_num},
    "activation": {"kind": _one_of(*ACTIVATIONS), "features": _pos_int, "tokens": _pos_int},
    # elementwise op on (tokens x features) elements; `operands` tensor inputs, `scalar`
    # when one operand is a constant
    "elementwise": {"kind": _one_of(*ELEMENTWISE),
                    "role": _one_of("residual", "gate", "scale", "embedding_sum", "other"),
                    "features": _pos_int, "tokens": _pos_int, "operands": _pos_int,
                    "scalar": _bool},
    # rotary position embedding applied to q or k: heads x tokens vectors of head_dim,
    # of which the first rotary_dim elements are rotated
    "rotary": {"target": _one_of("q", "k"), "heads": _pos_int, "head_dim": _pos_int,
               "rotary_dim": _pos_int, "tokens": _pos_int},
    # this step's K or V rows written into the cache at positions ctx-tokens .. ctx-1
    "kv_append": {"target": _one_of("k", "v"), "kv_heads": _pos_int, "head_dim": _pos_int,
                  "tokens": _pos_int},
    # scores[h, i, j] = q[h, i] . K[h // group, j] for j < kv_len (K heads not expanded)
    "attn_score": {"q_heads": _pos_int, "kv_heads": _pos_int, "head_dim": _pos_int,
                   "q_len": _pos_int, "kv_len": _kv_len, "window": _opt_pos_int,
                   "causal": _bool, "scale": _opt_num},
    "softmax": {"heads": _pos_int, "q_len": _pos_int, "kv_len": _kv_len,
                "window": _opt_pos_int, "causal": _bool},
    # out[h, i] = sum_j p[h, i, j] V[h // group, j]
    "attn_context": {"q_heads": _pos_int, "kv_heads": _pos_int, "head_dim": _pos_int,
                     "q_len": _pos_int, "kv_len": _kv_len, "window": _opt_pos_int,
                     "causal": _bool},
    # anything the normaliser does not recognise, kept so that nothing is silently lost
    "other": {"aten": _str, "inputs": None, "outputs": None},
})

#: Config keys that give the model's maximum context in positions, in the order they are
#: read (the first one present gives it). Each is null or a positive integer.
CONTEXT_KEYS = ("n_positions", "max_position_embeddings", "n_ctx", "seq_length")

TOP_FIELDS = ("schema", "schema_version", "model", "source", "config", "config_hash",
              "libraries", "dtype", "parameters", "weights", "phases")


# --- the in-memory trace ------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One normalised operator. ``attrs`` holds the kind-specific fields."""

    index: int
    op: str
    module: str
    layer: int | None
    deps: tuple[int, ...]
    dtype: str
    attrs: Mapping[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.attrs[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)


@dataclass(frozen=True)
class Phase:
    name: str          # "prefill" or "decode"
    tokens: int        # tokens processed by this step
    past: int          # tokens in the KV cache before this step (when it was recorded)
    ops: tuple[Op, ...]

    def layer_ops(self, layer: int) -> tuple[Op, ...]:
        return tuple(o for o in self.ops if o.layer == layer)


@dataclass(frozen=True)
class Trace:
    """A validated trace. Build it with :func:`load_trace` or :func:`trace_from_dict`."""

    model: str
    source: str
    config: Mapping[str, Any]
    config_hash: str
    libraries: Mapping[str, str]
    dtype: str
    parameters: int
    weights: Mapping[str, Mapping[str, Any]]
    phases: Mapping[str, Phase]
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def prefill(self) -> Phase:
        return self.phases["prefill"]

    @property
    def decode(self) -> Phase:
        return self.phases["decode"]

    @property
    def num_layers(self) -> int:
        layers = [o.layer for o in self.decode.ops if o.layer is not None]
        return max(layers) + 1 if layers else 0


# --- validation ---------------------------------------------------------------------------


def model_context(config: Mapping[str, Any]) -> int | None:
    """The maximum context (positions) a config gives (:data:`CONTEXT_KEYS`), or None."""
    for key in CONTEXT_KEYS:
        v = config.get(key)
        if type(v) is int and v > 0:
            return v
    return None


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of an architecture config (:class:`TraceError` when it
    holds something JSON cannot carry: NaN, an infinity, a non-string key, a set ...)."""
    try:
        text = json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TraceError(f"config: not JSON data ({exc})") from None
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


class _Checker:
    def __init__(self, origin: str):
        self.origin = origin

    def fail(self, where: str, expected: str, value: Any) -> None:
        shown = json.dumps(value) if _jsonable(value) else repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        raise TraceError(f"{self.origin}: {where}: expected {expected}, got {shown}")

    def need(self, obj: Mapping[str, Any], key: str, where: str) -> Any:
        if key not in obj:
            raise TraceError(f"{self.origin}: {where}{key}: missing field")
        return obj[key]


def _non_finite(v: Any, where: str) -> tuple[str, float] | None:
    """The path and value of the first NaN or infinity in decoded JSON ``v`` (Python's json
    reads ``NaN``, ``Infinity`` and numbers too large for a float such as ``1e400``)."""
    stack = [(v, where)]
    while stack:
        v, where = stack.pop()
        if isinstance(v, float):
            if not math.isfinite(v):
                return where, v
        elif isinstance(v, dict):
            stack.extend((x, f"{where}.{k}" if where else str(k))
                         for k, x in reversed(list(v.items())))
        elif isinstance(v, (list, tuple)):
            stack.extend((x, f"{where}[{i}]") for i, x in reversed(list(enumerate(v))))
    return None


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


def trace_from_dict(data: Any, origin: str = "<trace>") -> Trace:
    """Validate a decoded trace object and return a :class:`Trace`.

    Raises :class:`TraceError` naming ``origin`` and the first bad field.
    """
    c = _Checker(origin)
    if not isinstance(data, dict):
        c.fail("top level", "a JSON object", type(data).__name__)
    bad_number = _non_finite(data, "")
    if bad_number:
        c.fail(bad_number[0], "a finite number (not NaN, Infinity or beyond ±1.8e308)",
               bad_number[1])
    for key in data:
        if key not in TOP_FIELDS:
            raise TraceError(f"{origin}: {key}: unknown field")
    if c.need(data, "schema", "") != SCHEMA_NAME:
        c.fail("schema", f'"{SCHEMA_NAME}"', data["schema"])
    version = c.need(data, "schema_version", "")
    if type(version) is not int or version != SCHEMA_VERSION:
        c.fail("schema_version", f"{SCHEMA_VERSION} (this pimsim's trace format)", version)
    for key, check in (("model", _str), ("source", _str), ("dtype", _str),
                       ("parameters", _pos_int), ("config_hash", _str)):
        bad = check(c.need(data, key, ""))
        if bad:
            c.fail(key, bad, data[key])
    config = c.need(data, "config", "")
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        c.fail("config", "an object with a model_type", config)
    try:
        digest = config_hash(config)
    except TraceError as exc:
        raise TraceError(f"{origin}: {exc}") from None
    if digest != data["config_hash"]:
        c.fail("config_hash", f"{digest} (hash of config)", data["config_hash"])
    for key in CONTEXT_KEYS:
        if config.get(key) is not None and _pos_int(config[key]):
            c.fail(f"config.{key}", "null or a positive integer (the maximum context, in "
                   "positions)", config[key])
    libraries = c.need(data, "libraries", "")
    if not isinstance(libraries, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in libraries.items()):
        c.fail("libraries", "an object of name: version strings", libraries)

    weights = c.need(data, "weights", "")
    if not isinstance(weights, dict) or not weights:
        c.fail("weights", "a non-empty object", weights)
    total = 0
    for name, w in weights.items():
        where = f"weights.{name}"
        if not isinstance(w, dict) or set(w) != {"shape", "dtype"}:
            c.fail(where, 'an object with "shape" and "dtype"', w)
        if _shape(w["shape"]) or not w["shape"]:
            c.fail(where + ".shape", "a list of positive integers", w["shape"])
        if _str(w["dtype"]):
            c.fail(where + ".dtype", "a dtype name", w["dtype"])
        total += math.prod(w["shape"])
    if total != data["parameters"]:
        c.fail("parameters", f"{total} (the elements of the weights table)", data["parameters"])

    phases_raw = c.need(data, "phases", "")
    if not isinstance(phases_raw, list) or [p.get("phase") if isinstance(p, dict) else None
                                            for p in phases_raw] != list(PHASES):
        c.fail("phases", "a list of a prefill and a decode phase, in that order",
               [p.get("phase") if isinstance(p, dict) else p for p in phases_raw]
               if isinstance(phases_raw, list) else phases_raw)
    phases: dict[str, Phase] = {}
    for pi, p in enumerate(phases_raw):
        phases[p["phase"]] = _phase(c, p, f"phases[{pi}]", weights)
    if phases["decode"].tokens != 1:
        c.fail("phases[1].tokens", "1 (one decode step)", phases["decode"].tokens)
    for pi, name in enumerate(PHASES):
        _check_phase_consistency(c, phases[name], f"phases[{pi}]", weights)
    _check_attention_across_phases(c, phases)

    return Trace(model=data["model"], source=data["source"], config=config,
                 config_hash=data["config_hash"], libraries=dict(libraries), dtype=data["dtype"],
                 parameters=data["parameters"], weights=weights, phases=phases, raw=data)


def _phase(c: _Checker, p: dict, where: str, weights: Mapping[str, Any]) -> Phase:
    for key in p:
        if key not in ("phase", "tokens", "past", "ops"):
            raise TraceError(f"{c.origin}: {where}.{key}: unknown field")
    tokens = c.need(p, "tokens", where + ".")
    if _pos_int(tokens):
        c.fail(where + ".tokens", "a positive integer", tokens)
    past = c.need(p, "past", where + ".")
    if _nonneg_int(past):
        c.fail(where + ".past", "a non-negative integer", past)
    ops_raw = c.need(p, "ops", where + ".")
    if not isinstance(ops_raw, list) or not ops_raw:
        c.fail(where + ".ops", "a non-empty list", ops_raw)
    ops = []
    for i, o in enumerate(ops_raw):
        ops.append(_op(c, o, i, f"{where}.ops[{i}]", weights))
    return Phase(name=p["phase"], tokens=tokens, past=past, ops=tuple(ops))


def _op(c: _Checker, o: Any, index: int, where: str, weights: Mapping[str, Any]) -> Op:
    if not isinstance(o, dict):
        c.fail(where, "an object", o)
    kind = c.need(o, "op", where + ".")
    if not isinstance(kind, str) or kind not in OP_FIELDS:
        c.fail(where + ".op", "one of " + ", ".join(OP_FIELDS), kind)
    spec = OP_FIELDS[kind]
    for key in o:
        if key not in COMMON_FIELDS and key not in spec:
            raise TraceError(f"{c.origin}: {where}.{key}: unknown field for op {kind!r}")
    for key in list(COMMON_FIELDS) + list(spec):
        value = c.need(o, key, where + ".")
        check = COMMON_FIELDS.get(key) or spec.get(key)
        if check is not None:
            bad = check(value)
            if bad:
                c.fail(f"{where}.{key}", bad, value)
    layer = o["layer"]
    if layer is not None and _nonneg_int(layer):
        c.fail(where + ".layer", "null or a non-negative integer", layer)
    deps = o["deps"]
    if not isinstance(deps, list) or not all(type(d) is int and 0 <= d < index for d in deps) \
            or deps != sorted(set(deps)):
        c.fail(where + ".deps", f"a sorted list of distinct op indices below {index}", deps)
    for key in ("weight", "bias"):
        name = o.get(key)
        if key in spec and name is not None and name not in weights:
            c.fail(f"{where}.{key}", "the name of an entry of the weights table", name)
    if kind in ("linear", "lm_head"):
        n = o["in_features"] * o["out_features"]
        if math.prod(weights[o["weight"]]["shape"]) != n:
            c.fail(where + ".weight", f"a weight of in_features x out_features = {n} elements",
                   weights[o["weight"]]["shape"])
    if kind in ("attn_score", "attn_context") and o["q_heads"] % o["kv_heads"]:
        c.fail(where + ".kv_heads", f"a divisor of q_heads ({o['q_heads']})", o["kv_heads"])
    attrs = {k: v for k, v in o.items() if k not in COMMON_FIELDS}
    return Op(index=index, op=kind, module=o["module"], layer=layer, deps=tuple(deps),
              dtype=o["dtype"], attrs=MappingProxyType(attrs))


#: Attention geometry every attention op of a layer must agree on, per op kind (the
#: softmax calls the query heads ``heads``; a kv_append carries only the K/V side).
_ATTN_FIELDS: Mapping[str, tuple[tuple[str, str], ...]] = MappingProxyType({
    "attn_score": (("q_heads", "q_heads"), ("kv_heads", "kv_heads"), ("head_dim", "head_dim"),
                   ("q_len", "q_len"), ("window", "window"), ("causal", "causal")),
    "attn_context": (("q_heads", "q_heads"), ("kv_heads", "kv_heads"), ("head_dim", "head_dim"),
                     ("q_len", "q_len"), ("window", "window"), ("causal", "causal")),
    "softmax": (("heads", "q_heads"), ("q_len", "q_len"), ("window", "window"),
                ("causal", "causal")),
    "kv_append": (("kv_heads", "kv_heads"), ("head_dim", "head_dim")),
})


def _check_phase_consistency(c: _Checker, phase: Phase, where: str,
                             weights: Mapping[str, Any]) -> None:
    """Cross-op checks of one phase: sizes agree with the step, the weights table and the
    other ops of the layer. Each layer with attention has one attn_score, softmax and
    attn_context, and one kv_append per K and V, all of one geometry."""
    T = phase.tokens
    by_layer: dict[int, dict[str, list[Op]]] = {}
    for o in phase.ops:
        at = f"{where}.ops[{o.index}]"
        if "tokens" in o.attrs and o["tokens"] > T:
            c.fail(at + ".tokens", f"at most the phase's {T} tokens", o["tokens"])
        if o.op in ("kv_append", "rotary") and o["tokens"] != T:
            c.fail(at + ".tokens", f"the phase's {T} tokens (every token of the step)",
                   o["tokens"])
        if "q_len" in o.attrs and o["q_len"] != T:
            c.fail(at + ".q_len", f"the phase's {T} tokens", o["q_len"])
        sizes = []
        if o.op == "embedding":
            sizes.append(("weight", o["rows"] * o["dim"], "rows x dim"))
        elif o.op in ("layernorm", "rmsnorm"):
            sizes += [(k, o["features"], "features") for k in ("weight", "bias")]
        elif o.op in ("linear", "lm_head"):
            sizes.append(("bias", o["out_features"], "out_features"))
        for key, n, what in sizes:
            if o.get(key) is not None and math.prod(weights[o[key]]["shape"]) != n:
                c.fail(f"{at}.{key}", f"a weight of {what} = {n} elements",
                       weights[o[key]]["shape"])
        if o.op == "rotary" and o["rotary_dim"] > o["head_dim"]:
            c.fail(at + ".rotary_dim", f"at most head_dim ({o['head_dim']})", o["rotary_dim"])
        if o.op in _ATTN_FIELDS or o.op == "rotary":
            if o.layer is None:
                c.fail(at + ".layer", f"a layer index (a {o.op} op belongs to a layer)", None)
            kind = o.op if o.op not in ("kv_append", "rotary") else f"{o.op}:{o['target']}"
            by_layer.setdefault(o.layer, {}).setdefault(kind, []).append(o)
    for layer, kinds in by_layer.items():
        for kind, ops in kinds.items():
            if len(ops) > 1:
                c.fail(f"{where}.ops[{ops[1].index}].op", f"one {kind} op per layer (layer "
                       f"{layer} already has ops[{ops[0].index}])", ops[1].op)
        first = next(iter(kinds.values()))[0]
        for kind in ("attn_score", "softmax", "attn_context", "kv_append:k", "kv_append:v"):
            if kind not in kinds:
                c.fail(f"{where}.ops[{first.index}]", f"layer {layer}'s attention to have one "
                       f"attn_score, softmax, attn_context, kv_append:k and kv_append:v (it "
                       f"has no {kind})", first.op)
        score = kinds["attn_score"][0]
        for kind, ops in kinds.items():
            o = ops[0]
            fields = _ATTN_FIELDS.get(o.op)
            if o.op == "rotary":
                heads = "q_heads" if o["target"] == "q" else "kv_heads"
                fields = (("heads", heads), ("head_dim", "head_dim"))
            for key, ref in fields:
                if o[key] != score[ref]:
                    c.fail(f"{where}.ops[{o.index}].{key}", f"{json.dumps(score[ref])}, the "
                           f"{ref} of layer {layer}'s attn_score (ops[{score.index}])", o[key])


def _check_attention_across_phases(c: _Checker, phases: Mapping[str, Phase]) -> None:
    """Prefill and decode see the same attention geometry in every layer (``causal`` may
    differ: one query token needs no mask)."""
    geometry = ("q_heads", "kv_heads", "head_dim", "window")
    prefill = {o.layer: o for o in phases["prefill"].ops if o.op == "attn_score"}
    dec = {o.layer: o for o in phases["decode"].ops if o.op == "attn_score"}
    if set(prefill) != set(dec):
        c.fail("phases", "the same layers with attention in prefill and decode",
               f"prefill {sorted(prefill)}, decode {sorted(dec)}")
    for layer, o in dec.items():
        for key in geometry:
            if o[key] != prefill[layer][key]:
                c.fail(f"phases[1].ops[{o.index}].{key}", f"{json.dumps(prefill[layer][key])}, "
                       f"as in the prefill (phases[0].ops[{prefill[layer].index}])", o[key])


# --- reading and writing ------------------------------------------------------------------


def load_trace(path: str | os.PathLike) -> Trace:
    """Read and validate a trace file; errors name the file and the field."""
    path = Path(_path_text(path, "trace"))
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TraceError(f"{path}: cannot read trace: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise TraceError(f"{path}: {not_utf8(exc)}") from None
    except ValueError as exc:          # e.g. a NUL character in the name
        raise TraceError(f"{str(path)!r}: cannot read trace: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TraceError(f"{path}: line {exc.lineno}: not valid JSON: {exc.msg}") from None
    return trace_from_dict(data, origin=str(path))


def _path_text(path: Any, what: str) -> str:
    """The text of a file path argument (a non-empty str or os.PathLike), else a TraceError."""
    try:
        text = os.fspath(path)
    except TypeError:
        text = None
    if not isinstance(text, str):
        raise TraceError(f"{what} path: expected a file path (str or os.PathLike), got "
                         f"{path!r:.60}")
    if not text:
        raise TraceError(f"{what} path: empty (expected a {what} file)")
    return text


def dumps(data: Mapping[str, Any]) -> str:
    """Canonical text of a trace: sorted keys, one op per line, a final newline.

    Equal inputs give byte-identical text (floats use Python's shortest repr).
    """

    def compact(v: Any) -> str:
        return json.dumps(v, sort_keys=True, separators=(",", ":"), allow_nan=False)

    lines = ["{"]
    keys = sorted(data)
    for ki, key in enumerate(keys):
        tail = "," if ki < len(keys) - 1 else ""
        value = data[key]
        if key == "phases":
            lines.append('  "phases": [')
            for pi, p in enumerate(value):
                lines.append("    {")
                pkeys = sorted(p)
                for qi, pk in enumerate(pkeys):
                    ptail = "," if qi < len(pkeys) - 1 else ""
                    if pk == "ops":
                        lines.append('      "ops": [')
                        for oi, op in enumerate(p["ops"]):
                            otail = "," if oi < len(p["ops"]) - 1 else ""
                            lines.append("        " + compact(op) + otail)
                        lines.append("      ]" + ptail)
                    else:
                        lines.append(f"      {compact(pk)}: {compact(p[pk])}{ptail}")
                lines.append("    }" + ("," if pi < len(value) - 1 else ""))
            lines.append("  ]" + tail)
        elif key in ("weights", "config"):
            lines.append(f"  {compact(key)}: {{")
            wkeys = sorted(value)
            for wi, wk in enumerate(wkeys):
                wtail = "," if wi < len(wkeys) - 1 else ""
                lines.append(f"    {compact(wk)}: {compact(value[wk])}{wtail}")
            lines.append("  }" + tail)
        else:
            lines.append(f"  {compact(key)}: {compact(value)}{tail}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_trace(data: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Validate ``data`` and write it canonically (atomically) to ``path``."""
    path = _path_text(path, "trace")
    trace_from_dict(data, origin=path)
    text = dumps(data)
    try:
        with atomic_write(path) as fh:
            fh.write(text)
    except OSError as exc:
        raise TraceError(f"{path}: cannot write trace: {exc.strerror or exc}") from None


def iter_ops(trace: Trace) -> Iterator[tuple[str, Op]]:
    for name, phase in trace.phases.items():
        for op in phase.ops:
            yield name, op
