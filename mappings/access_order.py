"""Issue order of single-bank accesses: runs spread over the banks and software-pipelined.

An access kernel is a set of *runs*: one (bank, row) each, opened by ACT, one or more RD or
WR, closed by PRE. The channel engine issues commands in stream order, so the order decides
how much the banks overlap. Run by run (ACT, column commands, PRE, next run) every access
waits out its own bank's whole row cycle; a V-cache append, which writes one lane in each
of hundreds of rows, then costs about one row cycle per write.

:func:`pipelined_order` gives the order a memory controller's scheduler would produce for
such a batch: runs taken round-robin over the banks (the first run of every bank, then the
second, ...), each run's ACT emitted as early as possible, its column commands ``d_col``
runs later and its PRE ``d_pre`` runs later, where the lags are the activate-to-column and
activate-to-precharge times in units of the activate spacing. A run whose bank is still
open from an earlier run first completes that run. The order only affects timing: every
run keeps ACT before its column commands before its PRE, and no bank is activated while
open, so the stream stays protocol-valid whatever the lags.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True)
def _pipeline(run_bank, run_len, run_off, order, d_col, d_pre, n_banks, total):
    n = order.shape[0]
    out = np.empty(total, dtype=np.int64)
    w = 0
    cols_done = np.zeros(run_bank.shape[0], dtype=np.bool_)
    pre_done = np.zeros(run_bank.shape[0], dtype=np.bool_)
    open_run = np.full(n_banks, -1, dtype=np.int64)
    act_step = np.zeros(run_bank.shape[0], dtype=np.int64)
    cq = 0  # next position in `order` whose columns may still be pending
    pq = 0  # next position in `order` whose PRE may still be pending
    for i in range(n):
        r = order[i]
        b = run_bank[r]
        j = open_run[b]
        if j >= 0:  # the bank is still open: finish its run first
            if not cols_done[j]:
                for k in range(run_len[j]):
                    out[w] = run_off[j] + 1 + k
                    w += 1
                cols_done[j] = True
            out[w] = run_off[j] + 1 + run_len[j]
            w += 1
            pre_done[j] = True
            open_run[b] = -1
        out[w] = run_off[r]
        w += 1
        act_step[r] = i
        open_run[b] = r
        while cq <= i and act_step[order[cq]] <= i - d_col:
            q = order[cq]
            if not cols_done[q]:
                for k in range(run_len[q]):
                    out[w] = run_off[q] + 1 + k
                    w += 1
                cols_done[q] = True
            cq += 1
        while pq < cq and act_step[order[pq]] <= i - d_pre:
            q = order[pq]
            if not pre_done[q]:
                out[w] = run_off[q] + 1 + run_len[q]
                w += 1
                pre_done[q] = True
                open_run[run_bank[q]] = -1
            pq += 1
    for p in range(cq, n):
        q = order[p]
        if not cols_done[q]:
            for k in range(run_len[q]):
                out[w] = run_off[q] + 1 + k
                w += 1
            cols_done[q] = True
    for p in range(pq, n):
        q = order[p]
        if not pre_done[q]:
            out[w] = run_off[q] + 1 + run_len[q]
            w += 1
            pre_done[q] = True
    return out


def lags(timing, write: bool) -> tuple[int, int]:
    """(column lag, precharge lag) in runs, from the activate spacing of the timing table:
    one ACT per max(nRRDS, nFAW / 4) cycles."""
    step = max(int(timing.get("nRRDS", 1)), math.ceil(int(timing.get("nFAW", 0)) / 4), 1)
    if write:
        to_col = int(timing.get("nRCDWR", 0))
        col_to_pre = int(timing.get("nCWL", 0)) + int(timing.get("nBL", 0)) + int(timing.get("nWR", 0))
    else:
        to_col = int(timing.get("nRCDRD", 0))
        col_to_pre = int(timing.get("nRTP", 0))
    d_col = math.ceil(to_col / step)
    d_pre = max(d_col + math.ceil(col_to_pre / step), math.ceil(int(timing.get("nRAS", 0)) / step))
    return d_col, d_pre


#: permutations by (run banks, run lengths, banks, lags): decode steps repeat the same
#: access patterns (parameter reads, appends into the same rows)
_ORDERS: dict = {}


def pipelined_order(run_bank: np.ndarray, run_len: np.ndarray, n_banks: int, d_col: int,
                    d_pre: int) -> np.ndarray:
    """Permutation of a kernel's run-by-run command arrays (per run: ACT, ``run_len`` column
    commands, PRE) into the pipelined issue order described in the module docstring. The
    returned array is shared between equal calls; do not write to it."""
    run_bank = np.ascontiguousarray(run_bank, dtype=np.int64)
    run_len = np.ascontiguousarray(run_len, dtype=np.int64)
    key = (run_bank.tobytes(), run_len.tobytes(), int(n_banks), int(d_col), int(d_pre))
    hit = _ORDERS.get(key)
    if hit is None:
        if len(_ORDERS) >= 16384:
            _ORDERS.clear()
        hit = _ORDERS[key] = _order(run_bank, run_len, n_banks, d_col, d_pre)
        hit.flags.writeable = False
    return hit


def _order(run_bank, run_len, n_banks, d_col, d_pre):
    m = run_bank.size
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    run_off = np.cumsum(run_len + 2) - (run_len + 2)
    # rank of each run among the runs of its bank, in the kernel's order
    by_bank = np.argsort(run_bank, kind="stable")
    first = np.r_[0, np.flatnonzero(np.diff(run_bank[by_bank])) + 1]
    rank = np.empty(m, dtype=np.int64)
    starts = np.repeat(first, np.diff(np.r_[first, m]))
    rank[by_bank] = np.arange(m) - starts
    order = np.lexsort((run_bank, rank)).astype(np.int64)
    return _pipeline(run_bank, run_len, run_off, order, int(d_col), int(d_pre), int(n_banks),
                     int((run_len + 2).sum()))
