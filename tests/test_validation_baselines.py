"""The roofline-plus-overhead baseline model, fitted to the committed CPU measurements."""

from __future__ import annotations

import pytest

from _support import ROOT
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


@pytest.mark.models
def test_measured_peak_memory_is_this_measurements(tmp_path):
    """peak_rss_bytes must not carry what the measuring run holds (earlier, larger models of
    the same run, freed memory kept resident, or the parent that started it); the file says
    what the peak covers. The run holds 3 GB while it measures, and its parent 3 GB more."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import json
    import subprocess
    import sys
    from pathlib import Path

    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pytest.skip("this system cannot reset the peak resident set")
    code = (
        "import numpy as np\n"
        "from validation.measure import main\n"
        "big = np.ones(3_000_000_000 // 8)  # 3 GB touched and held while it measures\n"
        "raise SystemExit(main(['--models', 'gpt2-small', '--precision', 'fp32', '--threads',"
        " '1', '--tokens', '2', '--warmup', '1', '--out', %r]))\n" % str(tmp_path))
    import numpy as np

    held = np.ones(3_000_000_000 // 8)  # a large parent: a vfork child's ru_maxrss has it
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    del held
    assert proc.returncode == 0, proc.stderr
    r = json.loads((tmp_path / "cpu-gpt2-small-fp32-t1.json").read_text())
    assert 0.5e9 < r["peak_rss_bytes"] < 2.5e9  # gpt2-small fp32 is 0.5 GB of weights
    assert r["peak_rss_scope"].startswith("this measurement, in a process of its own")


def test_xeon_model_uses_the_bandwidths_baselines_md_assumes():
    """baselines.md 4.3: one 6154 socket, 90 GB/s achieved, upper ends allowing 60 GB/s,
    1-2 ms per layer of eager overhead."""
    moved, layers, _ = step_bytes("gpt2-xl", "fp32", 1024)
    e = estimate("Xeon-6154", "gpt2-xl", "fp32", 1024)
    assert e["low_s"] == pytest.approx(moved / 90e9 + layers * 1.0e-3)
    assert e["high_s"] == pytest.approx(moved / 60e9 + layers * 2.0e-3)


# (model, T4 FP16 weight floor ms, Xeon HF eager FP32 ms/token low-high): shared reference
# baselines.md 4.2 and 4.3 (derived there from published runs)
PUBLISHED = [("gpt2-small", 0.8, (20, 45)), ("gpt2-medium", 2.2, (40, 90)), ("gpt2-large", 4.8, (70, 150)),
             ("gpt2-xl", 9.7, (115, 250)), ("gpt3-large", 4.7, None), ("gpt3-xl", 8.2, (80, 150))]


@pytest.mark.parametrize("model,t4_floor_ms,xeon_ms", PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_spec_models_agree_with_the_published_derivations(model, t4_floor_ms, xeon_ms):
    t4 = estimate("T4", model, "fp16", 132)
    # the published floor counts weights only; ours adds K/V and activations (under 5 % here)
    assert t4["bandwidth_bound_s"] * 1e3 == pytest.approx(t4_floor_ms, rel=0.05)
    if xeon_ms:
        xe = estimate("Xeon-6154", model, "fp32", 132)
        assert xe["low_s"] * 1e3 <= xeon_ms[1] and xeon_ms[0] <= xe["high_s"] * 1e3
