"""The roofline-plus-overhead baseline model, fitted to the committed CPU measurements."""

from __future__ import annotations

import pytest

from validation.baselines import DEVICES, estimate, fit, load_measurements, step_bytes

pytestmark = pytest.mark.unit

PAPER = {"gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl",
         "gpt3-small", "gpt3-medium", "gpt3-large", "gpt3-xl"}


def test_measurements_cover_the_paper_models_with_environment():
    ms = load_measurements()
    assert {m["model"] for m in ms} == PAPER
    assert {(m["precision"], m["threads"]) for m in ms} == {("fp32", 1), ("fp32", 2), ("bf16", 1), ("bf16", 2)}
    for m in ms:
        assert m["environment"]["cpu_model"] and m["environment"]["torch"] and m["kv_cache"]


def test_fit_states_its_error_per_model():
    res = fit(load_measurements())
    assert set(res) == {"fp32/t1", "fp32/t2", "bf16/t1", "bf16/t2"}
    for r in res.values():
        assert set(r["models"]) == PAPER
        assert r["layer_overhead_ms"] >= 0 and r["token_overhead_ms"] >= 0
        for v in r["models"].values():
            assert v["error"] == pytest.approx((v["model_s"] - v["measured_s"]) / v["measured_s"])
        assert r["max_abs_error"] == max(abs(v["error"]) for v in r["models"].values())


def test_bytes_scale_with_precision_and_context():
    b16, layers, _ = step_bytes("gpt2-small", "bf16", 64)
    b32, _, _ = step_bytes("gpt2-small", "fp32", 64)
    assert layers == 12 and b32 == pytest.approx(2 * b16)
    assert step_bytes("gpt2-small", "bf16", 1024)[0] > b16


def test_spec_estimates_are_ranges_above_the_bandwidth_bound():
    for dev in DEVICES:
        e = estimate(dev, "gpt2-xl", "fp16", 1024)
        assert e["bandwidth_bound_s"] < e["low_s"] < e["high_s"]
