"""Per-trace summary: parameters, weight bytes, FLOPs and bytes moved per step.

The roofline baselines use these numbers. Conventions (also in docs/traces.md):

* FLOPs: a multiply-add is 2 FLOPs. Matrix products count 2*M*K*N (+ M*N for a bias);
  attention counts only the (query, key) pairs it really uses: with ``causal`` query i of
  this step sees keys 0 .. past+i, and a sliding window caps that at ``window``.
  Non-linear ops use the per-element counts in ``FLOPS_PER_ELEMENT`` (a convention, not a
  measurement; the ASIC model has its own cycle counts).
* Bytes moved (an upper bound without any on-chip reuse between ops): weights read once
  per step (an embedding reads only its looked-up rows), K and V rows read by attention,
  K and V rows written by the cache append, and every op's activation inputs and outputs.
"""

from __future__ import annotations

import math
from typing import Any

from pimsim.errors import count_arg
from workloads.schema import Op, Phase, Trace, TraceError

#: Bytes per element of each dtype name used in traces.
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "float64": 8, "int8": 1,
               "uint8": 1, "int32": 4, "int64": 8, "float8_e4m3fn": 1, "float8_e5m2": 1}

#: FLOPs per element of the ops that are not matrix products (convention; see module doc).
FLOPS_PER_ELEMENT = {
    "layernorm": 8,      # mean, centre, square+sum (2), rsqrt scale, affine (2), spare 1
    "rmsnorm": 4,        # square+sum (2), scale by rsqrt (1), weight (1)
    "softmax": 5,        # max, subtract, exp, sum, divide (per score)
    "activation.gelu_tanh": 8,
    "activation.gelu": 8,
    "activation.gelu_quick": 4,
    "activation.silu": 4,
    "activation.sigmoid": 3,
    "activation.tanh": 3,
    "activation.relu": 1,
    "activation.relu2": 2,
    "rotary": 3,         # x*cos + rotate(x)*sin per rotated element
    "elementwise": 1,
}


def dtype_bytes(name: str) -> int:
    try:
        return DTYPE_BYTES[name]
    except KeyError:
        raise TraceError(f"dtype {name!r}: unknown element size") from None


def attended_pairs(q_len: int, past: int, causal: bool, window: int | None) -> int:
    """Number of (query, key) pairs one head evaluates in a step."""
    total = 0
    ctx = past + q_len
    for i in range(q_len):
        keys = past + i + 1 if causal else ctx
        if window is not None:
            keys = min(keys, window)
        total += keys
    return total


def op_cost(op: Op, past: int, weights) -> dict[str, int]:
    """FLOPs and bytes of one op at a step whose KV cache held ``past`` tokens before it."""
    a = op.attrs
    act = dtype_bytes(op.dtype)
    kind = op.op
    flops = weight_b = kv_read = kv_write = act_b = 0

    def wbytes(name: str | None) -> int:
        if name is None:
            return 0
        w = weights[name]
        return math.prod(w["shape"]) * dtype_bytes(w["dtype"])

    if kind in ("linear", "lm_head"):
        t, i, o = a["tokens"], a["in_features"], a["out_features"]
        flops = 2 * t * i * o + (t * o if a["bias"] else 0)
        weight_b = wbytes(a["weight"]) + wbytes(a["bias"])
        act_b = (t * i + t * o) * act
    elif kind == "embedding":
        row = wbytes(a["weight"]) // a["rows"]
        weight_b = a["tokens"] * row
        act_b = a["tokens"] * a["dim"] * act
    elif kind in ("layernorm", "rmsnorm"):
        n = a["tokens"] * a["features"]
        flops = FLOPS_PER_ELEMENT[kind] * n
        weight_b = wbytes(a["weight"]) + wbytes(a["bias"])
        act_b = 2 * n * act
    elif kind == "activation":
        n = a["tokens"] * a["features"]
        flops = FLOPS_PER_ELEMENT["activation." + a["kind"]] * n
        act_b = 2 * n * act
    elif kind == "elementwise":
        n = a["tokens"] * a["features"]
        flops = 0 if a["kind"] == "cat" else n
        act_b = (a["operands"] + 1) * n * act
    elif kind == "rotary":
        n = a["heads"] * a["tokens"]
        flops = FLOPS_PER_ELEMENT["rotary"] * n * a["rotary_dim"]
        act_b = 2 * n * a["head_dim"] * act
    elif kind == "kv_append":
        kv_write = a["kv_heads"] * a["tokens"] * a["head_dim"] * act
        act_b = kv_write
    elif kind in ("attn_score", "attn_context"):
        pairs = attended_pairs(a["q_len"], past, a["causal"], a["window"])
        flops = 2 * a["q_heads"] * pairs * a["head_dim"]
        ctx = past + a["q_len"]
        keys = ctx if a["window"] is None else min(ctx, a["window"])
        kv_read = a["kv_heads"] * keys * a["head_dim"] * act
        if kind == "attn_score":   # q in, scores out
            act_b = (a["q_heads"] * a["q_len"] * a["head_dim"] + a["q_heads"] * pairs) * act
        else:                      # probabilities in, context out
            act_b = (a["q_heads"] * pairs + a["q_heads"] * a["q_len"] * a["head_dim"]) * act
    elif kind == "softmax":
        pairs = attended_pairs(a["q_len"], past, a["causal"], a["window"])
        flops = FLOPS_PER_ELEMENT["softmax"] * a["heads"] * pairs
        act_b = 2 * a["heads"] * pairs * act
    elif kind == "other":
        pass
    else:  # pragma: no cover - the loader rejects unknown kinds
        raise TraceError(f"op kind {kind!r}: no cost model")
    return {"flops": flops, "weight_bytes": weight_b, "kv_read_bytes": kv_read,
            "kv_write_bytes": kv_write, "activation_bytes": act_b}


def phase_cost(trace: Trace, phase: Phase, ctx: int | None = None) -> dict[str, Any]:
    """Totals of one phase; ``ctx`` is the context length after the step (past + tokens)."""
    past = phase.past if ctx is None else ctx - phase.tokens
    if past < 0:
        raise TraceError(f"ctx: {ctx} is shorter than the {phase.tokens} tokens of the "
                         f"{phase.name} step")
    totals = {"flops": 0, "weight_bytes": 0, "kv_read_bytes": 0, "kv_write_bytes": 0,
              "activation_bytes": 0}
    by_op: dict[str, int] = {}
    for op in phase.ops:
        c = op_cost(op, past, trace.weights)
        for k, v in c.items():
            totals[k] += v
        by_op[op.op] = by_op.get(op.op, 0) + c["flops"]
    totals["bytes_moved"] = (totals["weight_bytes"] + totals["kv_read_bytes"]
                             + totals["kv_write_bytes"] + totals["activation_bytes"])
    return {"phase": phase.name, "tokens": phase.tokens, "past": past, "ctx": past + phase.tokens,
            **totals, "flops_by_op": dict(sorted(by_op.items()))}


def summarize(trace: Trace, ctx: int | None = None) -> dict[str, Any]:
    """Parameters, weight bytes per dtype, and the decode-step cost at context ``ctx``.

    ``ctx`` counts every token the decode step attends to, its own included (the
    position of the generated token + 1); by default the recorded one (prompt + 1).
    """
    if not isinstance(trace, Trace):
        raise TraceError(f"summarize: expected a workloads.Trace (workloads.load_trace or "
                         f"load_bundled), got {trace!r:.60}")
    if ctx is not None:
        ctx = count_arg(ctx, "ctx", "a positive integer (the context length, positions)", 1,
                        TraceError)
    weight_bytes: dict[str, int] = {}
    for w in trace.weights.values():
        n = math.prod(w["shape"]) * dtype_bytes(w["dtype"])
        weight_bytes[w["dtype"]] = weight_bytes.get(w["dtype"], 0) + n
    ops: dict[str, int] = {}
    for op in trace.decode.ops:
        ops[op.op] = ops.get(op.op, 0) + 1
    return {
        "model": trace.model,
        "parameters": trace.parameters,
        "layers": trace.num_layers,
        "dtype": trace.dtype,
        "weight_bytes": dict(sorted(weight_bytes.items())),
        "decode_ops": dict(sorted(ops.items())),
        "prompt_tokens": trace.prefill.tokens,
        "decode": phase_cost(trace, trace.decode, ctx),
        "prefill": phase_cost(trace, trace.prefill),
    }
