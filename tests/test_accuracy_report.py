"""scripts/accuracy_report.py: the accuracy report's table agrees with direct measurements.

Needs torch and transformers (the ``models`` marker). One small report (GPT-2 small, 2
prompt tokens, 2 decode steps: six functional runs) is generated once for the module and
read back from its markdown, as a reader would; its numbers are checked against
:func:`pimsim.functional.step_metrics` on a separate :func:`pimsim.functional.run`.
"""

from __future__ import annotations

import importlib.util
import re
import sys

import numpy as np
import pytest

from _support import ROOT
from pimsim import __version__
from pimsim.functional import APPROXIMATIONS, run, step_metrics

pytestmark = pytest.mark.models

SCRIPT = ROOT / "scripts" / "accuracy_report.py"
MODEL, STEPS, PROMPT = "gpt2-small", 2, 2
SIG = 6e-3  # the table prints 3 significant digits: relative rounding error <= 5e-3
EXACT = "functional, exact functions"
ALL = "all approximations (the hardware)"


def _script():
    spec = importlib.util.spec_from_file_location("accuracy_report", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod    # dataclasses look their module up while it executes
    spec.loader.exec_module(mod)
    return mod


def _table(text: str) -> dict[tuple[str, str], dict]:
    """(configuration, compared with) -> the row's numbers, from the markdown table."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 6 or not re.fullmatch(r"\d+/\d+", cells[5]):
            continue
        key = (cells[0], cells[1])
        assert key not in rows, f"row {key} appears twice"
        agree, steps = map(int, cells[5].split("/"))
        rows[key] = {"max_rel": float(cells[2]), "mean_rel": float(cells[3]),
                     "kl": float(cells[4]), "top1": agree, "steps": steps}
    return rows


def _aggregate(got: np.ndarray, ref: np.ndarray) -> dict:
    """What a table row states, computed here from step_metrics: worst max rel, mean of the
    mean rels, worst KL, steps whose top-1 agrees."""
    m = [step_metrics(got[i], ref[i]) for i in range(got.shape[0])]
    return {"max_rel": max(s["max_rel"] for s in m),
            "mean_rel": sum(s["mean_rel"] for s in m) / len(m),
            "kl": max(s["kl"] for s in m), "top1": sum(s["top1"] for s in m), "steps": len(m)}


def _same(row: dict, want: dict) -> None:
    assert row["steps"] == want["steps"] and row["top1"] == want["top1"], (row, want)
    for k in ("max_rel", "mean_rel", "kl"):
        assert row[k] == pytest.approx(want[k], rel=SIG), (k, row, want)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("accuracy") / "accuracy.md"
    rc = _script().main(["--models", MODEL, "--steps", str(STEPS), "--prompt", str(PROMPT),
                         "--out", str(out)])
    assert rc == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["accuracy.md"]  # no temp file left
    return out.read_text()


@pytest.fixture(scope="module")
def direct():
    """The first run of the report, repeated here: exact functions, so its greedy tokens are
    the report's sequence."""
    return run(MODEL, STEPS, PROMPT, exact=APPROXIMATIONS, references=("fp32", "bf16-weights"))


def test_table_has_every_row(report):
    rows = _table(report)
    want = {("BF16 weights alone", "FP32"), ("BF16 operands (the banks' rounding)", "FP32"),
            (EXACT, "FP32"), (ALL, "FP32"), (ALL, EXACT)}
    for a in APPROXIMATIONS:
        want |= {(f"{a} approximation alone", "FP32"), (f"{a} approximation alone", EXACT)}
    assert want <= set(rows), sorted(want - set(rows))
    assert all(r["steps"] == STEPS for r in rows.values())


def test_header_names_the_inputs_and_no_date(report):
    head = report.split("## ", 1)[0]
    assert "scripts/accuracy_report.py" in head
    assert f"--models {MODEL} --steps {STEPS} --prompt {PROMPT}" in head
    assert f"pimsim {__version__}" in head and "preset `pim-gpt`" in head
    assert f"seed 0, {PROMPT} prompt tokens, {STEPS} decode steps" in head
    assert not re.search(r"\b(19|20)\d\d-\d\d-\d\d\b", report)


def test_bf16_weights_row_equals_step_metrics_of_a_direct_run(report, direct):
    rows = _table(report)
    _same(rows[("BF16 weights alone", "FP32")],
          _aggregate(direct.references["bf16-weights"], direct.references["fp32"]))
    _same(rows[(EXACT, "FP32")], _aggregate(direct.logits, direct.references["fp32"]))


def test_numbers_are_consistent(report):
    rows = _table(report)
    # the hardware's approximations change the logits, so they differ from the exact run
    assert rows[(ALL, EXACT)]["max_rel"] > 0 and rows[(ALL, EXACT)]["mean_rel"] > 0
    # the functional run carries at least the rounding of BF16 weights
    assert rows[(EXACT, "FP32")]["max_rel"] > 0
    for a in APPROXIMATIONS:
        vs_exact = rows[(f"{a} approximation alone", EXACT)]
        if vs_exact["max_rel"] == 0:
            # identical logits to the exact run: identical errors against FP32 too
            assert vs_exact["kl"] == 0 and vs_exact["top1"] == STEPS
            assert rows[(f"{a} approximation alone", "FP32")] == rows[(EXACT, "FP32")]
        for r in (vs_exact, rows[(f"{a} approximation alone", "FP32")]):
            assert 0 <= r["mean_rel"] and 0 <= r["max_rel"] < 1 and r["kl"] >= 0


@pytest.mark.parametrize("argv, message", [
    (["--models", "no-such-model"], "no-such-model"),
    (["--models", MODEL, "--steps", "0"], "--steps"),
    (["--models", MODEL, "--steps", "x"], "--steps"),
    (["--models", MODEL, MODEL], "more than once"),
])
def test_bad_arguments_exit_non_zero_without_output(tmp_path, capsys, argv, message):
    out = tmp_path / "accuracy.md"
    with pytest.raises(SystemExit) as exc:
        _script().main([*argv, "--out", str(out)])
    assert exc.value.code not in (0, None)
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and list(tmp_path.iterdir()) == []
