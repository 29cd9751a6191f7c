"""ASIC operator costs: primitive counts match the golden numerics, latencies follow the
pass model from named parameters."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

import pimsim.numerics as nm
from pimsim.asic import op_cost
from pimsim.config import load_preset
from pimsim.errors import PimsimError

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def asic():
    return load_preset("pim-gpt").asic


def _count_primitives(monkeypatch, fn, *args):
    """Adds and multiplies that pimsim.numerics performs for one element."""
    counts = {"add": 0, "mul": 0}
    add, mul = nm.fp32_add, nm.fp32_mul

    def c_add(a, b):
        counts["add"] += 1
        return add(a, b)

    def c_mul(a, b):
        counts["mul"] += 1
        return mul(a, b)

    monkeypatch.setattr(nm, "fp32_add", c_add)
    monkeypatch.setattr(nm, "fp32_mul", c_mul)
    fn(np.array([nm.f32_to_bits(np.float32(0.75))]).reshape(-1), *args)
    return counts["add"], counts["mul"]


def test_special_function_counts_match_numerics(asic, monkeypatch):
    n = 1000
    adds, muls = _count_primitives(monkeypatch, nm.fp32_gelu, asic.exp_degree, asic.recip_iterations)
    cost = op_cost(asic, "activation", n, {"kind": "gelu"})
    assert (cost.adds, cost.muls) == (adds * n, muls * n)
    monkeypatch.undo()
    e_adds, e_muls = _count_primitives(monkeypatch, nm.fp32_exp, asic.exp_degree)
    monkeypatch.undo()
    r_adds, r_muls = _count_primitives(monkeypatch, nm.fp32_recip, asic.recip_iterations)
    monkeypatch.undo()
    # sigmoid(x) = recip(1 + exp(-x)): one more add than exp and recip together
    cost = op_cost(asic, "activation", n, {"kind": "sigmoid"})
    assert (cost.adds, cost.muls) == ((e_adds + 1 + r_adds) * n, (e_muls + r_muls) * n)
    q_adds, q_muls = _count_primitives(monkeypatch, nm.fp32_rsqrt, asic.rsqrt_iterations)
    monkeypatch.undo()
    f = 2048
    ln = op_cost(asic, "rmsnorm", f, {"tokens": 1})
    # sum of squares (f mul, f add), mean (1 mul), + eps (1 add), rsqrt, scale and gamma (2f mul)
    assert ln.muls == f + 1 + q_muls + 2 * f and ln.adds == f + 1 + q_adds


def test_norm_rows_overlap(asic):
    f, tokens = 1600, 4
    one = op_cost(asic, "layernorm", f, {"tokens": 1})
    many = op_cost(asic, "layernorm", tokens * f, {"tokens": tokens})
    chunks = math.ceil(f / asic.lanes)
    issue = chunks * asic.add_latency + 1 + chunks   # sum-of-squares pass, scalars, scale pass
    assert many.cycles == one.cycles + (tokens - 1) * issue and many.adds == tokens * one.adds


def test_elementwise_pass_latency(asic):
    for n in (1, 63, 64, 65, 1600, 6400):
        c = op_cost(asic, "elementwise", n, {"kind": "add", "operands": 2})
        assert c.cycles == math.ceil(n / asic.lanes) + asic.add_latency - 1
        assert c.adds == n


def test_softmax_is_rows_of_passes(asic):
    heads, ctx = 16, 1000
    one = op_cost(asic, "softmax", ctx, {"heads": 1, "q_len": 1})
    many = op_cost(asic, "softmax", heads * ctx, {"heads": heads, "q_len": 1})
    assert many.adds == heads * one.adds and many.muls == heads * one.muls
    passes = math.ceil(ctx / asic.lanes)
    # rows are independent: a new head enters the pipelines every time the previous one has
    # issued its max pass, its accumulating exp pass, its reciprocal and its scale pass
    issue = passes * asic.add_latency + passes * asic.add_latency + 1 + passes
    assert many.cycles == one.cycles + (heads - 1) * issue
    assert heads * issue <= many.cycles < heads * one.cycles
    # max pass + exp/sum pass (accumulating) + scale pass: at least three passes of the row
    assert one.cycles >= 3 * passes + asic.exp_latency + asic.recip_latency
    with pytest.raises(PimsimError, match="does not split into 16 rows"):
        op_cost(asic, "softmax", 1001, {"heads": 16, "q_len": 1})


def test_more_lanes_fewer_cycles_and_clock_scales_time(asic):
    wide = dataclasses.replace(asic, lanes=4 * asic.lanes)
    for kind, n, d in [("activation", 8192, {"kind": "gelu"}), ("softmax", 25 * 1024, {"heads": 25}),
                       ("layernorm", 1600, {"tokens": 1}), ("vmm_epilogue", 4800, {})]:
        assert op_cost(wide, kind, n, d).cycles < op_cost(asic, kind, n, d).cycles
    slow = dataclasses.replace(asic, clock_MHz=asic.clock_MHz / 10)
    assert slow.cycle_ps == 10 * asic.cycle_ps


def test_unknown_kinds_are_errors(asic):
    with pytest.raises(PimsimError, match="unknown operator kind 'fft'"):
        op_cost(asic, "fft", 10)
    with pytest.raises(PimsimError, match="unknown activation kind 'swish2'"):
        op_cost(asic, "activation", 10, {"kind": "swish2"})


def test_asic_preset_validation():
    with pytest.raises(PimsimError, match=r"--set asic.exp_degree=13: must be in 1..12"):
        load_preset("pim-gpt", ["asic.exp_degree=13"])
    with pytest.raises(PimsimError, match=r"--set asic.lanes=0: must be positive"):
        load_preset("pim-gpt", ["asic.lanes=0"])
    assert load_preset("pim-gpt", ["asic.clock_MHz=100"]).asic.clock_MHz == 100


# ----------------------------------------------------------------------------- SRAM need

def test_buffer_need_of_gpt2_small_by_hand():
    """GPT-2 small (d 768, 12 heads, FFN 3072). At 1,024 positions the peak is the first
    attention score: the residual stream (768), the fused Q/K/V output still read by the
    score (2,304) and 12 x 1,024 scores. At 33 positions it is the MLP's up projection:
    residual, LayerNorm output and 3,072 outputs."""
    import workloads
    from pimsim.asic import buffer_need

    ops = workloads.load_bundled("gpt2-small").decode.ops
    need, at = buffer_need(ops, 1024)
    assert need == 4 * (768 + 2304 + 12 * 1024)
    assert (ops[at].op, ops[at].module) == ("attn_score", "transformer.h.0.attn")
    need, at = buffer_need(ops, 33)
    assert need == 4 * (768 + 768 + 3072)
    assert (ops[at].op, ops[at].module) == ("linear", "transformer.h.0.mlp.c_fc")
    needs = [buffer_need(ops, n)[0] for n in (1, 200, 400, 800, 1024)]
    assert needs == sorted(needs)


def test_the_papers_models_fit_the_default_sram_at_their_full_context():
    import workloads
    from pimsim.asic import buffer_need

    sram = load_preset("pim-gpt").asic.sram_bytes
    for name in ("gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl", "gpt3-small",
                 "gpt3-medium", "gpt3-large", "gpt3-xl"):
        context = workloads.get_model(name).config["n_positions"]
        assert context in (1024, 2048)
        assert buffer_need(workloads.load_bundled(name).decode.ops, context)[0] <= sram, name


def test_a_run_whose_values_do_not_fit_the_sram_is_an_error():
    import pimsim

    with pytest.raises(PimsimError, match=r"gpt2-small: the ASIC must hold 61,440 B at 1024 "
                                          r"positions \(FP32 values live during attn_score of "
                                          r"transformer.h.0.attn\), more than "
                                          r"asic.sram_bytes = 61,439 B"):
        pimsim.simulate("gpt2-small", prompt=1023, tokens=1, overrides={"asic.sram_bytes": 61439})
    d = pimsim.simulate("gpt2-small", prompt=1023, tokens=1,
                        overrides={"asic.sram_bytes": 61440}).to_dict()
    assert d["asic_buffer_bytes"] == 61440
