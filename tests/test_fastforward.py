"""Exact fast-forward: issuing a block repeated over rows, jumping over steady stretches,
gives every cycle and count of issuing the whole stream command by command."""

from __future__ import annotations

import numpy as np
import pytest

from pimsim.config import load_preset
from pimsim.engine import CommandStream, EngineState, issue, issue_repeated
from pimsim.engine.streams import gemv_tile, mac_rows, read_rows
from pimsim.errors import PimsimError

pytestmark = pytest.mark.kernel

FIELDS = ("cmd", "bg", "ba", "row", "col")


def _block(stream, n):
    return CommandStream(*(getattr(stream, f)[:n] for f in FIELDS))


def _unroll(block, bases):
    reps = len(bases)
    row = np.tile(block.row, reps)
    off = np.repeat(np.asarray(bases, dtype=np.int64), len(block))
    return CommandStream(np.tile(block.cmd, reps), np.tile(block.bg, reps), np.tile(block.ba, reps),
                         np.where(row >= 0, row + off, -1), np.tile(block.col, reps))


MAC_ROW = _block(mac_rows(2, 64), 66)                    # ACT16, 64 x MAC16, PREA
GEMV = gemv_tile(2, 64, 64)                              # TMOD, WRGB.., TMOD, rows, TMOD, RDMAC16


@pytest.mark.parametrize("policy,phase", [("off", 0), ("ab", 0), ("ab", 1234), ("pb", 77)])
@pytest.mark.parametrize("which", ["mac_row", "gemv"])
def test_repeated_equals_whole(policy, phase, which):
    short = which == "gemv" and policy == "ab"  # more refreshes inside the shorter run
    spec = load_preset("pim-gpt", ["timing.nREFI=2400"] if short else []).dram
    spec = spec.with_refresh(policy, phase)
    block = MAC_ROW if which == "mac_row" else GEMV
    reps = 400 if which == "mac_row" else 60
    bases = np.arange(reps) * (1 if which == "mac_row" else 2)
    whole = issue(spec, _unroll(block, bases))
    fast = issue_repeated(spec, block, bases, with_cycles=True)
    assert np.array_equal(fast.cycles.ravel(), whole.cycles)
    assert fast.counts == whole.counts
    assert fast.last_cycle == whole.last_cycle
    assert fast.refresh_stall_cycles == whole.refresh_stall_cycles
    if policy == "off":
        assert fast.blocks_in_full <= 3          # steady after two blocks: the rest is jumped
    if policy == "ab" and which == "mac_row":
        assert fast.blocks_in_full < reps // 3   # only the blocks around each refresh


def test_windowed_blocks_are_issued_in_full_and_still_exact():
    spec = load_preset("gddr6-14000").dram.with_refresh("ab")
    block = _block(read_rows(64), 66)            # ACT, 64 x RD, PRE: feeds the FAW window
    bases = np.arange(50)
    whole = issue(spec, _unroll(block, bases))
    fast = issue_repeated(spec, block, bases, with_cycles=True)
    assert np.array_equal(fast.cycles.ravel(), whole.cycles)
    assert fast.blocks_in_full == 50


def test_not_before_and_continuing_state():
    spec = load_preset("pim-gpt").dram
    first, second = np.arange(100), np.arange(100, 350)
    state = EngineState(spec)
    a = issue_repeated(spec, MAC_ROW, first, state=state, not_before=5000, with_cycles=True)
    b = issue_repeated(spec, MAC_ROW, second, state=state, with_cycles=True)
    stream = _unroll(MAC_ROW, np.r_[first, second])
    rel = np.zeros(len(stream), dtype=np.int64)
    rel[0] = 5000
    whole = issue(spec, stream, release=rel)
    assert a.cycles[0, 0] == 5000
    assert np.array_equal(np.r_[a.cycles.ravel(), b.cycles.ravel()], whole.cycles)
    assert state.last_cycle == whole.last_cycle


def test_bad_blocks():
    spec = load_preset("pim-gpt").dram
    tmod_last = CommandStream.from_records([("WRGB", -1, -1, -1, 0), ("TMOD", -1, -1, -1, -1)])
    with pytest.raises(PimsimError, match="must not end with TMOD"):
        issue_repeated(spec, tmod_last, [0, 1])
    with pytest.raises(PimsimError, match=r"rows .*16384.* out of range"):
        issue_repeated(spec, MAC_ROW, [0, 16384])


def test_postponed_refresh_is_issued_before_the_next_kernel_and_pulled_into_idle_time():
    """Refreshes held back while a kernel streams are issued before the next one, each no
    earlier than its due cycle; then refreshes not yet due fill the idle time before the
    release, nRFCab apart, at most 8 ahead of their due cycles; the whole log is clean."""
    from pimsim.engine import check, issue_postponed_refresh, merge_log
    from pimsim.standard import CMD_ID

    spec = load_preset("pim-gpt").dram
    interval, rfc = spec.timing["nREFI"], spec.timing["nRFCab"]
    state = EngineState(spec)
    state.arrays[-1][1] += 8 * interval            # the controller may hold back 8
    kernel = mac_rows(40, 64)                       # ~40 x 226 cycles: a few refreshes due
    res = issue(spec, kernel, state=state)
    assert res.counts["REFab"] == 0                 # none forced inside the kernel
    last = state.last_cycle
    owed = (last - interval) // interval + 1
    assert owed >= 2
    # the next kernel is released right away: only the held-back refreshes (after a PREA,
    # as the stream leaves its last row open)
    cycles, stream = issue_postponed_refresh(state, last + 1, 8, 8)
    assert stream.cmd.tolist() == [CMD_ID["PREA"]] + [CMD_ID["REFab"]] * owed
    refs = cycles[1:]
    assert cycles[0] > last and (refs >= interval * np.arange(1, owed + 1)).all()
    assert (np.diff(refs) >= rfc).all()
    # a long idle gap: the refresh due inside it at its due cycle, then as many pulled in
    # as fit, nRFCab apart, until 8 stand ahead of their due cycles
    gap_end = int(cycles[-1]) + 20 * rfc
    pulled, ps = issue_postponed_refresh(state, gap_end, 8, 8)
    assert (ps.cmd == CMD_ID["REFab"]).all()
    assert pulled[0] == (owed + 1) * interval and (np.diff(pulled) == rfc).all()
    assert pulled[-1] + rfc <= gap_end
    ahead = np.arange(owed + 1, owed + 1 + pulled.size) - ((pulled - interval) // interval + 1)
    assert ahead.max() == 8 and (ahead <= 8).all()
    assert issue_postponed_refresh(state, gap_end, 8, 8) is None   # nothing more fits
    log_c, log_s = merge_log(kernel, res)
    full = CommandStream(*(np.r_[getattr(log_s, f), getattr(stream, f), getattr(ps, f)] for f in FIELDS))
    assert check(spec, np.r_[log_c, cycles, pulled], full) == []
