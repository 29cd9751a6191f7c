"""cocotb test bench of the ASIC arithmetic units (top: asic_units_top.v).

Every unit is checked bit for bit against pimsim.numerics over directed corner cases and
PIMSIM_RTL_VECTORS random vectors, fed back to back with random idle cycles; each test
also checks that out_valid follows in_valid by the documented latency. The parameters of the second ("_alt")
instances come from the environment set by the runner (PIMSIM_RTL_PARAMS, JSON).
"""

from __future__ import annotations

import json
import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge

import vectors as V
from pimsim import numerics as N

PARAMS = json.loads(os.environ.get("PIMSIM_RTL_PARAMS", "{}"))
# bit of the top's ``sel`` input that routes the inputs to each unit
SEL = {"add": 0, "mul": 1, "exp": 2, "exp_alt": 3, "recip": 4, "recip_alt": 5,
       "rsqrt": 6, "rsqrt_alt": 7, "gelu": 8}


def latency(unit: str) -> int:
    """Cycles from in_valid to out_valid (rtl/README.md); defaults from pimsim.numerics."""
    p = PARAMS
    degree = p["EXP_DEGREE_ALT"] if unit == "exp_alt" else N.EXP_DEGREE_DEFAULT
    recip = p["RECIP_ITERS_ALT"] if unit == "recip_alt" else N.RECIP_ITERS_DEFAULT
    rsqrt = p["RSQRT_ITERS_ALT"] if unit == "rsqrt_alt" else N.RSQRT_ITERS_DEFAULT
    base = unit.removesuffix("_alt")
    return {"add": 1, "mul": 1, "exp": degree + 3, "recip": recip + 2, "rsqrt": rsqrt + 2,
            "gelu": N.EXP_DEGREE_DEFAULT + N.RECIP_ITERS_DEFAULT + 8}[base]


def _golden():
    p = PARAMS
    return {
        "add": lambda a, b: N.fp32_add(a, b),
        "mul": lambda a, b: N.fp32_mul(a, b),
        "exp": lambda a, b: N.fp32_exp(a),
        "exp_alt": lambda a, b: N.fp32_exp(a, degree=p["EXP_DEGREE_ALT"]),
        "recip": lambda a, b: N.fp32_recip(a),
        "recip_alt": lambda a, b: N.fp32_recip(a, iters=p["RECIP_ITERS_ALT"]),
        "rsqrt": lambda a, b: N.fp32_rsqrt(a),
        "rsqrt_alt": lambda a, b: N.fp32_rsqrt(a, iters=p["RSQRT_ITERS_ALT"]),
        "gelu": lambda a, b: N.fp32_gelu(a),
    }


def _operands(unit: str):
    n = V.vector_count()
    g = V.rng(unit)
    if unit == "add":
        ca, cb = V.binary_corners()
        ra, rb = V.add_operands(g, n)
    elif unit == "mul":
        ca, cb = V.binary_corners()
        ra, rb = V.mul_operands(g, n)
    else:
        base = unit.removesuffix("_alt")
        ca = V.unary_corners()
        cb = np.zeros_like(ca)
        ra = V.unary_operands(base, g, n)
        rb = V.random_bits(g, n)
    return np.concatenate([ca, ra]), np.concatenate([cb, rb])


async def _start(dut, unit: str):
    Clock(dut.clk, 10, unit="ns").start()
    dut.sel.value = 1 << SEL[unit]
    dut.in_valid.value = 0
    dut.a.value = 0
    dut.b.value = 0
    dut.rst_n.value = 0
    await ClockCycles(dut.clk, 2)
    await FallingEdge(dut.clk)
    dut.rst_n.value = 1


async def _check_unit(dut, unit: str):
    await _start(dut, unit)
    a, b = _operands(unit)
    expected = _golden()[unit](a, b).astype(np.uint32)
    g = V.rng("idle-" + unit)
    # 20 % idle cycles at random, otherwise back to back
    idle = g.random(len(a) * 2) < 0.2
    v_out = getattr(dut, "v_" + unit)
    y_out = getattr(dut, "y_" + unit)
    lat = latency(unit)
    got, mismatches, latency_errors = [], [], 0
    driven = [0] * lat  # in_valid of the last `lat` cycles, oldest first
    i = cyc = 0
    while i < len(a) or any(driven):
        await FallingEdge(dut.clk)
        ov = int(v_out.value)
        if ov != driven[0]:
            latency_errors += 1
        if ov:
            k = len(got)
            y = y_out.value.to_unsigned()
            got.append(y)
            if y != int(expected[k]):
                mismatches.append((k, int(a[k]), int(b[k]), y, int(expected[k])))
        if i < len(a) and not idle[cyc]:
            dut.in_valid.value = 1
            dut.a.value = int(a[i])
            dut.b.value = int(b[i])
            i += 1
            driven = driven[1:] + [1]
        else:
            dut.in_valid.value = 0
            driven = driven[1:] + [0]
        cyc += 1
    for k, x0, x1, y, e in mismatches[:10]:
        dut._log.error(f"{unit} #{k}: a={x0:#010x} b={x1:#010x} rtl={y:#010x} golden={e:#010x}")
    assert latency_errors == 0, f"{unit}: out_valid did not follow in_valid by {lat} cycles ({latency_errors} times)"
    assert len(got) == len(a), f"{unit}: {len(got)} results for {len(a)} inputs"
    assert not mismatches, f"{unit}: {len(mismatches)} of {len(a)} results differ from the golden model"
    dut._log.info(f"{unit}: {len(a)} vectors bit-exact ({len(a) - V.vector_count()} directed)")


@cocotb.test()
async def fp32_add_matches_golden(dut):
    await _check_unit(dut, "add")


@cocotb.test()
async def fp32_mul_matches_golden(dut):
    await _check_unit(dut, "mul")


@cocotb.test()
async def fp32_exp_matches_golden(dut):
    await _check_unit(dut, "exp")


@cocotb.test()
async def fp32_exp_alt_degree_matches_golden(dut):
    await _check_unit(dut, "exp_alt")


@cocotb.test()
async def fp32_recip_matches_golden(dut):
    await _check_unit(dut, "recip")


@cocotb.test()
async def fp32_recip_alt_iters_matches_golden(dut):
    await _check_unit(dut, "recip_alt")


@cocotb.test()
async def fp32_rsqrt_matches_golden(dut):
    await _check_unit(dut, "rsqrt")


@cocotb.test()
async def fp32_rsqrt_alt_iters_matches_golden(dut):
    await _check_unit(dut, "rsqrt_alt")


@cocotb.test()
async def fp32_gelu_matches_golden(dut):
    await _check_unit(dut, "gelu")
