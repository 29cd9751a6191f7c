"""The ASIC model: operator latency and primitive-operation counts.

PIM-GPT's ASIC runs everything that is not a vector-matrix multiplication: LayerNorm /
RMSNorm, softmax, activations, residual additions, rotary embeddings and the reduction
of partial sums that the PIM channels return. Its units are FP32 adders and multipliers
(``lanes`` of each) and pipelined special-function units (exp by Taylor series,
Newton-Raphson reciprocal, fast inverse square root, GELU), the units of ``rtl/`` built
from the same primitives as ``pimsim.numerics``. Their latencies follow the RTL's formulas
(rtl/README.md): exp ``degree + 3``, reciprocal ``iterations + 2``, inverse square root
``iterations + 2``, GELU ``degree + iterations + 8`` cycles; each unit accepts one operand
per lane per cycle.

An operator is a sequence of passes over its elements. A pipelined pass over ``n``
elements through units of latency ``d`` takes ``ceil(n / lanes) + d - 1`` cycles; an
accumulating pass (a sum or maximum per row) carries a dependency through the adder, so it
takes ``ceil(n / lanes) * add_latency`` cycles plus an adder tree of ``ceil(log2(lanes))``
levels to combine the lanes. Independent rows (tokens, attention heads) overlap: the
passes of one row depend on each other, rows do not, so row r + 1 enters the pipelines as
soon as row r has issued its passes; ``rows`` rows take one row's cycles plus ``rows - 1``
times the cycles a row occupies the unit inputs (its issue cycles).

:func:`op_cost` returns the cycles and the primitive operations (FP32 adds, multiplies,
integer operations, SRAM bytes) of one operator, from which the energy model charges it.
Unknown operator kinds are an error, never a guess.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

from pimsim.errors import PimsimError


@dataclass(frozen=True)
class AsicSpec:
    """ASIC parameters (preset section ``asic``)."""

    clock_MHz: float
    lanes: int
    add_latency: int
    mul_latency: int
    exp_degree: int
    recip_iterations: int
    rsqrt_iterations: int
    sram_bytes: int

    @property
    def exp_latency(self) -> int:
        return self.exp_degree + 3

    @property
    def recip_latency(self) -> int:
        return self.recip_iterations + 2

    @property
    def rsqrt_latency(self) -> int:
        return self.rsqrt_iterations + 2

    @property
    def gelu_latency(self) -> int:
        return self.exp_degree + self.recip_iterations + 8

    @property
    def cycle_ps(self) -> float:
        return 1e6 / self.clock_MHz


@dataclass
class AsicCost:
    """Cycles (ASIC clock) and primitive operations of one operator."""

    cycles: int = 0
    adds: int = 0
    muls: int = 0
    int_ops: int = 0
    sram_read_bytes: int = 0
    sram_write_bytes: int = 0
    detail: dict = field(default_factory=dict)

    def __iadd__(self, other: "AsicCost") -> "AsicCost":
        self.cycles += other.cycles
        self.adds += other.adds
        self.muls += other.muls
        self.int_ops += other.int_ops
        self.sram_read_bytes += other.sram_read_bytes
        self.sram_write_bytes += other.sram_write_bytes
        return self

    def times(self, k: int) -> "AsicCost":
        return AsicCost(self.cycles * k, self.adds * k, self.muls * k, self.int_ops * k,
                        self.sram_read_bytes * k, self.sram_write_bytes * k, dict(self.detail))

    def rows(self, k: int, issue: int) -> "AsicCost":
        """``k`` independent rows of this one-row cost, each occupying the unit inputs for
        ``issue`` cycles: the work of ``k`` rows, one row's latency plus ``k - 1`` issue
        intervals."""
        out = self.times(k)
        if k > 1:
            out.cycles = self.cycles + (k - 1) * max(int(issue), 1)
        return out


# primitive operations of the special functions, as pimsim.numerics evaluates them
def _exp_ops(a: AsicSpec) -> tuple[int, int, int]:
    d = a.exp_degree
    return d + 4, d + 3, 1          # adds, muls, integer ops


def _recip_ops(a: AsicSpec) -> tuple[int, int, int]:
    m = a.recip_iterations
    return 1 + m, 1 + 2 * m, 1


def _rsqrt_ops(a: AsicSpec) -> tuple[int, int, int]:
    m = a.rsqrt_iterations
    return m, 4 * m, 1


def _gelu_ops(a: AsicSpec) -> tuple[int, int, int]:
    ea, em, ei = _exp_ops(a)
    ra, rm, ri = _recip_ops(a)
    return 2 + ea + ra, 4 + em + rm, ei + ri


def _pass(a: AsicSpec, n: int, depth: int) -> int:
    """A pipelined pass over n elements through units of total latency ``depth``."""
    return 0 if n <= 0 else -(-n // a.lanes) + depth - 1


def _accumulate(a: AsicSpec, n: int, depth_before: int = 0) -> int:
    """A pass that accumulates n elements into one value (sum or maximum)."""
    if n <= 0:
        return 0
    tree = math.ceil(math.log2(min(n, a.lanes))) if min(n, a.lanes) > 1 else 0
    return -(-n // a.lanes) * a.add_latency + depth_before + tree * a.add_latency


def _elementwise(a: AsicSpec, n: int, adds: int, muls: int, ints: int, depth: int,
                 operands: int = 1) -> AsicCost:
    return AsicCost(_pass(a, n, depth), adds * n, muls * n, ints * n,
                    sram_read_bytes=4 * n * operands, sram_write_bytes=4 * n)


def _activation(a: AsicSpec, kind: str) -> tuple[int, int, int, int]:
    """(adds, muls, int ops, latency) per element of an activation."""
    ea, em, ei = _exp_ops(a)
    ra, rm, ri = _recip_ops(a)
    sigmoid = (ea + 1 + ra, em + rm, ei + ri,
               a.exp_latency + a.add_latency + a.recip_latency)
    if kind in ("gelu", "gelu_tanh"):
        ga, gm, gi = _gelu_ops(a)
        return ga, gm, gi, a.gelu_latency
    if kind == "sigmoid":
        return sigmoid
    if kind in ("silu", "gelu_quick"):  # x * sigmoid(c x)
        extra = 1 if kind == "gelu_quick" else 0
        return (sigmoid[0], sigmoid[1] + 1 + extra, sigmoid[2],
                sigmoid[3] + a.mul_latency * (1 + extra))
    if kind == "tanh":  # 2 sigmoid(2x) - 1
        return (sigmoid[0] + 1, sigmoid[1] + 2, sigmoid[2],
                sigmoid[3] + 2 * a.mul_latency + a.add_latency)
    if kind == "relu":
        return 1, 0, 0, a.add_latency
    if kind == "relu2":
        return 1, 1, 0, a.add_latency + a.mul_latency
    raise PimsimError(f"ASIC: unknown activation kind {kind!r}")


def _norm(a: AsicSpec, features: int, rms: bool) -> AsicCost:
    """One row of LayerNorm (mean and variance) or RMSNorm (mean square)."""
    ra, rm, ri = _rsqrt_ops(a)
    f = features
    # pass 1: sum of squares (and sum): square then accumulate
    c = _accumulate(a, f, a.mul_latency)
    adds = f if rms else 2 * f
    muls = f
    # scalars: mean square (mul), [mean (mul), var = msq - mean^2 (mul, add)], + eps (add), rsqrt
    scalar = a.mul_latency + a.add_latency + a.rsqrt_latency
    s_adds, s_muls = 1 + ra, 1 + rm
    if not rms:
        scalar += 2 * a.mul_latency + a.add_latency
        s_adds += 1
        s_muls += 2
    # pass 2: y = (x [- mean]) * rstd * gamma [+ beta]
    depth = 2 * a.mul_latency + (0 if rms else 2 * a.add_latency)
    c += scalar + _pass(a, f, depth)
    adds += s_adds + (0 if rms else 2 * f)
    muls += s_muls + 2 * f
    return AsicCost(c, adds, muls, ri, sram_read_bytes=4 * 3 * f, sram_write_bytes=4 * f)


def _softmax_row(a: AsicSpec, length: int) -> AsicCost:
    ea, em, ei = _exp_ops(a)
    ra, rm, ri = _recip_ops(a)
    n = length
    cycles = (_accumulate(a, n)                                   # maximum
              + _accumulate(a, n, a.add_latency + a.exp_latency)  # exp(x - max), summed
              + a.recip_latency                                    # 1 / sum
              + _pass(a, n, a.mul_latency))                       # scale
    return AsicCost(cycles, adds=n + n * (1 + ea) + n + ra, muls=n * em + rm + n,
                    int_ops=n * ei + ri, sram_read_bytes=4 * 3 * n, sram_write_bytes=4 * 2 * n)


def op_cost(asic: AsicSpec, kind: str, elements: int, detail: Mapping | None = None) -> AsicCost:
    """Cycles and primitive operations of one ASIC operator.

    ``kind`` is an op kind of the trace vocabulary (layernorm, rmsnorm, softmax,
    activation, elementwise, rotary) or a reduction the mapping adds (``vmm_epilogue``,
    ``score_epilogue``, ``context_epilogue``: ``elements`` FP32 additions of partial sums),
    or ``embedding`` (``elements`` values copied into the ASIC's buffer).
    """
    d = dict(detail or {})
    n = int(elements)
    if n < 0:
        raise PimsimError(f"ASIC: {kind}: negative element count {n}")
    if kind in ("layernorm", "rmsnorm"):
        tokens = int(d.get("tokens", 1))
        features = n // max(tokens, 1)
        chunks = -(-features // asic.lanes)
        issue = chunks * asic.add_latency + 1 + chunks   # pass 1, the scalars, pass 2
        return _norm(asic, features, kind == "rmsnorm").rows(tokens, issue)
    if kind == "softmax":
        rows = int(d.get("heads", 1)) * int(d.get("q_len", 1))
        if rows <= 0 or n % rows:
            raise PimsimError(f"ASIC: softmax of {n} elements does not split into {rows} rows")
        chunks = -(-(n // rows) // asic.lanes)
        issue = 2 * chunks * asic.add_latency + 1 + chunks  # max, exp-sum, 1/sum, scale
        return _softmax_row(asic, n // rows).rows(rows, issue)
    if kind == "activation":
        adds, muls, ints, lat = _activation(asic, str(d.get("kind", "")))
        return _elementwise(asic, n, adds, muls, ints, lat)
    if kind == "elementwise":
        k = d.get("kind", "add")
        operands = int(d.get("operands", 2))
        if k in ("add", "sub", "neg", "other"):
            return _elementwise(asic, n, 1, 0, 0, asic.add_latency, operands)
        if k == "mul":
            return _elementwise(asic, n, 0, 1, 0, asic.mul_latency, operands)
        if k == "div":
            ra, rm, ri = _recip_ops(asic)
            return _elementwise(asic, n, ra, rm + 1, ri, asic.recip_latency + asic.mul_latency, operands)
        if k == "cat":
            return AsicCost(_pass(asic, n, 1), sram_read_bytes=4 * n, sram_write_bytes=4 * n)
        raise PimsimError(f"ASIC: unknown elementwise kind {k!r}")
    if kind == "rotary":
        # out = x * cos + rotate_half(x) * sin: two multiplies and one add per element
        return AsicCost(_pass(asic, 2 * n, asic.mul_latency + asic.add_latency), adds=n,
                        muls=2 * n, sram_read_bytes=4 * 3 * n, sram_write_bytes=4 * n)
    if kind in ("vmm_epilogue", "score_epilogue", "context_epilogue"):
        return AsicCost(_pass(asic, n, asic.add_latency), adds=n, sram_read_bytes=8 * n,
                        sram_write_bytes=4 * n)
    if kind == "embedding":
        return AsicCost(_pass(asic, n, 1), sram_write_bytes=4 * n)
    raise PimsimError(f"ASIC: unknown operator kind {kind!r}")


#: operators that may write their result over an input that is used for the last time
_IN_PLACE = ("softmax", "activation", "rotary", "elementwise")


def _values_held(op, kv_len: int) -> int:
    """FP32 values the ASIC holds as the result of ``op`` at ``kv_len`` positions. A
    matrix product's partial sums are added into its outputs as they arrive, so only the
    outputs count; the LM head's logits are reduced to the next token as they arrive and
    K/V appends go to DRAM, so neither is held."""
    a = op.attrs
    tokens = int(a.get("tokens", 1))
    kind = op.op
    if kind == "embedding":
        return a["dim"] * tokens
    if kind in ("layernorm", "rmsnorm", "activation", "elementwise"):
        return a["features"] * tokens
    if kind == "linear":
        return a["out_features"] * tokens
    if kind == "rotary":
        return a["heads"] * a["head_dim"] * tokens
    if kind in ("attn_score", "softmax"):
        n = min(kv_len, a["window"] or kv_len)
        return a.get("q_heads", a.get("heads")) * a["q_len"] * n
    if kind == "attn_context":
        return a["q_heads"] * a["q_len"] * a["head_dim"]
    return 0


def buffer_need(ops, kv_len: int) -> tuple[int, int]:
    """(peak bytes, index of the op at the peak) of the FP32 values the ASIC holds while
    it runs the decode ops ``ops`` (a trace's, in order) at ``kv_len`` positions.

    A value is held from the op that makes it to the last op that reads it (``Op.deps``);
    while an op runs, its inputs and its result are held together, except that softmax,
    activations, rotary embeddings and element-wise ops write over an input that they read
    for the last time (when it is at least as large)."""
    held = [_values_held(op, kv_len) for op in ops]
    last = list(range(len(ops)))
    for j, op in enumerate(ops):
        for i in op.deps:
            last[i] = max(last[i], j)
    live, peak, at = 0, -1, 0
    for j, op in enumerate(ops):
        overwrites = op.op in _IN_PLACE and any(last[i] == j and held[i] >= held[j]
                                                 for i in op.deps)
        now = live + (0 if overwrites else held[j])
        if now > peak:
            peak, at = now, j
        live += held[j]
        live -= sum(held[i] for i in set(op.deps) if last[i] == j)
        if last[j] == j:
            live -= held[j]
    return 4 * peak, at
