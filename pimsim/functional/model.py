"""A model's decode steps run with values through its mapped program.

:class:`FunctionalModel` places a model's BF16 weights in bank arrays exactly where the
placement puts them (garbage everywhere else), and runs each decode step's program: the
trace's operators in order, every matrix product as the program's MAC kernels executed
command by command with the bank MAC arithmetic (:mod:`pimsim.functional.pim`), every K and
V append as the program's write kernels into the mapped cache places, and everything else
with the ASIC's FP32 arithmetic and approximations (:mod:`pimsim.functional.asic`). The ASIC
adds the partial results a matrix product returns (one per read-out and bank) in the order
they arrive. Values written to a bank or a global buffer are rounded to BF16.
"""

from __future__ import annotations

import gc

import numpy as np

from pimsim.errors import PimsimError
from pimsim.functional import asic as A
from pimsim.functional.pim import execute


class FunctionalError(PimsimError):
    """The model cannot run in functional mode (an operator or shape it does not support)."""


def check_supported(trace, rope: bool = True) -> None:
    """Raise :class:`FunctionalError` for an operator functional mode has no model of
    (``rope``: whether rotary tables will be given)."""
    for op in trace.decode.ops:
        a = op.attrs
        if op.op == "elementwise" and a.get("scalar"):
            raise FunctionalError(f"{trace.model}: op {op.index} ({op.module}): scalar "
                                  f"elementwise operators are not supported in functional mode")
        if op.op == "rotary" and (not rope or a["rotary_dim"] != a["head_dim"]):
            raise FunctionalError(f"{trace.model}: op {op.index} ({op.module}): rotary "
                                  f"embedding needs full-width (cos, sin) tables")
        if op.op == "activation" and a["kind"] not in ("gelu_tanh", "silu", "relu"):
            raise FunctionalError(f"{trace.model}: activation {a['kind']!r} is not supported")


class FunctionalModel:
    """One model on one system, stepped token by token.

    ``weights``: every parameter the trace names, float32 arrays of BF16 values (as
    :func:`pimsim.functional.reference.bf16_weights` gives). ``rope``: (cos, sin) tables,
    (positions, head_dim) float32, for models with rotary embeddings. ``exact``: ASIC
    approximations replaced by exact functions (see :data:`asic.APPROXIMATIONS`)."""

    def __init__(self, trace, spec, weights: dict, *, rope=None, exact=(), strategy: str = "pim-gpt",
                 max_context: int | None = None, seed: int = 0):
        import mappings
        from mappings.functional import Functional, column_table

        self.trace = trace
        self.rope = rope
        self._check_ops()
        missing = sorted(set(trace.weights) - set(weights))
        if missing:
            raise FunctionalError(f"{trace.model}: no values for weight(s) {', '.join(missing[:3])}")
        self.w = {k: np.asarray(weights[k], dtype=np.float32) for k in trace.weights}
        for k, meta in trace.weights.items():
            if list(self.w[k].shape) != list(meta["shape"]):
                raise FunctionalError(f"{trace.model}: weight {k}: shape {list(self.w[k].shape)}, "
                                      f"the trace says {list(meta['shape'])}")
        self.mapping = mappings.map(trace, spec, strategy, max_context=max_context)
        self.f = Functional(self.mapping, seed=seed)
        self.asic = A.Asic(exact)
        self.rng = np.random.default_rng(seed + 1)
        self.position = 0
        self.fallbacks = 0          # kernel runs the golden functions computed
        self.values: dict[int, np.ndarray] = {}
        g = self.mapping.placement.geometry
        garbage = self.rng.uniform(-100, 100, (g.channels, g.gb_slots, g.values_per_column))
        self.gb = A.bf16_values(garbage)                 # each channel's global buffer
        pl = self.mapping.placement
        v = pl.geometry.values_per_column
        for name, regions in pl.by_weight.items():
            for r in regions:
                self.f.store_columns(r, column_table(r, self.w[name], v))

    # -- set-up -------------------------------------------------------------------------
    def _check_ops(self) -> None:
        check_supported(self.trace, rope=self.rope is not None)

    # -- one decode step ----------------------------------------------------------------
    def step(self, token: int) -> np.ndarray:
        """Feed ``token`` at the next position; return the logits (vocab,) float32.

        Python's cyclic garbage collector is paused during the step (and restored after):
        a step allocates many short-lived objects, and with a large object graph alive in
        the process (a PyTorch model) the collections it triggers cost a third of the step."""
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._step(token)
        finally:
            if enabled:
                gc.enable()

    def _step(self, token: int) -> np.ndarray:
        pos = self.position
        if pos >= self.mapping.placement.max_context:
            raise FunctionalError(f"{self.trace.model}: position {pos} is past the KV reserve of "
                                  f"{self.mapping.placement.max_context}")
        prog = self.mapping.program(pos + 1, token)
        by_op: dict[int, list] = {}
        for k in prog.kernels():
            by_op.setdefault(k.op_index, []).append(k)
        val: dict[int, np.ndarray] = {}
        out = None
        for op in self.trace.decode.ops:
            out = val[op.index] = self._op(op, val, by_op.get(op.index, []), token, pos)
        self.position += 1
        self.values = val           # every operator's output of this step (FP32 bits)
        return A.values(out)

    def _op(self, op, val, kernels, token, pos):
        a, ax = op.attrs, self.asic
        arg = [val[d] for d in op.deps]
        kind = op.op
        if kind == "embedding":
            row = token if a["role"] == "token" else pos
            return A.bits(self.w[a["weight"]][row])
        if kind == "elementwise":
            return (A.add if a["kind"] == "add" else A.mul)(arg[0], arg[1])
        if kind == "layernorm":
            return ax.layernorm(arg[0], A.bits(self.w[a["weight"]]),
                                A.bits(self.w[a["bias"]]) if a["bias"] else None, a["eps"])
        if kind == "rmsnorm":
            return ax.rmsnorm(arg[0], A.bits(self.w[a["weight"]]), a["eps"])
        if kind == "activation":
            return ax.activation(a["kind"], arg[0])
        if kind in ("linear", "lm_head"):
            return self._linear(op, arg[0], kernels)
        if kind == "rotary":
            x = self._part(op, arg[0], a["target"]).reshape(a["heads"], a["head_dim"])
            cos, sin = (A.bits(t[pos]) for t in self.rope)
            return ax.rotary(x, cos, sin).reshape(-1)
        if kind == "kv_append":
            self._append(op, self._part(op, arg[0], a["target"]), kernels, pos)
            return np.zeros(0, dtype=np.uint32)
        if kind == "attn_score":
            return self._scores(op, self._part(op, arg[0], "q"), kernels, pos)
        if kind == "softmax":
            return ax.softmax(arg[0])
        if kind == "attn_context":
            p = next(val[d] for d in op.deps if self.trace.decode.ops[d].op == "softmax")
            return self._context(op, p, kernels)
        raise FunctionalError(f"{self.trace.model}: op {op.index}: {kind!r} has no functional model")

    def _part(self, op, x, target: str) -> np.ndarray:
        """q, k or v out of a producer's output: the whole vector, or its third of a fused
        q|k|v projection (GPT-2's c_attn)."""
        att = self.mapping.placement.attention[op.layer]
        q, kv = att.q_heads * att.head_dim, att.kv_heads * att.head_dim
        size = {"q": q, "k": kv, "v": kv}[target]
        if x.size == size:
            return x
        if x.size == q + 2 * kv:
            start = {"q": 0, "k": q, "v": q + kv}[target]
            return x[start:start + size]
        raise FunctionalError(f"{self.trace.model}: op {op.index}: cannot take {target} "
                              f"({size} values) out of {x.size} values")

    # -- PIM work -----------------------------------------------------------------------
    def _mac(self, kernels, inputs_of):
        """Run MAC kernels; yield (kernel, read-out values (repeats, banks, reads))."""
        from mappings import MacKernel

        for k in kernels:
            if not isinstance(k, MacKernel):
                continue
            mem, base = self.f._arr(k.region, k.channel)
            vals, fell_back = execute(k, mem, base, inputs_of(k), self.gb[k.channel])
            self.fallbacks += fell_back
            yield k, vals

    def _columns(self, vec_bits: np.ndarray, length: int | None = None) -> np.ndarray:
        """BF16 values of vectors (the last axis), zero-padded to whole columns:
        (..., columns, values)."""
        v = self.mapping.placement.geometry.values_per_column
        size = vec_bits.shape[-1]
        n = -(-(length or size) // v) * v
        out = np.zeros(vec_bits.shape[:-1] + (n,), dtype=np.float32)
        out[..., :size] = A.values(A.to_bf16(vec_bits))
        return out.reshape(*vec_bits.shape[:-1], -1, v)

    def _linear(self, op, x, kernels):
        a = op.attrs
        idx, parts = [], []
        xin = {}                                    # input slice -> its BF16 columns

        def inputs(k):
            m = k.region.meta
            key = (m["in_offset"], m["in_len"])
            if key not in xin:
                xin[key] = self._columns(x[key[0]:key[0] + key[1]])[None, None]
            return xin[key]

        for k, vals in self._mac(kernels, inputs):
            outs = k.part.slot_out[:, k.readouts()["slot"]]            # (banks, reads)
            ok = outs >= 0
            # arrival order: read-out by read-out, bank by bank
            idx.append((outs + k.region.meta["out_offset"]).T[ok.T])
            parts.append(vals[0].T[ok.T])
        y = self._reduce(a["out_features"], idx, parts)
        return y if not a.get("bias") else A.add(y, A.bits(self.w[a["bias"]]))

    def _reduce(self, n, idx, parts):
        if not idx:
            return np.zeros(n, dtype=np.uint32)
        return self.asic.ordered_sum(n, np.concatenate(idx), A.bits(np.concatenate(parts)))

    def _append(self, op, x, kernels, pos):
        att = self.mapping.placement.attention[op.layer]
        new = (pos % att.reserve)
        xv = A.values(A.to_bf16(x)).reshape(att.kv_heads, att.head_dim)
        v = self.mapping.placement.geometry.values_per_column
        for k in kernels:
            if getattr(k, "what", "") != "write" or k.region is None:
                continue
            if (k.src_out[k.lane < 0] != new).any() if op.attrs["target"] == "k" else \
                    (v * k.src_kcol + np.maximum(k.lane, 0) != new).any():
                raise FunctionalError(f"{k.name}: writes a position other than {new}")
            if op.attrs["target"] == "k":
                self.f.write(k, lambda o, s, c, lane: np.stack(
                    [xv[si, v * ci:v * ci + v] for si, ci in zip(s, c)]) if o.size else
                    np.zeros((0, v), np.float32))
            else:
                self.f.write(k, lambda o, s, c, lane: xv[o // att.head_dim, o % att.head_dim])

    def _scores(self, op, q, kernels, pos):
        att = self.mapping.placement.attention[op.layer]
        n = min(pos + 1, att.reserve)
        group = att.q_heads // att.kv_heads
        qc = self._columns(q.reshape(att.q_heads, att.head_dim))
        qc = qc.reshape(att.kv_heads, group, *qc.shape[1:]).transpose(1, 0, 2, 3)  # (r, i, c, v)
        idx, parts = [], []
        for k, vals in self._mac(kernels, lambda k: np.ascontiguousarray(qc[:k.repeats])):
            ro = k.readouts()
            outs = k.part.slot_out[:, ro["slot"]]                          # positions
            for r in range(k.repeats):
                h = np.broadcast_to(ro["sub"] * group + r, outs.shape)
                ok = (outs >= 0) & (outs < n)
                idx.append((h * n + outs).T[ok.T])
                parts.append(vals[r].T[ok.T])
        s = self._reduce(att.q_heads * n, idx, parts).reshape(att.q_heads, n)
        return A.mul(s, A.bits(op.attrs["scale"]))

    def _context(self, op, p, kernels):
        att = self.mapping.placement.attention[op.layer]
        group = att.q_heads // att.kv_heads
        pc = self._columns(p, att.reserve)                               # (q_heads, c, v)
        pc = pc.reshape(att.kv_heads, group, *pc.shape[1:]).transpose(1, 0, 2, 3)
        idx, parts = [], []
        for k, vals in self._mac(kernels, lambda k: np.ascontiguousarray(pc[:k.repeats])):
            outs = k.part.slot_out[:, k.readouts()["slot"]]                # head*hd + d
            ok = outs >= 0
            for r in range(k.repeats):
                h = (outs // att.head_dim) * group + r
                idx.append((h * att.head_dim + outs % att.head_dim).T[ok.T])
                parts.append(vals[r].T[ok.T])
        return self._reduce(att.q_heads * att.head_dim, idx, parts)
