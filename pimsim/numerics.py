"""Golden numerics of the PIM-GPT datapath: bit-exact models of the RTL in ``rtl/``.

Every function here works on IEEE-754 *bit patterns* held in numpy integer arrays
(``uint32`` for FP32, ``uint16`` for BF16), is vectorised over any array shape (inputs
broadcast like numpy operands) and uses integer arithmetic only, so its result does not
depend on the host's floating-point rounding or subnormal handling. The functional
simulator and the RTL test benches call exactly these functions; docs/numerics.md
describes the rules in prose.

Number format rules (identical in the RTL):

* **Flush to zero.** A subnormal input (exponent field 0, fraction non-zero) is read as a
  zero of the same sign. A result whose exponent after rounding is below the smallest
  normal (2**-126) is written as a zero with the sign of the exact result.
* **Rounding.** Round to nearest, ties to even (RNE). Tininess is judged *after*
  rounding with an unbounded exponent: a value that rounds up to 2**-126 is kept.
* **Overflow.** A rounded result of magnitude >= 2**128 becomes infinity of its sign.
* **NaN.** Every NaN result is the canonical quiet NaN (``0x7FC00000``, BF16 ``0x7FC0``);
  NaN payloads and signs are not propagated. Invalid operations (inf - inf, 0 * inf,
  the ASIC functions outside their domain) also give the canonical NaN.
* **Signed zeros.** x + (-x) = +0; (-0) + (-0) = -0; products of zeros carry the XOR of
  the signs.

Units: all values are dimensionless numbers; array shapes are documented per function.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "QNAN32",
    "QNAN16",
    "POS_INF32",
    "NEG_INF32",
    "MAC_LANES",
    "EXP_DEGREE_DEFAULT",
    "RECIP_ITERS_DEFAULT",
    "RSQRT_ITERS_DEFAULT",
    "RSQRT_MAGIC",
    "f32_to_bits",
    "bits_to_f32",
    "bf16_to_f32",
    "f32_to_bf16_bits",
    "fp32_to_bf16",
    "bf16_to_fp32",
    "fp32_add",
    "fp32_mul",
    "bf16_mul",
    "adder_tree16",
    "bank_mac16",
    "bank_dot",
    "exp_taylor_coeffs",
    "fp32_exp",
    "fp32_recip",
    "fp32_rsqrt",
    "fp32_gelu",
]

#: Canonical quiet NaN of FP32 (bit pattern).
QNAN32 = 0x7FC00000
#: Canonical quiet NaN of BF16 (bit pattern).
QNAN16 = 0x7FC0
#: +infinity and -infinity of FP32 (bit patterns).
POS_INF32 = 0x7F800000
NEG_INF32 = 0xFF800000

#: Number of BF16 lanes of one bank MAC unit (32 B column access = 16 x BF16; GDDR6-AiM).
MAC_LANES = 16

#: Default Taylor degree of the exp unit (RTL parameter ``DEGREE``).
EXP_DEGREE_DEFAULT = 6
#: Default Newton-Raphson iterations of the reciprocal unit (RTL parameter ``ITERS``).
RECIP_ITERS_DEFAULT = 3
#: Default Newton iterations of the inverse-square-root unit (RTL parameter ``ITERS``).
RSQRT_ITERS_DEFAULT = 2
#: Magic constant of the fast inverse square root (the well-known 0x5F3759DF).
RSQRT_MAGIC = 0x5F3759DF

# FP32 constants used by the ASIC units (bit patterns; each is the RNE FP32 rounding of
# the float64 value named beside it; the RTL uses the same patterns).
_ONE = 0x3F800000  # 1.0
_TWO = 0x40000000  # 2.0
_HALF = 0x3F000000  # 0.5
_THREEHALFS = 0x3FC00000  # 1.5
_LOG2E = 0x3FB8AA3B  # 1 / ln 2
_ROUND_MAGIC = 0x4B400000  # 1.5 * 2**23: x + this rounds x (|x| < 2**22) to an integer
_NEG_ROUND_MAGIC = 0xCB400000  # -1.5 * 2**23
_NEG_LN2_HI = 0xBF317200  # -0.693145751953125 (15 significant bits: k * LN2_HI is exact)
_NEG_LN2_LO = 0xB5BFBE8E  # -(ln 2 - 0.693145751953125)
_RECIP_C0 = 0x4034B4B5  # 48 / 17 (linear initial estimate of 1/m on [0.5, 1))
_RECIP_NEG_C1 = 0xBFF0F0F1  # -32 / 17
_GELU_C1 = 0x3FCC422A  # 2 * sqrt(2 / pi)
_GELU_C2 = 0x3D922279  # 2 * sqrt(2 / pi) * 0.044715

_SIGN = 0x80000000
_EXP_MASK = 0x7F800000
_FRAC_MASK = 0x007FFFFF


# --------------------------------------------------------------------------------------
# conversions between floats and bit patterns
# --------------------------------------------------------------------------------------
def f32_to_bits(x) -> np.ndarray:
    """Bit patterns (uint32) of ``x`` converted to numpy float32 (host RNE conversion)."""
    return np.array(x, dtype=np.float32).view(np.uint32)


def bits_to_f32(bits) -> np.ndarray:
    """float32 values of FP32 bit patterns ``bits`` (any integer array)."""
    return np.array(bits).astype(np.uint32).view(np.float32)


def bf16_to_f32(bits) -> np.ndarray:
    """float32 values of BF16 bit patterns ``bits`` (exact widening, no flush)."""
    return bits_to_f32(bf16_to_fp32(bits))


def f32_to_bf16_bits(x) -> np.ndarray:
    """BF16 bit patterns of ``x``: converted to float32 by numpy, then :func:`fp32_to_bf16`."""
    return fp32_to_bf16(f32_to_bits(x))


def bf16_to_fp32(bits) -> np.ndarray:
    """FP32 bit patterns (uint32) of BF16 bit patterns: the 16 bits shifted up, exact."""
    return (np.asarray(bits).astype(np.uint32) & np.uint32(0xFFFF)) << np.uint32(16)


def fp32_to_bf16(bits) -> np.ndarray:
    """Round FP32 bit patterns to BF16 bit patterns (uint16), RNE.

    Subnormal inputs flush to a zero of their sign, NaN gives ``QNAN16``, and a value that
    rounds past the largest BF16 becomes infinity. BF16 has FP32's exponent range, so a
    normal FP32 never rounds to a BF16 subnormal.
    """
    a = np.asarray(bits).astype(np.int64) & 0xFFFFFFFF
    e = (a >> 23) & 0xFF
    m = a & _FRAC_MASK
    upper = a >> 16
    lower = a & 0xFFFF
    up = (lower > 0x8000) | ((lower == 0x8000) & ((upper & 1) == 1))
    r = upper + up.astype(np.int64)
    r = np.where(e == 0, (a >> 16) & 0x8000, r)
    r = np.where((e == 0xFF) & (m != 0), QNAN16, r)
    return r.astype(np.uint16)


# --------------------------------------------------------------------------------------
# FP32 primitives
# --------------------------------------------------------------------------------------
def _fields(bits):
    a = np.asarray(bits).astype(np.int64) & 0xFFFFFFFF
    return a, (a >> 31) & 1, (a >> 23) & 0xFF, a & _FRAC_MASK


def _round_pack(s, e, sig):
    """Round and pack: value = sig / 2**26 * 2**(e - 127), sig < 2**27 with bit 26 set.

    Bits 2, 1, 0 of ``sig`` are guard, round and sticky. RNE to 24 bits, then overflow to
    infinity and flush-to-zero on the rounded exponent. Returns int64 bit patterns.
    """
    lsb = (sig >> 3) & 1
    g = (sig >> 2) & 1
    rs = (sig & 3) != 0
    mant = (sig >> 3) + (g & (rs | (lsb == 1))).astype(np.int64)
    carry = mant >> 24
    mant = mant >> carry
    e = e + carry
    packed = (s << 31) | (np.clip(e, 0, 255) << 23) | (mant & _FRAC_MASK)
    packed = np.where(e >= 255, (s << 31) | POS_INF32, packed)
    return np.where(e <= 0, s << 31, packed)


def fp32_add(a, b) -> np.ndarray:
    """FP32 sum ``a + b`` of bit patterns (uint32 out), RNE, flush-to-zero.

    The algorithm (and the RTL ``fp32_add_comb``): order the operands by magnitude, align
    the smaller 24-bit significand to the larger with 3 extra bits (guard, round, sticky;
    the sticky bit is the OR of everything shifted past it), add or subtract, normalise
    (right by one, or left by the leading-zero count), round to nearest even.
    """
    a, sa, ea, ma = _fields(a)
    b, sb, eb, mb = _fields(b)
    a, b = np.broadcast_arrays(a, b)
    sa, sb, ea, eb, ma, mb = np.broadcast_arrays(sa, sb, ea, eb, ma, mb)
    za, zb = ea == 0, eb == 0
    nan_a, nan_b = (ea == 0xFF) & (ma != 0), (eb == 0xFF) & (mb != 0)
    inf_a, inf_b = (ea == 0xFF) & (ma == 0), (eb == 0xFF) & (mb == 0)

    mag_a = np.where(za, 0, (ea << 23) | ma)
    mag_b = np.where(zb, 0, (eb << 23) | mb)
    swap = mag_b > mag_a
    sL, eL, mL = np.where(swap, sb, sa), np.where(swap, eb, ea), np.where(swap, mb, ma)
    sS, eS, mS = np.where(swap, sa, sb), np.where(swap, ea, eb), np.where(swap, ma, mb)
    xl = ((1 << 23) | mL) << 3
    xs0 = ((1 << 23) | mS) << 3
    d = np.minimum(eL - eS, 31)
    xs = xs0 >> d
    xs = xs | ((xs << d) != xs0).astype(np.int64)
    sub = sL != sS
    total = np.where(sub, xl - xs, xl + xs)
    # addition carry: shift right by one, keeping the lost bit in the sticky position
    ovf = total >> 27
    sig = np.where(ovf == 1, (total >> 1) | (total & 1), total)
    e = eL + ovf
    # subtraction: normalise left (frexp's exponent is the exact bit length of an int < 2**53)
    nbits = np.frexp(np.maximum(sig, 1).astype(np.float64))[1].astype(np.int64)
    lz = 27 - nbits
    sig = sig << np.maximum(lz, 0)
    e = e - np.maximum(lz, 0)
    res = _round_pack(sL, e, sig)
    res = np.where(total == 0, 0, res)

    res = np.where(zb, np.where(za, (sa & sb) << 31, a), res)
    res = np.where(za & ~zb, b, res)
    res = np.where(inf_b, b, res)
    res = np.where(inf_a, a, res)
    res = np.where(nan_a | nan_b | (inf_a & inf_b & (sa != sb)), QNAN32, res)
    return res.astype(np.uint32)


def fp32_mul(a, b) -> np.ndarray:
    """FP32 product ``a * b`` of bit patterns (uint32 out), RNE, flush-to-zero.

    The 48-bit product of the 24-bit significands is normalised (it lies in [2**46, 2**48)),
    reduced to 24 bits + guard + sticky and rounded to nearest even.
    """
    a, sa, ea, ma = _fields(a)
    b, sb, eb, mb = _fields(b)
    sa, sb, ea, eb, ma, mb = np.broadcast_arrays(sa, sb, ea, eb, ma, mb)
    s = sa ^ sb
    za, zb = ea == 0, eb == 0
    nan_a, nan_b = (ea == 0xFF) & (ma != 0), (eb == 0xFF) & (mb != 0)
    inf_a, inf_b = (ea == 0xFF) & (ma == 0), (eb == 0xFF) & (mb == 0)

    p = ((1 << 23) | ma) * ((1 << 23) | mb)
    top = p >> 47
    e = ea + eb - 127 + top
    shift = 20 + top
    sig = (p >> shift) | ((p & ((1 << shift) - 1)) != 0).astype(np.int64)
    res = _round_pack(s, e, sig)

    res = np.where(za | zb, s << 31, res)
    res = np.where(inf_a | inf_b, (s << 31) | POS_INF32, res)
    invalid = nan_a | nan_b | (inf_a & zb) | (inf_b & za)
    res = np.where(invalid, QNAN32, res)
    return res.astype(np.uint32)


def bf16_mul(a, b) -> np.ndarray:
    """FP32 product (uint32 out) of two BF16 bit patterns (uint16 in).

    The product of two 8-bit significands has at most 16 bits, so it is exact in FP32: no
    rounding happens, only the exponent range rules (subnormal inputs and tiny products
    flush to zero, large products become infinity). It therefore equals :func:`fp32_mul`
    of the widened operands; the RTL ``bf16_mul`` uses an 8 x 8 multiplier instead.
    """
    return fp32_mul(bf16_to_fp32(a), bf16_to_fp32(b))


def adder_tree16(p) -> np.ndarray:
    """Sum of 16 FP32 values (last axis of ``p``) by the MAC's 4-level pairwise tree.

    Level 1 adds lanes (0,1), (2,3), ..., (14,15); each further level adds neighbouring
    pairs of the previous level's sums, so the result is
    ``(((p0+p1)+(p2+p3))+((p4+p5)+(p6+p7))) + (((p8+p9)+...)+(...+(p14+p15)))``.
    """
    p = np.asarray(p)
    if p.shape[-1] != MAC_LANES:
        raise ValueError(f"adder_tree16: last axis must have {MAC_LANES} lanes, got {p.shape}")
    while p.shape[-1] > 1:
        p = fp32_add(p[..., 0::2], p[..., 1::2])
    return p[..., 0]


def bank_mac16(acc, w, x) -> np.ndarray:
    """One bank MAC step: ``acc + tree(w[i] * x[i] for i in 0..15)`` (FP32 bits out).

    ``acc``: FP32 bit patterns, shape S; ``w``, ``x``: BF16 bit patterns, shape S + (16,).
    The 16 exact BF16 products go through :func:`adder_tree16`; the tree sum is then added
    to the accumulator as ``fp32_add(acc, tree)``.
    """
    return fp32_add(acc, adder_tree16(bf16_mul(w, x)))


def bank_dot(w, x, acc=None) -> np.ndarray:
    """Dot products as a bank computes them: successive :func:`bank_mac16` steps.

    ``w``, ``x``: BF16 bit patterns, shape S + (n,), n a multiple of 16; step j uses
    elements 16j..16j+15. ``acc``: starting accumulator (FP32 bits, shape S), default +0,
    the value a cleared accumulator holds. Returns FP32 bits of shape S.
    """
    w = np.asarray(w)
    x = np.asarray(x)
    n = np.broadcast_shapes(w.shape, x.shape)[-1]
    if n % MAC_LANES:
        raise ValueError(f"bank_dot: length {n} is not a multiple of {MAC_LANES}")
    shape = np.broadcast_shapes(w.shape, x.shape)[:-1]
    out = np.zeros(shape, dtype=np.uint32) if acc is None else np.asarray(acc).astype(np.uint32)
    for j in range(n // MAC_LANES):
        sl = slice(MAC_LANES * j, MAC_LANES * (j + 1))
        out = bank_mac16(out, w[..., sl], x[..., sl])
    return out


# --------------------------------------------------------------------------------------
# ASIC approximations, built from fp32_add / fp32_mul in the RTL's order
# --------------------------------------------------------------------------------------
def _neg(a):
    return (np.asarray(a).astype(np.uint32) ^ np.uint32(_SIGN)).astype(np.uint32)


def _exp_field(a):
    return (np.asarray(a).astype(np.int64) >> 23) & 0xFF


def _scale_exponent(y, delta, sign):
    """``y`` (positive normal FP32 bits) times 2**delta with sign bit ``sign``.

    A resulting exponent field >= 255 gives infinity, <= 0 gives zero (flush).
    """
    y = np.asarray(y).astype(np.int64)
    e = ((y >> 23) & 0xFF) + delta
    res = (sign << 31) | (np.clip(e, 0, 255) << 23) | (y & _FRAC_MASK)
    res = np.where(e >= 255, (sign << 31) | POS_INF32, res)
    return np.where(e <= 0, sign << 31, res)


def exp_taylor_coeffs(degree: int) -> np.ndarray:
    """FP32 bit patterns of 1/i! for i = 0..degree (RNE of the float64 value)."""
    if not 1 <= degree <= 12:
        raise ValueError(f"exp degree must be in 1..12, got {degree}")
    c = np.array([1.0 / math.factorial(i) for i in range(degree + 1)], dtype=np.float64)
    return c.astype(np.float32).view(np.uint32)


def fp32_exp(x, degree: int = EXP_DEGREE_DEFAULT) -> np.ndarray:
    """e**x of FP32 bit patterns (uint32 out), as the ASIC exp unit computes it.

    Range reduction x = k ln2 + r: t = x * log2(e); k = round-to-nearest-even(t) by adding
    and subtracting 1.5 * 2**23; r = (x + k * (-LN2_HI)) + k * (-LN2_LO) (Cody-Waite, the
    first product exact). p = Taylor polynomial of degree ``degree`` in r, by Horner:
    p = c_N; p = p * r + c_i for i = N-1..0 (c_i = 1/i!). Result: p scaled by 2**k through
    its exponent field, infinity above the range, +0 below it (flush). |t| >= 256 (also
    x = +-inf) short-cuts to +inf or +0 by the sign of x; NaN gives the canonical NaN.
    """
    return _exp(x, degree, fp32_add, fp32_mul)


def _exp(x, degree, add, mul) -> np.ndarray:
    """fp32_exp with the FP32 primitives ``add`` and ``mul`` (see the public function)."""
    coeffs = exp_taylor_coeffs(degree)
    x, sx, ex, mx = _fields(x)
    t = mul(x, _LOG2E)
    km = add(t, _ROUND_MAGIC)
    k = km.astype(np.int64) - _ROUND_MAGIC
    kf = add(km, _NEG_ROUND_MAGIC)
    r = add(x, mul(kf, _NEG_LN2_HI))
    r = add(r, mul(kf, _NEG_LN2_LO))
    p = np.broadcast_to(np.uint32(coeffs[degree]), r.shape)
    for i in range(degree - 1, -1, -1):
        p = add(mul(p, r), coeffs[i])
    res = _scale_exponent(p, k, 0)
    big = _exp_field(t) >= 127 + 8
    res = np.where(big, np.where(sx == 1, 0, POS_INF32), res)
    res = np.where((ex == 0xFF) & (mx != 0), QNAN32, res)
    return res.astype(np.uint32)


def fp32_recip(a, iters: int = RECIP_ITERS_DEFAULT) -> np.ndarray:
    """1/a of FP32 bit patterns (uint32 out) by Newton-Raphson, as the ASIC unit does.

    a = +-m * 2**(E-126) with m in [0.5, 1) taken from a's fraction bits. Initial estimate
    y0 = 48/17 + m * (-32/17) (max relative error 1/17), then ``iters`` times
    y = y * (2 - m * y) (as fp32_mul(y, fp32_add(2, -fp32_mul(m, y)))). Result: y scaled
    by 2**-(E-126) with a's sign, infinity/zero outside the range. +-0 (and subnormals)
    give +-inf, +-inf gives +-0, NaN gives the canonical NaN.
    """
    return _recip(a, iters, fp32_add, fp32_mul)


def _recip(a, iters, add, mul) -> np.ndarray:
    """fp32_recip with the FP32 primitives ``add`` and ``mul`` (see the public function)."""
    if iters < 0:
        raise ValueError(f"reciprocal iterations must be >= 0, got {iters}")
    a, sa, ea, ma = _fields(a)
    m = _HALF | ma
    y = add(_RECIP_C0, mul(m, _RECIP_NEG_C1))
    for _ in range(iters):
        y = mul(y, add(_TWO, _neg(mul(m, y))))
    res = _scale_exponent(y, 126 - ea, sa)
    res = np.where(ea == 0, (sa << 31) | POS_INF32, res)
    res = np.where((ea == 0xFF) & (ma == 0), sa << 31, res)
    res = np.where((ea == 0xFF) & (ma != 0), QNAN32, res)
    return res.astype(np.uint32)


def fp32_rsqrt(a, iters: int = RSQRT_ITERS_DEFAULT) -> np.ndarray:
    """1/sqrt(a) of FP32 bit patterns (uint32 out): the fast inverse square root.

    y0 = bits(RSQRT_MAGIC - (bits(a) >> 1)), then ``iters`` Newton steps
    y = y * (1.5 - ((a * y) * y) * 0.5), each operation an FP32 primitive in that order.
    +-0 (and subnormals) give +-inf, +inf gives +0, a negative non-zero a (also -inf) and
    NaN give the canonical NaN.
    """
    return _rsqrt(a, iters, fp32_add, fp32_mul)


def _rsqrt(a, iters, add, mul) -> np.ndarray:
    """fp32_rsqrt with the FP32 primitives ``add`` and ``mul`` (see the public function)."""
    if iters < 0:
        raise ValueError(f"rsqrt iterations must be >= 0, got {iters}")
    a, sa, ea, ma = _fields(a)
    y = (RSQRT_MAGIC - (a >> 1)) & 0xFFFFFFFF
    for _ in range(iters):
        t = mul(mul(mul(a, y), y), _HALF)
        y = mul(y, add(_THREEHALFS, _neg(t)))
    res = np.asarray(y).astype(np.int64)
    res = np.where((ea == 0xFF) & (sa == 0), 0, res)
    res = np.where(sa == 1, QNAN32, res)
    res = np.where(ea == 0, (sa << 31) | POS_INF32, res)
    res = np.where((ea == 0xFF) & (ma != 0), QNAN32, res)
    return res.astype(np.uint32)


def fp32_gelu(
    x, exp_degree: int = EXP_DEGREE_DEFAULT, recip_iters: int = RECIP_ITERS_DEFAULT
) -> np.ndarray:
    """GELU of FP32 bit patterns (uint32 out), tanh form, as the ASIC GELU unit does.

    gelu(x) = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x**3), rewritten with
    tanh(u) = 1 - 2 / (1 + e**(2u)) as gelu(x) = x / (1 + e**(-v)), v = x (C1 + C2 x**2),
    C1 = 2 sqrt(2/pi), C2 = 0.044715 C1. Operation order:
    v = x * ((x * x) * C2 + C1); e = fp32_exp(-v, exp_degree); d = 1 + e;
    g = x * fp32_recip(d, recip_iters). x = -inf gives -0 (the limit; the formula would
    give -inf * 0); NaN gives the canonical NaN.
    """
    return _gelu(x, exp_degree, recip_iters, fp32_add, fp32_mul)


def _gelu(x, exp_degree, recip_iters, add, mul) -> np.ndarray:
    """fp32_gelu with the FP32 primitives ``add`` and ``mul`` (see the public function)."""
    x, sx, ex, mx = _fields(x)
    x2 = mul(x, x)
    v = mul(x, add(mul(x2, _GELU_C2), _GELU_C1))
    e = _exp(_neg(v), exp_degree, add, mul)
    r = _recip(add(_ONE, e), recip_iters, add, mul)
    g = mul(x, r).astype(np.int64)
    g = np.where((ex == 0xFF) & (mx == 0) & (sx == 1), _SIGN, g)
    g = np.where((ex == 0xFF) & (mx != 0), QNAN32, g)
    return g.astype(np.uint32)
