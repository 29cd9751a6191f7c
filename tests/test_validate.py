"""`pimsim validate --quick`: every claim evaluated from runs, the report written."""

from __future__ import annotations

import re
import time

import pytest

from pimsim.cli import main

pytestmark = pytest.mark.e2e


def test_validate_quick_writes_the_claim_table(tmp_path, capsys):
    t = time.perf_counter()
    assert main(["validate", "--quick", "--out", str(tmp_path)]) == 0
    assert time.perf_counter() - t < 120
    out = capsys.readouterr().out
    verdicts = re.findall(r"^(reproduced|differs) ", out, flags=re.M)
    assert len(verdicts) == 9  # the paper's nine claims
    report = (tmp_path / "REPORT.md").read_text()
    claims = report.split("## Claims", 1)[1].split("\n## ", 1)[0]
    table = [l for l in claims.splitlines() if l.startswith("| ")][1:]
    assert len(table) == 9
    for row in table:
        assert "reproduced" in row or "differs" in row
    # every claim that differs is explained in the report
    for claim in re.findall(r"^differs\s+(.+?): ours", out, flags=re.M):
        assert f"**{claim}**:" in report
    assert (tmp_path / "figures" / "latency.png").stat().st_size > 1000
    assert (tmp_path / "figures" / "speedup.png").stat().st_size > 1000
    assert "| gpt2-small |" in report and "fp32/t1" in report


# ------------------------------------------------------------------ claims from small runs
@pytest.fixture(scope="module")
def small_runs():
    from validation.claims import collect

    return {n: collect(["gpt2-small"], prompt=128, tokens=n, scaling_model="gpt2-small", channel_counts=(4, 16))
            for n in (1, 3)}


def _row(rows, start):
    (r,) = [r for r in rows if r["claim"].startswith(start)]
    return r


def test_transfer_reduction_is_per_token_whatever_the_token_count(small_runs):
    """The simulator's transfer_bytes are run totals: the ratio must not fall with --tokens."""
    from validation.claims import evaluate

    one, three = (_row(evaluate(small_runs[n]), "off-chip transfer reduction") for n in (1, 3))
    assert three["ours"][0] == pytest.approx(one["ours"][0], rel=1e-6)
    r = small_runs[3].models["gpt2-small"]
    per_token = sum(r["transfer_bytes"].values()) / r["decode_tokens"]
    assert three["ours"][0] == pytest.approx(2 * r["parameters"] / per_token)
    if three["explanation"]:
        assert f"moves {per_token / 1e6:.2f} MB per token" in three["explanation"]


def test_energy_claims_keep_the_paper_versions_apart(small_runs, monkeypatch):
    """The paper's v1 and revised CPU ranges (890-1632, 320-602) leave a gap: a result inside
    it matches neither, so it is no reproduction; the paper column shows both versions."""
    import copy

    import validation.baselines
    import validation.claims as claims

    runs = copy.deepcopy(small_runs[1])
    runs.models["gpt2-small"]["energy_per_token_J"] = {"low": 0.25, "nominal": 0.25, "high": 0.25}
    monkeypatch.setattr(validation.baselines, "estimate",
                        lambda *a, **k: {"low_s": 1.0, "high_s": 1.0, "bandwidth_bound_s": 0.5, "flops": 0})
    monkeypatch.setattr(claims, "XEON_POWER_W", (170.0, 200.0))
    rows = claims.evaluate(runs)
    cpu = _row(rows, "energy efficiency over CPU")
    assert cpu["ours"] == pytest.approx((680.0, 800.0))
    assert cpu["verdict"] == "differs" and cpu["explanation"]
    gpu = _row(rows, "energy efficiency over GPU")
    assert gpu["ours"] == pytest.approx((120.0, 280.0)) and gpu["verdict"] == "reproduced"  # revised 123-383
    for row, v1, rev in ((cpu, "890 - 1632", "320 - 602"), (gpu, "339 - 1085", "123 - 383")):
        assert f"{v1} (v1)" in row["paper"] and f"{rev} (revised)" in row["paper"]
    assert "(T4)" in gpu["claim"] and "(Xeon Gold 6154)" in cpu["claim"]
    assert "assumed" in cpu["basis"] and "B5" in cpu["basis"] and "B4" in gpu["basis"]


def test_non_vmm_claim_names_its_stand_in_model(small_runs):
    """The 1.16 % is a GPT3-XL claim: a run without gpt3-xl says which model stood in."""
    from validation.claims import evaluate

    r = _row(evaluate(small_runs[1]), "share of latency outside VMM")
    assert "gpt3-xl" in r["claim"] and "gpt2-small" in r["claim"] and "stand-in" in r["claim"]
    b = small_runs[1].models["gpt2-small"]["breakdown_s"]
    lat = small_runs[1].models["gpt2-small"]["latency_per_token_s"]
    assert r["ours"] == pytest.approx((b["asic_ops"] + b["transfers"]) / lat)
    assert f"{100 * b['dram_access'] / lat:.2f} %" in r["basis"]  # what is left out is shown


def test_channel_scaling_explanation_states_both_ends(small_runs):
    from validation.claims import evaluate

    r = _row(evaluate(small_runs[1]), "channel scaling")
    lat = {c: small_runs[1].channels[c]["latency_per_token_s"] for c in (4, 16)}
    assert r["ours"] == pytest.approx(lat[4] / lat[16] / 4)
    assert r["verdict"] == "differs"  # 4 -> 16 channels of gpt2-small at 128: efficiency 0.84
    assert f"{lat[4] * 1e6:.0f} -> {lat[16] * 1e6:.0f} us" in r["explanation"]


def test_report_names_the_measured_machine_and_is_deterministic(tmp_path, capsys):
    from validation.baselines import load_measurements

    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert main(["validate", "--quick", "--out", str(out)]) == 0
    capsys.readouterr()
    for name in ("REPORT.md", "figures/latency.png", "figures/speedup.png"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    report = (a / "REPORT.md").read_text()
    env = load_measurements()[0]["environment"]
    assert "not on the paper's Xeon Gold 6154 or T4" in report
    assert f"{env['cpu_model']}, {env['logical_cpus']} logical CPUs" in report
    assert f"torch {env['torch']}" in report and "KV cache on" in report


@pytest.mark.parametrize("argv,needle", [
    (["--tokens", "0"], "--tokens must be positive"),
    (["--prompt", "-1"], "--prompt non-negative"),
    (["--prompt", "1024"], "needs 1025 positions; the model has 1024"),
], ids=["tokens-0", "prompt-negative", "prompt-too-long"])
def test_bad_numbers_are_one_line_errors_with_nothing_written(argv, needle, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["validate", "--quick", "--out", str(out)] + argv) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err.count("\n") == 1 and needle in cap.err
    assert not out.exists()


def test_out_naming_a_file_is_an_error(tmp_path, capsys):
    f = tmp_path / "report.md"
    f.write_text("keep\n")
    assert main(["validate", "--quick", "--out", str(f)]) == 2
    cap = capsys.readouterr()
    assert cap.err == f"pimsim: error: --out {f}: {f} is not a folder\n" and cap.out == ""
    assert f.read_text() == "keep\n" and sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]
