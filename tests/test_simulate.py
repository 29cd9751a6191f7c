"""``pimsim simulate`` and ``pimsim.simulate``: results, files, determinism, bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

import pimsim
from pimsim.cli import main
from pimsim.errors import PimsimError

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def result():
    return pimsim.simulate("gpt2-small", prompt=16, tokens=2, check=True)


def test_result_fields_and_consistency(result):
    d = result.to_dict()
    for key in ("latency_per_token_s", "row_hit_rate", "energy_per_token_J", "breakdown_s",
                "bandwidth", "bounds", "command_counts", "spec_digest", "trace_hash", "pimsim_version"):
        assert key in d
    assert d["latency_per_token_s"] == pytest.approx(sum(s["latency_s"] for s in d["steps"]) / 2)
    # the critical-path breakdown adds up to the latency
    assert sum(d["breakdown_s"].values()) == pytest.approx(d["latency_per_token_s"], rel=1e-9)
    # ... and by op: the nodes' run time, that is the latency less waiting and transfers;
    # every layer's same op shares a name
    by_op = d["breakdown_by_op_s"]
    assert sum(by_op.values()) == pytest.approx(
        d["latency_per_token_s"] - d["breakdown_s"]["waiting"] - d["breakdown_s"]["transfers"],
        rel=1e-9)
    assert {"transformer.h.*.attn.c_attn (linear)", "transformer.h.*.mlp.c_fc (linear)",
            "lm_head (lm_head)", "transformer.h.*.attn (attn_score)"} <= set(by_op)
    assert all(v > 0 for v in by_op.values())
    assert not any(re.search(r"[.][0-9]+[. ]", k) for k in by_op)      # no layer numbers
    # the channels' time, itemised, adds up to the latency (idle is the rest)
    ct = d["channel_time_s"]
    assert all(v >= 0 for v in ct.values()) and ct["mac"] > 0 and ct["mode_switch"] > 0
    assert sum(ct.values()) == pytest.approx(d["latency_per_token_s"], rel=1e-9)
    e = d["energy_per_token_J"]
    assert e["low"] < e["nominal"] < e["high"]
    assert sum(d["energy_breakdown_J"].values()) == pytest.approx(e["nominal"])
    # no faster than the bounds; the bandwidth bound is the looser one
    b = d["bounds"]
    assert b["bandwidth_bound_s"] < b["dram_timing_bound_s"] < d["latency_per_token_s"]
    bw = d["bandwidth"]
    assert 0 < bw["internal_Bps"] < bw["internal_peak_Bps"] and 0 < bw["pin_Bps"] < bw["pin_peak_Bps"]
    assert 0.9 < d["row_hit_rate"] < 1


def test_cli_writes_files_and_identical_json(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert main(["simulate", "gpt2-small", "--prompt", "8", "--tokens", "2", "--out", str(out),
                     "--timeline"]) == 0
    out = capsys.readouterr().out
    assert "latency per token" in out and "energy per token" in out
    assert (a / "result.json").read_bytes() == (b / "result.json").read_bytes()
    # the bounds line gives the latency's distance from each bound, from the JSON's numbers
    d = json.loads((a / "result.json").read_text())
    lat, bounds = d["latency_per_token_s"], d["bounds"]
    line = next(l for l in out.splitlines() if l.strip().startswith("bounds"))
    assert (f"DRAM timing {bounds['dram_timing_bound_s'] * 1e6:,.1f} us "
            f"(latency {(lat / bounds['dram_timing_bound_s'] - 1) * 100:+.1f} %)") in line
    assert f"({(lat / bounds['bandwidth_bound_s'] - 1) * 100:+.1f} %)" in line
    names = {p.name for p in a.iterdir()}
    assert names == {"result.json", "steps.csv", "latency_breakdown.png", "latency_by_position.png",
                     "latency_by_op.png", "energy_breakdown.png", "timeline.json"}
    trace = json.loads((a / "timeline.json").read_text())
    assert any(e.get("ph") == "X" and e["cat"] == "linear" for e in trace["traceEvents"])
    assert (a / "steps.csv").read_text().splitlines()[0] == "step,kv_len,start_s,latency_s"


def test_cli_json_prints_the_result_json(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["simulate", "gpt2-small", "--prompt", "8", "--tokens", "1", "--json",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed == (out / "result.json").read_text()
    assert json.loads(printed)["model"] == "gpt2-small"


@pytest.mark.parametrize("argv,pattern", [
    (["simulate", "nope"], "unknown model 'nope'"),
    (["simulate", "--tokens", "0"], "tokens must be a positive"),
    (["simulate", "--timeline"], "--timeline needs --out"),
    (["simulate", "gpt2-small", "--prompt", "1024", "--tokens", "2"], "needs 1026 positions; the model has 1024"),
    (["simulate", "mistral-7b", "--tokens", "1"], "does not fit pim-gpt"),
    (["simulate", "--set", "asic.lanes=0"], "--set asic.lanes=0: must be positive"),
    (["simulate", "--set", "asic.sram_bytes=4096"], "more than asic.sram_bytes = 4,096 B"),
])
def test_bad_input(argv, pattern, capsys, tmp_path):
    out = tmp_path / "o"
    assert main(argv + (["--out", str(out)] if "--timeline" not in argv else [])) == 2
    err = capsys.readouterr().err
    assert pattern in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("kwargs,pattern", [
    ({"tokens": True}, r"tokens must be a positive number of decode steps, got True"),
    ({"prompt": False}, r"prompt must be a non-negative number of tokens, got False"),
    ({"tokens": np.int64(0)}, r"tokens must be a positive number of decode steps, got np.int64\(0\)"),
    ({"timeline": "yes"}, r"timeline must be True or False, got 'yes'"),
    ({"check": "no"}, r"check must be True or False, got 'no'"),
    ({"replay": None}, r"replay must be True or False, got None"),
    ({"progress": 5}, r"progress must be a callable \(done, total\) or None, got 5"),
])
def test_api_arguments_of_the_wrong_type(kwargs, pattern):
    with pytest.raises(PimsimError, match=pattern):
        pimsim.simulate("gpt2-small", **kwargs)


def test_api_takes_numpy_counts():
    a = pimsim.simulate("gpt2-small", prompt=np.int64(2), tokens=np.int64(1))
    assert a.to_json() == pimsim.simulate("gpt2-small", prompt=2, tokens=1).to_json()


def test_simulate_runs_without_torch(tmp_path):
    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
            "from pimsim.cli import main\n"
            "raise SystemExit(main(['simulate', 'gpt2-small', '--tokens', '1']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "latency per token" in proc.stdout
