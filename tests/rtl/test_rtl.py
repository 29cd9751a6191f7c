"""RTL under cocotb on Icarus and Verilator, bit-exact against pimsim.numerics.

Vector count and seed: PIMSIM_RTL_VECTORS (default 2000) and PIMSIM_RTL_SEED. A missing
simulator fails the test with the command that installs it (scripts/install-hdl-tools.sh
for Icarus, the `rtl` extra for Verilator).
"""

from __future__ import annotations

import json

import harness
import pytest

from pimsim import numerics as N

pytestmark = pytest.mark.rtl

# Second, non-default instances of the parameterised ASIC units (the defaults are the
# modules' own parameter defaults, which the tests compare with pimsim.numerics' defaults).
ALT_PARAMS = {"EXP_DEGREE_ALT": 4, "RECIP_ITERS_ALT": 1, "RSQRT_ITERS_ALT": 1}
ASIC_TESTS = {
    "fp32_add_matches_golden", "fp32_mul_matches_golden",
    "fp32_exp_matches_golden", "fp32_exp_alt_degree_matches_golden",
    "fp32_recip_matches_golden", "fp32_recip_alt_iters_matches_golden",
    "fp32_rsqrt_matches_golden", "fp32_rsqrt_alt_iters_matches_golden",
    "fp32_gelu_matches_golden",
}
MAC_TESTS = {"dot_product_1024", "directed_corners", "random_stream_with_stalls"}


def _require(sim: str) -> None:
    hint = harness.missing_tool(sim)
    if hint:
        pytest.fail(hint, pytrace=False)


def _names(result) -> set[str]:
    return {t.rsplit(".", 1)[-1] for t in result.tests}


@pytest.mark.parametrize("sim", harness.SIMULATORS)
def test_asic_units_bit_exact(sim):
    _require(sim)
    result = harness.run(
        sim,
        "asic_units_top",
        harness.ASIC_TOP_SOURCES + [harness.TB_DIR / "asic_units_top.v"],
        "tb_asic_units",
        "asic_units",
        parameters=ALT_PARAMS,
        extra_env={"PIMSIM_RTL_PARAMS": json.dumps(ALT_PARAMS)},
    )
    assert _names(result) == ASIC_TESTS, result.summary()
    assert not result.failures, result.summary()


@pytest.mark.parametrize("sim", harness.SIMULATORS)
def test_bank_mac16_bit_exact(sim):
    _require(sim)
    result = harness.run(sim, "bank_mac16", harness.UNIT_SOURCES["bank_mac16"], "tb_bank_mac16", "bank_mac16")
    assert _names(result) == MAC_TESTS, result.summary()
    assert not result.failures, result.summary()


@pytest.mark.parametrize("sim", harness.SIMULATORS)
def test_mutant_without_sticky_bit_is_caught(sim):
    """bank_mac16 built with rtl/mutants/fp32_add_comb_nosticky.v must fail the harness."""
    _require(sim)
    mutant = harness.RTL_DIR / "mutants" / "fp32_add_comb_nosticky.v"
    sources = [mutant if s == "fp32_add_comb.v" else s for s in harness.UNIT_SOURCES["bank_mac16"]]
    result = harness.run(sim, "bank_mac16", sources, "tb_bank_mac16", "bank_mac16_mutant_nosticky")
    assert _names(result) == MAC_TESTS, result.summary()
    failed = {name.rsplit(".", 1)[-1] for name in result.failures}
    # the random stream must catch it, by a numeric mismatch (not a crash or timeout)
    assert "random_stream_with_stalls" in failed, result.summary()
    msg = next(m for n, m in result.failures.items() if n.endswith("random_stream_with_stalls"))
    assert "mismatches against the golden model" in msg, result.summary()


def test_rtl_default_parameters_match_golden_defaults():
    """The Verilog parameter defaults are the golden model's defaults."""
    import re

    def default(file, name):
        text = (harness.RTL_DIR / file).read_text()
        return {int(v) for v in re.findall(rf"parameter\s+{name}\s*=\s*(\d+)", text)}

    assert default("fp32_exp.v", "DEGREE") == {N.EXP_DEGREE_DEFAULT}
    assert default("fp32_recip.v", "ITERS") == {N.RECIP_ITERS_DEFAULT}
    assert default("fp32_rsqrt.v", "ITERS") == {N.RSQRT_ITERS_DEFAULT}
    assert default("fp32_gelu.v", "EXP_DEGREE") == {N.EXP_DEGREE_DEFAULT}
    assert default("fp32_gelu.v", "RECIP_ITERS") == {N.RECIP_ITERS_DEFAULT}
