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
