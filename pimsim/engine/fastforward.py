"""Exact fast-forward of repeated blocks.

A weight-streaming PIM kernel is one block (ACT16, MAC16 x columns, PREA) repeated over
thousands of rows that differ only in their row number. Once the channel is in a steady
state (its state relative to the last issue cycle is the same after two consecutive
blocks), every further block is the previous one shifted by the same period, until a
refresh falls due. :func:`run_repeated` issues such blocks one by one with the channel
kernel, and jumps over the steady stretches between refreshes: it shifts the state by
whole periods instead of issuing their commands.

The jump is exact, not an estimate: the kernel's decisions depend on its state only
through differences to the last issue cycle, on row numbers only through equality, and on
the refresh schedule only through ``t >= due``, which the jump never crosses. Blocks that
insert commands (refresh, re-activation) or feed a four-activate window are always issued
in full. Tests compare every cycle with issuing the whole stream at once.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from pimsim.engine.kernel import NC, run_channel


@njit(cache=True)
def _signature_equal(nx, prev, open_row, reopen, base, sig_nx, sig_open, sig_reopen):
    """Compare the state relative to (prev, row base) with the stored signature, then store it."""
    same = True
    for a in range(nx.shape[0]):
        for b in range(nx.shape[1]):
            v = nx[a, b] - prev
            if v < 1:
                v = 1
            if v != sig_nx[a, b]:
                same = False
                sig_nx[a, b] = v
    for k in range(open_row.shape[0]):
        o = open_row[k] - base if open_row[k] >= 0 else -(1 << 62)
        if o != sig_open[k]:
            same = False
            sig_open[k] = o
        q = reopen[k] - base if reopen[k] >= 0 else -(1 << 62)
        if q != sig_reopen[k]:
            same = False
            sig_reopen[k] = q
    return same


@njit(cache=True)
def run_repeated(n_bg, bpg, n_banks, addr_all, is_column, supported, upd_ptr, upd_to, upd_lat,
                 all_ptr, all_to, all_lat, win_from, win_to, win_lat, win_size, has_win_to,
                 tmod_lookahead, cmd, bg, ba, row_rel, row_base, not_before, refresh, interval,
                 nx, ring, wcount, whead, open_row, reopen, sc, cycles_out, counts, with_cycles):
    """Issue ``row_base.size`` copies of the block (rows ``row_rel + row_base[j]`` where
    ``row_rel >= 0``, else -1), the first no earlier than ``not_before``.

    Returns (status, blocks issued in full, refresh stall cycles, inserted commands).
    ``cycles_out`` (blocks x block length) is filled when ``with_cycles``."""
    m = cmd.shape[0]
    reps = row_base.shape[0]
    feeds_window = False  # a block that touches a four-activate window is never skipped
    for i in range(m):
        for w in range(win_from.shape[0]):
            if win_from[w, cmd[i]] or win_to[w, cmd[i]]:
                feeds_window = True
    row = np.empty(m, dtype=np.int64)
    release = np.zeros(m, dtype=np.int64)
    no_release = np.zeros(m, dtype=np.int64)
    cyc = np.empty(m, dtype=np.int64)
    prev_cyc = np.empty(m, dtype=np.int64)
    cap = 256 + 4 * n_banks
    ins_pos = np.empty(cap, dtype=np.int64)
    ins_cmd = np.empty(cap, dtype=np.int64)
    ins_bg = np.empty(cap, dtype=np.int64)
    ins_ba = np.empty(cap, dtype=np.int64)
    ins_row = np.empty(cap, dtype=np.int64)
    ins_cycle = np.empty(cap, dtype=np.int64)
    block_counts = np.zeros(NC, dtype=np.int64)
    sig_nx = np.zeros(nx.shape, dtype=np.int64)
    sig_open = np.zeros(n_banks, dtype=np.int64)
    sig_reopen = np.zeros(n_banks, dtype=np.int64)
    release[0] = not_before
    full = 0
    stall = 0
    inserted = 0
    steady = False       # the last two blocks left the same relative state
    clean = False        # the last block inserted nothing
    period = 0
    j = 0
    while j < reps:
        base = row_base[j]
        if steady and clean and not feeds_window and j > 0:
            prev = sc[0]
            k = reps - j
            if refresh != 0:
                # blocks whose every command comes before the next refresh falls due
                k2 = (sc[1] - prev - 1) // period
                if k2 < k:
                    k = k2
            if k > 0:
                shift = k * period
                for a in range(nx.shape[0]):
                    for b in range(nx.shape[1]):
                        nx[a, b] += shift
                sc[0] = prev + shift
                last_base = row_base[j + k - 1]
                prev_base = row_base[j - 1]
                for q in range(n_banks):
                    if open_row[q] >= 0:
                        open_row[q] += last_base - prev_base
                    if reopen[q] >= 0:
                        reopen[q] += last_base - prev_base
                for c in range(NC):
                    counts[c] += k * block_counts[c]
                if with_cycles:
                    for r in range(k):
                        for i in range(m):
                            cycles_out[j + r, i] = prev_cyc[i] + (r + 1) * period
                for i in range(m):
                    prev_cyc[i] += k * period
                j += k
                continue
        for i in range(m):
            row[i] = row_rel[i] + base if row_rel[i] >= 0 else -1
        start_prev = sc[0]
        for c in range(NC):
            block_counts[c] = 0
        rel = release if j == 0 else no_release
        st, ni, sl = run_channel(
            n_bg, bpg, n_banks, addr_all, is_column, supported, upd_ptr, upd_to, upd_lat,
            all_ptr, all_to, all_lat, win_from, win_to, win_lat, win_size, has_win_to,
            tmod_lookahead, cmd, bg, ba, row, rel, refresh,
            interval, nx, ring, wcount, whead, open_row, reopen, sc, cyc, ins_pos, ins_cmd,
            ins_bg, ins_ba, ins_row, ins_cycle, block_counts)
        if st != 0:
            return st, full, stall, inserted
        for c in range(NC):
            counts[c] += block_counts[c]
        full += 1
        stall += sl
        inserted += ni
        clean = ni == 0
        period = sc[0] - start_prev
        same = _signature_equal(nx, sc[0], open_row, reopen, base, sig_nx, sig_open,
                                sig_reopen)
        steady = same and j > 0
        if with_cycles:
            for i in range(m):
                cycles_out[j, i] = cyc[i]
        for i in range(m):
            prev_cyc[i] = cyc[i]
        j += 1
    return 0, full, stall, inserted
