"""Every reference case replays with every issue cycle equal to its .expected file."""

from __future__ import annotations

import numpy as np
import pytest

from _support import refdata_dir
from pimsim.config import load_timing_file
from pimsim.engine import CommandStream, check, issue, merge_log
from pimsim.engine.cmdfile import read_commands
from pimsim.standard import CMD_ID, load_standard

pytestmark = pytest.mark.timing

CASES = sorted(p.relative_to(refdata_dir()).as_posix()[:-5]
               for p in refdata_dir().glob("*/*.cmds")) + sorted(
    p.relative_to(refdata_dir()).as_posix()[:-8] for p in refdata_dir().glob("*/*.cmds.gz"))


def _timing(refdata, case):
    files = list((refdata / case.split("/")[0]).glob("*.timing.yaml"))
    assert len(files) == 1, files
    return load_timing_file(files[0])


def test_cases_found():
    # the shared set holds 3 DRAM and 9 PIM cases; none may be silently missed
    dirs = {c.split("/")[0] for c in CASES}
    assert dirs == {"dram", "pim"} and len(CASES) >= 12, CASES


@pytest.mark.parametrize("backend", ["numba", "python"])
@pytest.mark.parametrize("case", CASES)
def test_replay_matches_expected(refdata, case, backend):
    spec = _timing(refdata, case)
    cmds = read_commands(next((refdata).glob(case + ".cmds*")))
    expected = read_commands(next((refdata).glob(case + ".expected*")))
    assert np.array_equal(cmds.cmd, expected.cmd) and np.array_equal(cmds.row, expected.row)
    result = issue(spec, cmds, backend=backend)
    assert result.inserted["cycle"].size == 0  # no refresh unless asked
    mismatch = np.flatnonzero(result.cycles != expected.cycle)
    assert mismatch.size == 0, (
        f"{case}: first mismatch at command {mismatch[0]} "
        f"({cmds.records()[mismatch[0]]}): got {result.cycles[mismatch[0]]}, "
        f"expected {expected.cycle[mismatch[0]]}")
    assert check(spec, result.cycles, cmds) == []


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("dram/")])
def test_refresh_insertion_reproduces_reference(refdata, case):
    """Strip the reference's PREA/REFab and let the engine's all-bank refresh put them back:
    the full log (inserted commands included) equals the reference."""
    spec = _timing(refdata, case)
    expected = read_commands(next(refdata.glob(case + ".expected*")))
    keep = (expected.cmd != CMD_ID["PREA"]) & (expected.cmd != CMD_ID["REFab"])
    stream = CommandStream(*(getattr(expected, f)[keep] for f in ("cmd", "bg", "ba", "row", "col")))
    assert expected.first_cycle is not None
    spec = spec.with_refresh("ab", expected.first_cycle)
    for backend in ("numba", "python"):
        result = issue(spec, stream, backend=backend)
        cycles, log = merge_log(stream, result)
        assert np.array_equal(log.cmd, expected.cmd)
        assert np.array_equal(cycles, expected.cycle)
        assert check(spec, cycles, log) == []


@pytest.mark.parametrize("directory,standard", [("dram", "gddr6"), ("pim", "gddr6-aim")])
def test_standard_table_equals_reference_table(refdata, directory, standard):
    """pimsim's standard, resolved with the reference preset's values, is the reference table."""
    spec = load_timing_file(next((refdata / directory).glob("*.timing.yaml")))
    ours = load_standard(standard).resolve(spec.timing)

    def key(c):
        return (frozenset(c.from_), frozenset(c.to), c.scope, c.cycles, c.window)

    assert sorted(map(key, ours), key=repr) == sorted(map(key, spec.constraints), key=repr)
    assert load_standard(standard).tmod_lookahead == spec.tmod_lookahead
