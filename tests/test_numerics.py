"""Unit tests of the golden numerics (pimsim.numerics) against IEEE facts and float64."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pimsim import numerics as N

pytestmark = pytest.mark.unit

RNG = np.random.default_rng(12345)
ONE = 0x3F800000


def _normal_bits(n, emin=1, emax=254):
    e = RNG.integers(emin, emax + 1, n)
    return ((RNG.integers(0, 2, n) << 31) | (e << 23) | RNG.integers(0, 1 << 23, n)).astype(np.uint32)


def _is_normal_or_inf(bits):
    e = (bits >> 23) & 0xFF
    return (e != 0) & ~((e == 0xFF) & ((bits & 0x7FFFFF) != 0))


@pytest.mark.parametrize("op", ["add", "mul"])
def test_primitives_equal_ieee_float32_away_from_subnormals(op):
    # IEEE binary32 RNE (numpy float32) must agree wherever neither an input nor the
    # result is subnormal: the flush rules are the only deviation.
    n = 400_000
    a = _normal_bits(n)
    b = _normal_bits(n)
    # half the pairs with nearby exponents, so that alignment and cancellation matter
    near = np.clip(((a >> 23) & 0xFF).astype(np.int64) + RNG.integers(-26, 27, n), 1, 254)
    b[: n // 2] = ((b[: n // 2] & 0x807FFFFF) | (near[: n // 2] << 23).astype(np.uint32))
    with np.errstate(all="ignore"):
        fa, fb = N.bits_to_f32(a), N.bits_to_f32(b)
        ref = (fa + fb if op == "add" else fa * fb).view(np.uint32)
    got = N.fp32_add(a, b) if op == "add" else N.fp32_mul(a, b)
    keep = _is_normal_or_inf(ref) | (ref & 0x7FFFFFFF == 0)
    assert keep.mean() > 0.5
    np.testing.assert_array_equal(got[keep], ref[keep])


def test_add_hand_derived_cases():
    cases = [
        # 1 + 2^-24 lies halfway between 1 and 1 + 2^-23: ties go to the even significand 1
        (ONE, 0x33800000, ONE),
        # (1 + 2^-23) + 2^-24 is halfway between 1 + 2^-23 (odd) and 1 + 2^-22: rounds up
        (0x3F800001, 0x33800000, 0x3F800002),
        # just above the tie rounds up; the sticky bit carries "just above"
        (ONE, 0x33800001, 0x3F800001),
        # largest normal + largest normal = 2^129 (1 - 2^-24) overflows to +inf
        (0x7F7FFFFF, 0x7F7FFFFF, N.POS_INF32),
        (N.POS_INF32, N.NEG_INF32, N.QNAN32),  # inf - inf is invalid
        (0x80000000, 0x80000000, 0x80000000),  # (-0) + (-0) = -0
        (0x80000000, 0x00000000, 0x00000000),  # (-0) + (+0) = +0
        (ONE, 0xBF800000, 0x00000000),  # x + (-x) = +0
        # (2^-126 + 2^-149) - 2^-126 = 2^-149 exactly, a subnormal: flushed to +0
        (0x00800001, 0x80800000, 0x00000000),
        (0x00000001, 0x00000000, 0x00000000),  # subnormal input read as +0
        (0x807FFFFF, ONE, ONE),  # -subnormal + 1 = 1
        (0x7F800001, ONE, N.QNAN32),  # signalling NaN in, canonical quiet NaN out
        (0xFFFFFFFF, ONE, N.QNAN32),
        (N.NEG_INF32, 0x7F7FFFFF, N.NEG_INF32),
    ]
    for a, b, want in cases:
        assert int(N.fp32_add(a, b)) == want, (hex(a), hex(b))
        assert int(N.fp32_add(b, a)) == want, (hex(b), hex(a))


def test_mul_hand_derived_cases():
    cases = [
        (0x00800000, 0x3F000000, 0x00000000),  # 2^-126 * 0.5 = 2^-127 subnormal: flushed
        (0x80800000, 0x3F000000, 0x80000000),  # with the sign of the exact product
        (0x7F7FFFFF, 0x40000000, N.POS_INF32),  # overflow
        (N.POS_INF32, 0x00000000, N.QNAN32),  # 0 * inf invalid
        (N.POS_INF32, 0x00000001, N.QNAN32),  # subnormal is zero: still invalid
        (0x80000000, ONE, 0x80000000),  # -0 * 1 = -0
        (0x00000001, 0xBF800000, 0x80000000),  # flushed subnormal * -1 = -0
        # (1 + 2^-23)^2 = 1 + 2^-22 + 2^-46: rounds down to 1 + 2^-22
        (0x3F800001, 0x3F800001, 0x3F800002),
    ]
    for a, b, want in cases:
        assert int(N.fp32_mul(a, b)) == want, (hex(a), hex(b))


def test_bf16_mul_is_exact_product():
    n = 100_000
    a = N.fp32_to_bf16(_normal_bits(n, 100, 154))
    b = N.fp32_to_bf16(_normal_bits(n, 100, 154))
    got = N.bits_to_f32(N.bf16_mul(a, b)).astype(np.float64)
    ref = N.bf16_to_f32(a).astype(np.float64) * N.bf16_to_f32(b).astype(np.float64)
    np.testing.assert_array_equal(got, ref)  # 16-bit significand products are exact in FP32
    assert int(N.bf16_mul(0x0080, 0x0080)) == 0  # 2^-252: flushed
    assert int(N.bf16_mul(0x7F7F, 0x7F7F)) == N.POS_INF32
    assert int(N.bf16_mul(0x0001, 0x3F80)) == 0  # subnormal BF16 input flushed


def test_fp32_to_bf16_rounding():
    # lower half exactly 0x8000 is a tie: 0x3F80 is even (stays), 0x3F81 is odd (rounds up)
    assert int(N.fp32_to_bf16(0x3F808000)) == 0x3F80
    assert int(N.fp32_to_bf16(0x3F818000)) == 0x3F82
    assert int(N.fp32_to_bf16(0x3F808001)) == 0x3F81
    assert int(N.fp32_to_bf16(0x7F7FFFFF)) == 0x7F80  # past the largest BF16: infinity
    assert int(N.fp32_to_bf16(0x807FFFFF)) == 0x8000  # subnormal flushed with its sign
    assert int(N.fp32_to_bf16(0x7F800001)) == N.QNAN16
    # agrees with rounding the float64 value to 8 significant bits for normal values
    x = RNG.standard_normal(10_000).astype(np.float32)
    got = N.bf16_to_f32(N.fp32_to_bf16(N.f32_to_bits(x))).astype(np.float64)
    m, e = np.frexp(x.astype(np.float64))
    ref = np.ldexp(np.round(m * 256) / 256, e)  # np.round is half-to-even
    np.testing.assert_array_equal(got, ref)


def test_adder_tree_order_and_bank_dot():
    w = N.f32_to_bf16_bits(RNG.standard_normal((50, 16)))
    x = N.f32_to_bf16_bits(RNG.standard_normal((50, 16)))
    p = N.bf16_mul(w, x)
    add = N.fp32_add
    l1 = [add(p[:, 2 * i], p[:, 2 * i + 1]) for i in range(8)]
    l2 = [add(l1[2 * i], l1[2 * i + 1]) for i in range(4)]
    l3 = [add(l2[0], l2[1]), add(l2[2], l2[3])]
    np.testing.assert_array_equal(N.adder_tree16(p), add(l3[0], l3[1]))
    acc = np.full(50, 0x3F800000, np.uint32)
    np.testing.assert_array_equal(N.bank_mac16(acc, w, x), add(acc, add(l3[0], l3[1])))
    # small integers: every partial sum is exact, so the dot equals the integer dot
    wi = RNG.integers(-8, 9, (20, 1024)).astype(np.float32)
    xi = RNG.integers(-8, 9, (20, 1024)).astype(np.float32)
    got = N.bits_to_f32(N.bank_dot(N.f32_to_bf16_bits(wi), N.f32_to_bf16_bits(xi)))
    np.testing.assert_array_equal(got, np.sum(wi.astype(np.int64) * xi.astype(np.int64), axis=1))
    # bank_dot is successive bank_mac16 steps from +0
    wb, xb = N.f32_to_bf16_bits(RNG.standard_normal((3, 64))), N.f32_to_bf16_bits(RNG.standard_normal((3, 64)))
    acc = np.zeros(3, np.uint32)
    for j in range(4):
        acc = N.bank_mac16(acc, wb[:, 16 * j:16 * j + 16], xb[:, 16 * j:16 * j + 16])
    np.testing.assert_array_equal(N.bank_dot(wb, xb), acc)
    with pytest.raises(ValueError):
        N.bank_dot(wb[:, :10], xb[:, :10])


def _f(bits):
    return N.bits_to_f32(bits).astype(np.float64)


def test_exp_accuracy_and_specials():
    x = np.linspace(-87.0, 88.0, 50_001).astype(np.float32)
    ref = np.exp(x.astype(np.float64))
    rel6 = np.abs(_f(N.fp32_exp(N.f32_to_bits(x))) - ref) / ref
    rel4 = np.abs(_f(N.fp32_exp(N.f32_to_bits(x), 4)) - ref) / ref
    # Lagrange remainder of the degree-N Taylor series on |r| <= ln2/2, relative to e^r:
    # |r|^(N+1)/(N+1)! * e^|xi| / e^r <= (ln2/2)^(N+1)/(N+1)! * e^(2|r|) <= ... * 2,
    # plus a few FP32 roundings (2^-24 each)
    def bound(n):
        return 2 * (math.log(2) / 2) ** (n + 1) / math.factorial(n + 1) + 8 * 2.0**-24

    assert rel6.max() < bound(6)
    assert rel4.max() < bound(4)
    assert rel4.max() > rel6.max()
    specials = N.f32_to_bits(np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 89.0, -104.0, 1e-40], np.float32))
    want = [ONE, ONE, N.POS_INF32, 0, N.QNAN32, N.POS_INF32, 0, ONE]
    assert [int(v) for v in N.fp32_exp(specials)] == want


def test_recip_and_rsqrt_accuracy_and_specials():
    x = np.exp(np.linspace(-80.0, 80.0, 50_001)).astype(np.float32)
    xd = x.astype(np.float64)
    prev = 1.0
    for it in range(4):
        err = np.max(np.abs(_f(N.fp32_recip(N.f32_to_bits(x), it)) * xd - 1))
        # Newton: relative error e -> e^2 from e0 <= 1/17, until FP32 rounding dominates
        assert err <= max((1 / 17) ** (2**it) * 1.01, 3 * 2.0**-24)
        assert err < prev
        prev = err
    neg = -x
    np.testing.assert_array_equal(N.fp32_recip(N.f32_to_bits(neg)), N.fp32_recip(N.f32_to_bits(x)) | np.uint32(0x80000000))
    err2 = np.max(np.abs(_f(N.fp32_rsqrt(N.f32_to_bits(x), 2)) * np.sqrt(xd) - 1))
    assert err2 < 5e-6
    s = N.f32_to_bits(np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -1.0], np.float32))
    assert [int(v) for v in N.fp32_recip(s)] == [N.POS_INF32, N.NEG_INF32, 0, 0x80000000, N.QNAN32, 0xBF800000]
    assert [int(v) for v in N.fp32_rsqrt(s)] == [N.POS_INF32, N.NEG_INF32, 0, N.QNAN32, N.QNAN32, N.QNAN32]
    # 1/sqrt(4) = 0.5 to within the Newton error
    assert abs(float(_f(N.fp32_rsqrt(N.f32_to_bits(np.float32(4.0))))) - 0.5) < 0.5 * 5e-6


def test_gelu_accuracy_and_specials():
    x = np.linspace(-5.0, 10.0, 30_001).astype(np.float32)
    x = x[x != 0]
    xd = x.astype(np.float64)
    v = xd * 2 * math.sqrt(2 / math.pi) * (1 + 0.044715 * xd * xd)
    ref = xd / (1 + np.exp(-v))  # tanh form, written without cancellation
    rel = np.abs(_f(N.fp32_gelu(N.f32_to_bits(x))) - ref) / np.abs(ref)
    assert rel.max() < 4e-6
    s = N.f32_to_bits(np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -200.0], np.float32))
    assert [int(v) for v in N.fp32_gelu(s)] == [0, 0x80000000, N.POS_INF32, 0x80000000, N.QNAN32, 0x80000000]


def test_shapes_dtypes_and_parameter_validation():
    a = np.zeros((3, 4), np.uint32)
    for fn in (N.fp32_exp, N.fp32_recip, N.fp32_rsqrt, N.fp32_gelu):
        out = fn(a)
        assert out.shape == (3, 4) and out.dtype == np.uint32
    assert N.fp32_add(a, np.uint32(ONE)).shape == (3, 4)
    with pytest.raises(ValueError):
        N.fp32_exp(a, 0)
    with pytest.raises(ValueError):
        N.fp32_recip(a, -1)
