"""The baseline measurement script writes one JSON per run with its environment."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.models


def test_measure_writes_results_with_environment(tmp_path):
    from validation.measure import main

    assert main(["--models", "gpt2-small", "--precision", "fp32", "--threads", "1",
                 "--tokens", "3", "--warmup", "1", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("cpu-gpt2-small-fp32-t1.json")
    r = json.loads(path.read_text())
    assert r["parameters"] == 124_439_808 and r["kv_cache"] and r["threads"] == 1
    assert len(r["step_s"]) == 3 and r["p10_s_per_token"] <= r["median_s_per_token"] <= r["p90_s_per_token"]
    env = r["environment"]
    for key in ("cpu_model", "logical_cpus", "torch", "transformers", "date_utc"):
        assert env[key]
