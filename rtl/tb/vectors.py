"""Test vectors for the RTL test benches: random streams from a seed plus corner cases.

The count of random vectors comes from ``PIMSIM_RTL_VECTORS`` (default 2000) and the seed
from ``PIMSIM_RTL_SEED`` (default 20231015), so every run is repeatable. All values are
IEEE bit patterns (uint32 for FP32, uint16 for BF16).
"""

from __future__ import annotations

import os

import numpy as np

DEFAULT_VECTORS = 2000
DEFAULT_SEED = 20231015


def vector_count() -> int:
    """Number of random vectors per unit (env PIMSIM_RTL_VECTORS, default 2000)."""
    n = int(os.environ.get("PIMSIM_RTL_VECTORS", DEFAULT_VECTORS))
    if n < 1:
        raise ValueError(f"PIMSIM_RTL_VECTORS must be >= 1, got {n}")
    return n


def seed() -> int:
    """Seed of the random vectors (env PIMSIM_RTL_SEED, default 20231015)."""
    return int(os.environ.get("PIMSIM_RTL_SEED", DEFAULT_SEED))


def rng(stream: str) -> np.random.Generator:
    """Generator for one named stream, derived from the seed (streams are independent)."""
    return np.random.default_rng([seed(), sum(ord(c) << (8 * (i % 4)) for i, c in enumerate(stream))])


# FP32 corner cases, each with why it is interesting.
FP32_CORNERS = np.array(
    [
        0x00000000,  # +0
        0x80000000,  # -0
        0x00800000,  # smallest normal 2**-126
        0x80800000,  # -2**-126
        0x00800001,  # smallest normal + 1 ulp (difference with 2**-126 is subnormal)
        0x7F7FFFFF,  # largest normal
        0xFF7FFFFF,  # -largest normal
        0x00000001,  # smallest subnormal (flushed to +0)
        0x807FFFFF,  # -largest subnormal (flushed to -0)
        0x00400000,  # subnormal 2**-127 (flushed)
        0x7F800000,  # +inf
        0xFF800000,  # -inf
        0x7FC00000,  # canonical quiet NaN
        0x7F800001,  # signalling NaN (gives the canonical NaN)
        0xFFFFFFFF,  # negative NaN with full payload
        0x3F800000,  # 1.0
        0xBF800000,  # -1.0
        0x3F800001,  # 1 + 2**-23 (odd last bit: ties round up)
        0x33800000,  # 2**-24: 1 + 2**-24 is a tie that rounds to even (down)
        0x33800001,  # just above 2**-24: rounds up
        0x3F7FFFFF,  # 1 - 2**-24
        0x4B400000,  # 1.5 * 2**23, the exp unit's rounding constant
        0x42B17218,  # 88.7228, near ln(largest normal)
        0xC2AEAC50,  # -87.3365, near ln(smallest normal)
        0x42B20000,  # 89.0: exp overflows
        0xC2CE0000,  # -103.0: exp underflows (flushed)
        0x43800000,  # 256.0: exp's |t| >= 256 short-cut
        0xC0000000,  # -2.0
        0x40490FDB,  # pi
    ],
    dtype=np.uint32,
)


def _fp32(sign, exp, frac):
    return ((np.asarray(sign, np.uint64) << 31) | (np.asarray(exp, np.uint64) << 23) | np.asarray(frac, np.uint64)).astype(np.uint32)


def random_bits(g: np.random.Generator, n: int) -> np.ndarray:
    """Uniformly random 32-bit patterns (all classes: zeros, subnormals, inf, NaN rare)."""
    return g.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)


def uniform_f32(g: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    """Bit patterns of float32 values uniform in [lo, hi]."""
    return g.uniform(lo, hi, n).astype(np.float32).view(np.uint32)


def add_operands(g: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Operand pairs for the adder: random, near exponents, near cancellation, exact ties."""
    a = random_bits(g, n)
    b = random_bits(g, n)
    ea = (a >> 23) & 0xFF
    kind = g.integers(0, 10, n)
    # near exponents (alignment shifts 0..27: guard/round/sticky all matter)
    near = np.clip(ea.astype(np.int64) + g.integers(-27, 28, n), 1, 254)
    b = np.where(kind < 4, _fp32(g.integers(0, 2, n), near, g.integers(0, 1 << 23, n)), b)
    # near cancellation: -a plus a few ulps (massive left normalisation)
    canc = (a ^ np.uint32(0x80000000)).astype(np.int64) + g.integers(-3, 4, n)
    b = np.where((kind >= 4) & (kind < 6), canc.astype(np.uint32), b)
    # exact ties: b = 2**(ea-24) or 2**(ea-25) with zero fraction, random sign
    tie = np.clip(ea.astype(np.int64) - g.integers(24, 26, n), 1, 254)
    b = np.where((kind >= 6) & (kind < 8), _fp32(g.integers(0, 2, n), tie, 0), b)
    return a, b


def mul_operands(g: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Operand pairs for the multiplier: random, and products near overflow / underflow."""
    a = random_bits(g, n)
    b = random_bits(g, n)
    ea = ((a >> 23) & 0xFF).astype(np.int64)
    kind = g.integers(0, 10, n)
    # product exponent field near 255 (overflow) or near 0 (flush)
    hi = np.clip(127 + 254 - ea + g.integers(-2, 3, n), 1, 254)
    lo = np.clip(127 + 1 - ea + g.integers(-2, 3, n), 1, 254)
    frac = g.integers(0, 1 << 23, n)
    b = np.where(kind < 2, _fp32(g.integers(0, 2, n), hi, frac), b)
    b = np.where((kind >= 2) & (kind < 4), _fp32(g.integers(0, 2, n), lo, frac), b)
    return a, b


def unary_operands(unit: str, g: np.random.Generator, n: int) -> np.ndarray:
    """Inputs for one ASIC unit: its useful range plus random bit patterns."""
    u = g.integers(0, 10, n)
    rb = random_bits(g, n)
    if unit == "exp":
        return np.where(u < 6, uniform_f32(g, n, -110.0, 110.0),
                        np.where(u < 8, uniform_f32(g, n, -1.0, 1.0), rb)).astype(np.uint32)
    if unit == "recip":
        return np.where(u < 7, rb, uniform_f32(g, n, -4.0, 4.0)).astype(np.uint32)
    if unit == "rsqrt":
        return np.where(u < 7, rb & np.uint32(0x7FFFFFFF), np.where(u < 9, uniform_f32(g, n, 0.0, 8.0), rb)).astype(np.uint32)
    if unit == "gelu":
        return np.where(u < 6, uniform_f32(g, n, -12.0, 12.0),
                        np.where(u < 8, uniform_f32(g, n, -1.0, 1.0), rb)).astype(np.uint32)
    raise ValueError(f"unknown unit {unit!r}")


def unary_corners() -> np.ndarray:
    """The FP32 corners and their 1-ulp neighbours (same sign)."""
    c = FP32_CORNERS.astype(np.int64)
    return np.unique(np.concatenate([c, c + 1, c - 1]) & 0xFFFFFFFF).astype(np.uint32)


def binary_corners() -> tuple[np.ndarray, np.ndarray]:
    """All ordered pairs of FP32 corners."""
    a, b = np.meshgrid(FP32_CORNERS, FP32_CORNERS, indexing="ij")
    return a.ravel(), b.ravel()


# ---- BF16 lanes for the bank MAC -------------------------------------------------------
BF16_CORNERS = np.array(
    [
        0x0000, 0x8000,  # +-0
        0x0080, 0x8080,  # +-smallest normal 2**-126
        0x7F7F, 0xFF7F,  # +-largest normal
        0x0001, 0x807F,  # subnormals (flushed)
        0x7F80, 0xFF80,  # +-inf
        0x7FC0, 0x7F81, 0xFFFF,  # NaNs
        0x3F80, 0xBF80,  # +-1
        0x3381,  # 2**-24 * (1 + 2**-7): tree sums with 1.0 that are just above a tie
        0x3380,  # 2**-24: 1 + 2**-24 is a tie
    ],
    dtype=np.uint16,
)


def _bf16(sign, exp, frac):
    return ((np.asarray(sign, np.uint32) << 15) | (np.asarray(exp, np.uint32) << 7) | np.asarray(frac, np.uint32)).astype(np.uint16)


def mac_lanes(g: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n beats of 16 BF16 weights and inputs: moderate spread, some huge/tiny/special beats."""
    shape = (n, 16)
    kind = g.integers(0, 100, (n, 1))
    ew = 127 + g.integers(-12, 13, shape)
    ex = 127 + g.integers(-12, 13, shape)
    # 4 %: huge lanes (products and tree sums overflow to inf)
    ew = np.where(kind < 4, g.integers(186, 192, shape), ew)
    ex = np.where(kind < 4, g.integers(186, 192, shape), ex)
    # 4 %: tiny lanes (products flush to zero)
    ew = np.where((kind >= 4) & (kind < 8), g.integers(1, 64, shape), ew)
    w = _bf16(g.integers(0, 2, shape), ew, g.integers(0, 128, shape))
    x = _bf16(g.integers(0, 2, shape), ex, g.integers(0, 128, shape))
    # 6 %: one lane gets a corner value
    lane = g.integers(0, 16, n)
    pick = g.integers(0, len(BF16_CORNERS), n)
    special = (kind[:, 0] >= 8) & (kind[:, 0] < 14)
    rows = np.nonzero(special)[0]
    w[rows, lane[rows]] = BF16_CORNERS[pick[rows]]
    return w, x


def mac_directed() -> tuple[np.ndarray, np.ndarray]:
    """Directed beats: each BF16 corner against each corner in lane 0, ties in the tree."""
    beats_w, beats_x = [], []
    one = 0x3F80
    for cw in BF16_CORNERS:
        for cx in BF16_CORNERS:
            w = np.zeros(16, np.uint16)
            x = np.zeros(16, np.uint16)
            w[0], x[0] = cw, cx
            w[1], x[1] = one, one
            beats_w.append(w)
            beats_x.append(x)
    # tree ties: 1.0 + 2**-24 in lanes (0,1); in level 2; and the accumulator
    for pos in (1, 2, 4, 8):
        w = np.zeros(16, np.uint16)
        x = np.full(16, one, np.uint16)
        w[0] = one
        w[pos] = 0x3380
        beats_w.append(w)
        beats_x.append(x)
    # all lanes -0 * +0 (tree of -0) and +largest * +largest (overflow)
    beats_w.append(np.full(16, 0x8000, np.uint16)); beats_x.append(np.zeros(16, np.uint16))
    beats_w.append(np.full(16, 0x7F7F, np.uint16)); beats_x.append(np.full(16, 0x3F80, np.uint16))
    # +inf and -inf in one tree: NaN
    w = np.full(16, 0x3F80, np.uint16); w[3] = 0x7F80; w[12] = 0xFF80
    beats_w.append(w); beats_x.append(np.full(16, 0x3F80, np.uint16))
    return np.array(beats_w, np.uint16), np.array(beats_x, np.uint16)
