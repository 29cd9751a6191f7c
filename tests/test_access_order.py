"""Pipelined issue order of single-bank access kernels (mappings.access_order)."""

import math

import numpy as np
import pytest

from mappings.access_order import lags, pipelined_order
from mappings.program import AccessKernel
from pimsim.config import load_preset
from pimsim.engine import EngineState, check, issue
from pimsim.standard import CMD_ID


@pytest.fixture(scope="module")
def spec():
    return load_preset("pim-gpt")


def _kernel(bank, row, what="write"):
    bank = np.asarray(bank, dtype=np.int64)
    row = np.asarray(row, dtype=np.int64)
    n = bank.size
    order = np.lexsort((row, bank))
    return AccessKernel("k", 0, what, bank[order], row[order], np.arange(n) % 64,
                        np.full(n, 3 if what == "write" else -1), 4)


def _run_order_ok(stream):
    """Per bank: ACT, column commands of that row, PRE, next ACT ...; nothing outside."""
    open_row = {}
    for c, bg, ba, r in zip(stream.cmd, stream.bg, stream.ba, stream.row):
        b = (int(bg), int(ba))
        if c == CMD_ID["ACT"]:
            assert b not in open_row, f"ACT to open bank {b}"
            open_row[b] = int(r)
        elif c in (CMD_ID["RD"], CMD_ID["WR"]):
            assert open_row.get(b) == int(r), f"column command to bank {b} row {r} not open"
        elif c == CMD_ID["PRE"]:
            assert b in open_row
            del open_row[b]
    assert not open_row


CASES = {
    "v_append": (np.repeat(np.arange(16), 12), np.tile(np.arange(12), 16) + 300),
    "uneven": (np.r_[np.zeros(40, int), np.arange(16), np.full(5, 7)],
               np.r_[np.arange(40), np.full(16, 9), np.arange(5) + 100]),
    "one_bank": (np.zeros(30, int), np.arange(30)),
    "long_runs": (np.repeat(np.arange(8), 20), np.repeat(np.arange(8) * 3, 20)),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("what", ["write", "read"])
def test_pipelined_stream_is_a_valid_permutation(spec, case, what):
    bank, row = CASES[case]
    k = _kernel(bank, row, what)
    plain = k.commands()
    piped = k.commands(spec)
    assert sorted(zip(plain.cmd, plain.bg, plain.ba, plain.row, plain.col)) == \
        sorted(zip(piped.cmd, piped.bg, piped.ba, piped.row, piped.col))
    _run_order_ok(piped)
    res = issue(spec.dram, piped, state=EngineState(spec.dram))
    assert check(spec.dram, res.cycles, piped) == []


def test_pipelining_approaches_the_activate_rate(spec):
    """A V-cache append (one write in each of 192 rows over 16 banks) issues near one ACT per
    max(nRRDS, nFAW/4) cycles; run after run it costs about a row cycle per write."""
    bank, row = CASES["v_append"]
    k = _kernel(bank, row)
    t = spec.dram.timing
    step = max(t["nRRDS"], math.ceil(t["nFAW"] / 4))
    piped = issue(spec.dram, k.commands(spec), state=EngineState(spec.dram)).cycles[-1] + 1
    plain = issue(spec.dram, k.commands(), state=EngineState(spec.dram)).cycles[-1] + 1
    n = bank.size
    assert piped >= (n - 1) * step          # cannot beat the activate rate
    assert piped <= 1.2 * n * step + t["nRCDWR"] + t["nWR"] + t["nRP"]
    assert plain > 8 * piped


def test_lags_follow_the_timing_table(spec):
    t = spec.dram.timing
    step = max(t["nRRDS"], math.ceil(t["nFAW"] / 4))
    d_col, d_pre = lags(t, True)
    assert d_col * step >= t["nRCDWR"] > (d_col - 1) * step
    assert (d_pre - d_col) * step >= t["nCWL"] + t["nBL"] + t["nWR"]
    assert d_pre * step >= t["nRAS"]
    d_col_r, _ = lags(t, False)
    assert d_col_r * step >= t["nRCDRD"]


def test_order_without_banks_is_empty():
    assert pipelined_order(np.zeros(0), np.zeros(0), 16, 4, 10).size == 0


def _plain_runs(bank, row, col, what, bpg):
    """Plain-loop twin of the run-by-run stream: per (bank, row) run ACT, the column
    commands, PRE."""
    col_cmd = CMD_ID["RD" if what == "read" else "WR"]
    out = []
    for i in range(len(bank)):
        b, r = int(bank[i]), int(row[i])
        new = i == 0 or (b, r) != (int(bank[i - 1]), int(row[i - 1]))
        if new and i > 0:
            p = int(bank[i - 1])
            out.append((CMD_ID["PRE"], p // bpg, p % bpg, -1, -1))
        if new:
            out.append((CMD_ID["ACT"], b // bpg, b % bpg, r, -1))
        out.append((col_cmd, b // bpg, b % bpg, r, int(col[i])))
    if len(bank):
        p = int(bank[-1])
        out.append((CMD_ID["PRE"], p // bpg, p % bpg, -1, -1))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_run_by_run_stream_equals_plain_loop_twin(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 80))
    bank, row = rng.integers(0, 16, n), rng.integers(0, 6, n)
    order = np.lexsort((row, bank))
    bank, row, col = bank[order], row[order], rng.integers(0, 64, n)
    what = "read" if seed % 2 else "write"
    k = AccessKernel(f"k{seed}", 0, what, bank, row, col, np.full(n, -1), 4)
    s = k.commands()
    got = list(zip(s.cmd.tolist(), s.bg.tolist(), s.ba.tolist(), s.row.tolist(), s.col.tolist()))
    assert got == _plain_runs(bank, row, col, what, 4)
    assert k.counts["ACT"] == k.counts["PRE"] == sum(1 for c in got if c[0] == CMD_ID["ACT"])


@pytest.mark.parametrize("seed", range(6))
def test_runs_in_one_bank_keep_their_order(seed):
    """Runs that all use one bank follow each other whatever the lags (the access-stream
    builder skips the pipelining for them)."""
    rng = np.random.default_rng(seed)
    m = int(rng.integers(2, 12))
    run_len = rng.integers(1, 40, size=m).astype(np.int64)
    bank = int(rng.integers(0, 16))
    d_col = int(rng.integers(0, 6))
    order = pipelined_order(np.full(m, bank, dtype=np.int64), run_len, 16, d_col,
                            d_col + int(rng.integers(0, 8)))
    assert np.array_equal(order, np.arange(int((run_len + 2).sum())))
