"""The ASIC's arithmetic on values: every operation an FP32 golden function.

Values are FP32 bit patterns (``uint32`` arrays) and every addition and multiplication is
:func:`pimsim.numerics.fp32_add` / :func:`pimsim.numerics.fp32_mul`, so results are the
bits the RTL units give. The four approximated functions (exp by a Taylor series, the
Newton-Raphson reciprocal, the fast inverse square root and the tanh-form GELU unit) can
each be replaced by the exact function rounded to FP32, to isolate what an approximation
costs (:data:`APPROXIMATIONS`). Sums over a vector (LayerNorm, RMSNorm, softmax) use a
pairwise tree, the shape of the ASIC's reduction adders; division by the feature count is a
multiplication by its FP32 reciprocal, a constant.
"""

from __future__ import annotations

import math

import numpy as np

from numba import njit

from pimsim import numerics as nx

#: The ASIC's approximated functions, in the order reports list them.
APPROXIMATIONS = ("exp", "recip", "rsqrt", "gelu")

_TINY = np.float32(2.0 ** -126)


def _unsafe(*xs) -> bool:
    """True if any value is subnormal, non-finite, or a non-zero at most 2**-126 (where
    IEEE float32 and the golden flush-to-zero rules can part)."""
    return any(_unsafe_nb(np.ravel(x)) for x in xs)


@njit(cache=True, nogil=True)
def _unsafe_nb(x) -> bool:
    tiny = np.float32(2.0 ** -126)
    for v in x:
        if not np.isfinite(v) or (v != 0 and abs(v) <= tiny):
            return True
    return False


def _fast(op, golden):
    """``golden`` on bit patterns, computed as IEEE float32 ``op`` when that gives the same
    bits: operands and result normal or zero, the result above 2**-126 (an IEEE add of
    normals below it is exact and would be caught, a product rounding up to it as well)."""
    def run(a, b):
        a = np.asarray(a, dtype=np.uint32)
        b = np.asarray(b, dtype=np.uint32)
        fa, fb = nx.bits_to_f32(a), nx.bits_to_f32(b)
        with np.errstate(all="ignore"):
            r = op(fa, fb)
        if _unsafe(fa, fb, r):
            return golden(a, b)
        return r.view(np.uint32)
    run.__doc__ = golden.__doc__
    return run


#: FP32 addition and multiplication with the golden model's bits.
add = _fast(np.add, nx.fp32_add)
mul = _fast(np.multiply, nx.fp32_mul)


def bits(x) -> np.ndarray:
    """FP32 bit patterns of float values (host RNE conversion to float32)."""
    return nx.f32_to_bits(x)


def values(b) -> np.ndarray:
    """float32 values of FP32 bit patterns."""
    return nx.bits_to_f32(b)


def neg(b) -> np.ndarray:
    return (np.asarray(b, dtype=np.uint32) ^ np.uint32(0x80000000)).astype(np.uint32)


def to_bf16(b) -> np.ndarray:
    """Round FP32 bits to BF16 and widen back (what a write into a bank or a global-buffer
    slot keeps)."""
    return nx.bf16_to_fp32(nx.fp32_to_bf16(b))


def _exact(fn):
    """fn on float64 values of FP32 bits, rounded to FP32 bits."""
    def run(b):
        with np.errstate(all="ignore"):
            return bits(fn(values(b).astype(np.float64)))
    return run


_EXACT = {
    "exp": _exact(np.exp),
    "recip": _exact(lambda x: 1.0 / x),
    "rsqrt": _exact(lambda x: 1.0 / np.sqrt(x)),
    "gelu": _exact(lambda x: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) *
                                                      (x + 0.044715 * x ** 3)))),
}
#: The golden approximations with the IEEE-or-golden primitives above: the same bits.
_APPROX = {
    "exp": lambda x: nx._exp(x, nx.EXP_DEGREE_DEFAULT, add, mul),
    "recip": lambda x: nx._recip(x, nx.RECIP_ITERS_DEFAULT, add, mul),
    "rsqrt": lambda x: nx._rsqrt(x, nx.RSQRT_ITERS_DEFAULT, add, mul),
    "gelu": lambda x: nx._gelu(x, nx.EXP_DEGREE_DEFAULT, nx.RECIP_ITERS_DEFAULT, add, mul),
}


def arrival_ranks(index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, index[order], rank): a stable sort of the values by output index, and each
    value's place among the values of its output. Adding round by round (all rank-0 values,
    then rank 1, ...) adds each output's values one by one in arrival order."""
    order = np.argsort(index, kind="stable")
    idx = index[order]
    start = np.r_[0, np.flatnonzero(np.diff(idx)) + 1]
    rank = np.arange(idx.size) - np.repeat(start, np.diff(np.r_[start, idx.size]))
    return order, idx, rank


def bf16_values(x) -> np.ndarray:
    """float32 values of ``x`` rounded to BF16 (round to nearest even, subnormals flushed)."""
    return values(to_bf16(bits(np.asarray(x, dtype=np.float32))))


class Asic:
    """The ASIC's operators; ``exact`` names the approximations replaced by exact functions."""

    def __init__(self, exact=()):
        unknown = set(exact) - set(APPROXIMATIONS)
        if unknown:
            raise ValueError(f"unknown ASIC approximation(s) {sorted(unknown)} "
                             f"(known: {', '.join(APPROXIMATIONS)})")
        self.exact = frozenset(exact)
        for name in APPROXIMATIONS:
            setattr(self, name, _EXACT[name] if name in self.exact else _APPROX[name])

    # -- reductions ---------------------------------------------------------------------
    @staticmethod
    def tree_sum(b: np.ndarray) -> np.ndarray:
        """Pairwise sum over the last axis (zero-padded to a power of two)."""
        b = np.asarray(b, dtype=np.uint32)
        n = b.shape[-1]
        width = 1 << max(n - 1, 0).bit_length()
        if width != n:
            b = np.concatenate([b, np.zeros(b.shape[:-1] + (width - n,), dtype=np.uint32)], -1)
        while b.shape[-1] > 1:
            b = add(b[..., 0::2], b[..., 1::2])
        return b[..., 0]

    @staticmethod
    def ordered_sum(n: int, index: np.ndarray, vals: np.ndarray) -> np.ndarray:
        """y[i] = +0 + the values with index i, added one by one in the given (arrival) order."""
        y = np.zeros(n, dtype=np.uint32)
        if index.size == 0:
            return y
        f = nx.bits_to_f32(vals)
        if not _unsafe(f):
            out, ok = _ordered_f32(n, index.astype(np.int64), f)
            if ok:
                return out.view(np.uint32)
        order, idx, rank = arrival_ranks(index)
        v = vals[order]
        for k in range(int(rank.max()) + 1):
            sel = rank == k
            y[idx[sel]] = add(y[idx[sel]], v[sel])
        return y

    # -- operators ----------------------------------------------------------------------
    def layernorm(self, x, w, b, eps: float) -> np.ndarray:
        inv_n = bits(1.0 / x.shape[-1])
        mean = mul(self.tree_sum(x), inv_n)
        d = add(x, neg(mean[..., None]))
        var = mul(self.tree_sum(mul(d, d)), inv_n)
        r = self.rsqrt(add(var, bits(eps)))
        y = mul(mul(d, r[..., None]), w)
        return y if b is None else add(y, b)

    def rmsnorm(self, x, w, eps: float) -> np.ndarray:
        inv_n = bits(1.0 / x.shape[-1])
        ms = mul(self.tree_sum(mul(x, x)), inv_n)
        r = self.rsqrt(add(ms, bits(eps)))
        return mul(mul(x, r[..., None]), w)

    def softmax(self, s) -> np.ndarray:
        """Softmax over the last axis: e = exp(s - max), p = e * recip(sum e)."""
        m = bits(values(s).max(axis=-1))
        e = self.exp(add(s, neg(m[..., None])))
        return mul(e, self.recip(self.tree_sum(e))[..., None])

    def activation(self, kind: str, x) -> np.ndarray:
        if kind == "gelu_tanh":
            return self.gelu(x)
        if kind == "silu":          # x / (1 + e^-x) with the exp and reciprocal units
            return mul(x, self.recip(add(bits(1.0), self.exp(neg(x)))))
        if kind == "relu":
            return np.where(values(x) > 0, x, np.uint32(0)).astype(np.uint32)
        raise ValueError(f"activation {kind!r} is not an ASIC function")

    @staticmethod
    def rotary(x, cos, sin) -> np.ndarray:
        """RoPE of (heads, head_dim) bits with one position's (head_dim,) cos/sin table
        entries (FP32 bits): x * cos + rotate_half(x) * sin, rotate_half = (-x2, x1)."""
        h = x.shape[-1] // 2
        rot = np.concatenate([neg(x[..., h:]), x[..., :h]], axis=-1)
        return add(mul(x, cos), mul(rot, sin))


@njit(cache=True, nogil=True)
def _ordered_f32(n, index, vals):
    y = np.zeros(n, dtype=np.float32)
    tiny = np.float32(2.0 ** -126)
    ok = True
    for j in range(index.size):
        r = y[index[j]] + vals[j]
        if not np.isfinite(r) or (r != 0 and abs(r) <= tiny):
            ok = False
        y[index[j]] = r
    return y, ok
