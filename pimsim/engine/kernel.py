"""The numba channel kernel: issue a command stream in order, each command at the earliest
cycle every constraint allows, inserting refresh when due.

The kernel is plain loops over arrays and never validates (the wrapper in
:mod:`pimsim.engine` does). Its twin, :mod:`pimsim.engine.twin`, computes the same result
from the constraint records directly; tests require identical output.

State is a table ``nx`` of earliest next-issue cycles, one row per scope instance and one
column per command: row 0 holds limits that apply everywhere (channel-scope rules, and
rules from all-bank commands), row 1 the maximum over every bank group and bank (what an
all-bank command must respect), then one row per bank group and one per bank. Issuing a
command raises the entries its rules reach; checking a command reads at most three.

Semantics shared with the twin (see docs/engine.md):

* Command ``i`` issues at ``max(prev + 1, limits)``; TMOD (when the standard says so) also
  waits until the command after it would be allowed.
* Refresh (policy ab or pb) falls due every ``interval`` cycles from ``first_due``. Once
  due, a column command whose row is open may still go first if it issues before the
  refresh's next command could; otherwise the engine issues PREA (if a bank is open) and
  REFab (ab), or PRE (if open) and REFpb of the next bank in round-robin order (pb), each
  no earlier than the due cycle. Rows closed by such a refresh are re-opened (ACT16 if all
  banks closed on one row and the command is all-bank, else ACT per bank) before the next
  column command that needs them, unless the stream itself activates or precharges first.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from pimsim.engine.compile import ACT, ACT16, PRE, PREA, REFAB, REFPB, TMOD

NC = 12

STATUS_OK = 0
STATUS_OVERFLOW = -1
STATUS_NO_PROGRESS = -2


@njit(cache=True, inline="always")
def _earliest(c, bgi, bai, prev, nx, n_bg, bpg, addr_all, win_to, win_lat, win_size,
              has_win_to, ring, wcount, whead):
    t = prev + 1
    v = nx[0, c]
    if v > t:
        t = v
    if addr_all[c]:
        v = nx[1, c]
        if v > t:
            t = v
    else:
        v = nx[2 + bgi, c]
        if v > t:
            t = v
        v = nx[2 + n_bg + bgi * bpg + bai, c]
        if v > t:
            t = v
    if has_win_to[c]:
        for w in range(win_to.shape[0]):
            if win_to[w, c] and wcount[w] >= win_size[w]:
                v = ring[w, whead[w]] + win_lat[w]
                if v > t:
                    t = v
    return t


@njit(cache=True, inline="always")
def _apply(c, bgi, bai, t, nx, n_bg, bpg, addr_all, upd_ptr, upd_to, upd_lat, all_ptr,
           all_to, all_lat, win_from, win_size, ring, wcount, whead, has_win_from):
    if addr_all[c]:
        _apply_all(c, t, nx, all_ptr, all_to, all_lat)
    else:
        _apply_bank(c, bgi, bai, t, nx, n_bg, bpg, upd_ptr, upd_to, upd_lat)
    if has_win_from[c]:
        _apply_windows(c, t, win_from, win_size, ring, wcount, whead)


@njit(cache=True, inline="always")
def _apply_all(c, t, nx, all_ptr, all_to, all_lat):
    """Rules from an all-bank command: every scope folds into the row that binds everywhere."""
    for k in range(all_ptr[c], all_ptr[c + 1]):
        b = all_to[k]
        v = t + all_lat[k]
        if v > nx[0, b]:
            nx[0, b] = v


@njit(cache=True, inline="always")
def _apply_bank(c, bgi, bai, t, nx, n_bg, bpg, upd_ptr, upd_to, upd_lat):
    """Rules from a bank-addressed command: channel scope, its bank group, its bank."""
    for k in range(upd_ptr[0, c], upd_ptr[0, c + 1]):
        b = upd_to[0, k]
        v = t + upd_lat[0, k]
        if v > nx[0, b]:
            nx[0, b] = v
    rg = 2 + bgi
    for k in range(upd_ptr[1, c], upd_ptr[1, c + 1]):
        b = upd_to[1, k]
        v = t + upd_lat[1, k]
        if v > nx[rg, b]:
            nx[rg, b] = v
        if v > nx[1, b]:
            nx[1, b] = v
    rb = 2 + n_bg + bgi * bpg + bai
    for k in range(upd_ptr[2, c], upd_ptr[2, c + 1]):
        b = upd_to[2, k]
        v = t + upd_lat[2, k]
        if v > nx[rb, b]:
            nx[rb, b] = v
        if v > nx[1, b]:
            nx[1, b] = v


@njit(cache=True, inline="always")
def _apply_windows(c, t, win_from, win_size, ring, wcount, whead):
    for w in range(win_from.shape[0]):
        if win_from[w, c]:
            ring[w, whead[w]] = t
            whead[w] = (whead[w] + 1) % win_size[w]
            wcount[w] += 1


@njit(cache=True, inline="always")
def _record(j, i, c, bgi, bai, r, t, ins_pos, ins_cmd, ins_bg, ins_ba, ins_row, ins_cycle, counts):
    """Log an inserted command (the j-th) issued at t before input command i."""
    ins_pos[j] = i
    ins_cmd[j] = c
    ins_bg[j] = bgi
    ins_ba[j] = bai
    ins_row[j] = r
    ins_cycle[j] = t
    counts[c] += 1


@njit(cache=True)
def new_state(n_bg, n_banks, win_size, first_due):
    """A fresh channel: nothing issued, all banks closed, first refresh due at first_due.

    Returns (nx, ring, wcount, whead, open_row, reopen, sc) with sc = [prev, due, rr,
    n_reopen]: the whole state :func:`run_channel` carries from one call to the next."""
    nw = win_size.shape[0]
    maxw = 1
    for w in range(nw):
        if win_size[w] > maxw:
            maxw = win_size[w]
    nx = np.zeros((2 + n_bg + n_banks, NC), dtype=np.int64)
    ring = np.zeros((max(nw, 1), maxw), dtype=np.int64)
    wcount = np.zeros(max(nw, 1), dtype=np.int64)
    whead = np.zeros(max(nw, 1), dtype=np.int64)
    open_row = np.full(n_banks, -1, dtype=np.int64)
    reopen = np.full(n_banks, -1, dtype=np.int64)
    sc = np.zeros(4, dtype=np.int64)
    sc[0] = -1
    sc[1] = first_due
    return nx, ring, wcount, whead, open_row, reopen, sc


@njit(cache=True)
def _channel_wide(c, release, nx, open_row, reopen, sc, all_ptr, all_to, all_lat):
    """Issue one all-bank PREA or REFab (no window rule) at the earliest legal cycle, no
    earlier than ``release``; returns its cycle."""
    t = sc[0] + 1
    if nx[0, c] > t:
        t = nx[0, c]
    if nx[1, c] > t:
        t = nx[1, c]
    if release > t:
        t = release
    _apply_all(c, t, nx, all_ptr, all_to, all_lat)
    for k in range(open_row.shape[0]):
        open_row[k] = -1
        reopen[k] = -1
    sc[0] = t
    sc[3] = 0
    return t


@njit(cache=True)
def postponed_refresh(nx, open_row, reopen, sc, all_ptr, all_to, all_lat, until, postpone,
                      pull_in, interval, rfc, out_cmd, out_cycle):
    """The refreshes a controller issues before a kernel released at ``until`` (see
    :func:`pimsim.engine.issue_postponed_refresh`): the held-back ones due by then (PREA
    first if a bank is open), each no earlier than its due cycle, then pulled-in ones that
    finish by ``until`` while at most ``pull_in`` stand ahead of their due cycles. Writes
    the commands and cycles; returns how many (-1: a pulled-in refresh off its expected
    cycle)."""
    n = 0
    first = sc[1] - postpone * interval
    if until >= first:
        k = (until - first) // interval + 1
        for q in range(open_row.shape[0]):
            if open_row[q] >= 0:
                out_cycle[n] = _channel_wide(PREA, first, nx, open_row, reopen, sc, all_ptr,
                                             all_to, all_lat)
                out_cmd[n] = PREA
                n += 1
                break
        for j in range(k):
            out_cycle[n] = _channel_wide(REFAB, first + j * interval, nx, open_row, reopen, sc,
                                         all_ptr, all_to, all_lat)
            out_cmd[n] = REFAB
            n += 1
        sc[1] += k * interval
    closed = True
    for q in range(open_row.shape[0]):
        if open_row[q] >= 0:
            closed = False
    if pull_in > 0 and closed and rfc > 0:
        # pulled-in refreshes follow each other nRFCab apart (REFab blocks every command
        # for nRFCab; the first one's other limits are already met)
        t = sc[0] + 1
        if nx[0, REFAB] > t:
            t = nx[0, REFAB]
        if nx[1, REFAB] > t:
            t = nx[1, REFAB]
        nxt = sc[1] - postpone * interval       # due cycle of the next refresh, > until
        m = 0
        while m < pull_in and t + (m + 1) * rfc <= until:
            # refreshes standing issued ahead of their due cycle once the m-th is issued
            if (nxt + m * interval - (t + m * rfc) - 1) // interval + 1 > pull_in:
                break
            m += 1
        for j in range(m):
            tj = _channel_wide(REFAB, 0, nx, open_row, reopen, sc, all_ptr, all_to, all_lat)
            if tj != t + j * rfc:
                return -1
            out_cycle[n] = tj
            out_cmd[n] = REFAB
            n += 1
        sc[1] += m * interval
    return n


@njit(cache=True)
def run_channel(n_bg, bpg, n_banks, addr_all, is_column, supported, upd_ptr, upd_to, upd_lat,
                all_ptr, all_to, all_lat, win_from, win_to, win_lat, win_size, has_win_to,
                tmod_lookahead, cmd, bg, ba, row, release, refresh, interval,
                nx, ring, wcount, whead, open_row, reopen, sc,
                cycles_out, ins_pos, ins_cmd, ins_bg, ins_ba, ins_row, ins_cycle, counts):
    """Issue one channel's stream, continuing from the state (nx ... sc, see new_state),
    which it updates. ``release[i]`` is the earliest cycle command i may issue for reasons
    outside the channel (its data arriving), or less. Returns (status, inserted commands,
    refresh stall cycles); after a non-zero status the state is undefined."""
    n = cmd.shape[0]
    nw = win_from.shape[0]
    has_win_from = np.zeros(NC, dtype=np.uint8)
    for w in range(nw):
        for k in range(NC):
            if win_from[w, k]:
                has_win_from[k] = 1
    cap = ins_pos.shape[0]
    prev = sc[0]
    due = sc[1]
    rr = sc[2]
    n_reopen = sc[3]  # banks with a pending re-activation (reopen >= 0)
    n_ins = 0
    stall = 0
    for i in range(n):
        c = cmd[i]
        bgi = bg[i]
        bai = ba[i]
        r = row[i]
        # Fast path (most commands): no refresh due, no re-activation pending, not a TMOD
        # with lookahead. It calls the small update helpers directly: _apply inlined whole
        # made the MAC16 stream about 4x slower.
        t = _earliest(c, bgi, bai, prev, nx, n_bg, bpg, addr_all, win_to, win_lat, win_size,
                      has_win_to, ring, wcount, whead)
        if release[i] > t:
            t = release[i]
        fast = not has_win_to[c] and not (c == TMOD and tmod_lookahead)
        if fast and (refresh == 0 or t < due) and not (is_column[c] and n_reopen > 0):
            if addr_all[c]:
                _apply_all(c, t, nx, all_ptr, all_to, all_lat)
            else:
                _apply_bank(c, bgi, bai, t, nx, n_bg, bpg, upd_ptr, upd_to, upd_lat)
            if has_win_from[c]:
                _apply_windows(c, t, win_from, win_size, ring, wcount, whead)
            t0 = t
        else:
            t0 = -1
            guard = 0
            while True:
                guard += 1
                if guard > 4 * n_banks + 64:
                    return STATUS_NO_PROGRESS, n_ins, stall
                t = _earliest(c, bgi, bai, prev, nx, n_bg, bpg, addr_all, win_to, win_lat,
                              win_size, has_win_to, ring, wcount, whead)
                if c == TMOD and tmod_lookahead and i + 1 < n:
                    t2 = _earliest(cmd[i + 1], bg[i + 1], ba[i + 1], prev, nx, n_bg, bpg, addr_all,
                                   win_to, win_lat, win_size, has_win_to, ring, wcount, whead)
                    if release[i + 1] > t2:
                        t2 = release[i + 1]
                    if t2 > t:
                        t = t2
                if release[i] > t:
                    t = release[i]
                if t0 < 0:
                    t0 = t
                if refresh != 0 and t >= due:
                    # the refresh's next command: precharge (if needed) or the refresh itself
                    if refresh == 1:
                        pre_needed = False
                        for k in range(n_banks):
                            if open_row[k] >= 0:
                                pre_needed = True
                        nc, nbg, nba = (PREA, -1, -1) if pre_needed else (REFAB, -1, -1)
                    else:
                        pre_needed = open_row[rr] >= 0
                        nbg = rr // bpg
                        nba = rr % bpg
                        nc = PRE if pre_needed else REFPB
                    tr = _earliest(nc, nbg, nba, prev, nx, n_bg, bpg, addr_all, win_to, win_lat,
                                   win_size, has_win_to, ring, wcount, whead)
                    if tr < due:
                        tr = due
                    if is_column[c] and t < tr:
                        ready = True
                        if addr_all[c]:
                            for k in range(n_banks):
                                if open_row[k] != r:
                                    ready = False
                        elif open_row[bgi * bpg + bai] != r:
                            ready = False
                        if ready:
                            break
                    if n_ins + 2 > cap:
                        return STATUS_OVERFLOW, n_ins, stall
                    if pre_needed:
                        if refresh == 1:
                            for k in range(n_banks):
                                if open_row[k] >= 0:
                                    reopen[k] = open_row[k]
                                    open_row[k] = -1
                                    n_reopen += 1
                        else:
                            reopen[rr] = open_row[rr]
                            open_row[rr] = -1
                            n_reopen += 1
                        _apply(nc, nbg, nba, tr, nx, n_bg, bpg, addr_all, upd_ptr, upd_to, upd_lat,
                               all_ptr, all_to, all_lat, win_from, win_size, ring, wcount, whead, has_win_from)
                        _record(n_ins, i, nc, nbg, nba, -1, tr, ins_pos, ins_cmd, ins_bg, ins_ba,
                                ins_row, ins_cycle, counts)
                        n_ins += 1
                        prev = tr
                        nc = REFAB if refresh == 1 else REFPB
                        tr = _earliest(nc, nbg, nba, prev, nx, n_bg, bpg, addr_all, win_to, win_lat,
                                       win_size, has_win_to, ring, wcount, whead)
                        if tr < due:
                            tr = due
                    _apply(nc, nbg, nba, tr, nx, n_bg, bpg, addr_all, upd_ptr, upd_to, upd_lat,
                           all_ptr, all_to, all_lat, win_from, win_size, ring, wcount, whead, has_win_from)
                    _record(n_ins, i, nc, nbg, nba, -1, tr, ins_pos, ins_cmd, ins_bg, ins_ba,
                            ins_row, ins_cycle, counts)
                    n_ins += 1
                    prev = tr
                    if refresh == 2:
                        rr = (rr + 1) % n_banks
                    due += interval
                    continue
                if is_column[c] and n_reopen > 0:
                    # re-open rows that an inserted refresh closed
                    ac = -1
                    abg = -1
                    aba = -1
                    arow = -1
                    if addr_all[c]:
                        same = supported[ACT16] != 0
                        r0 = reopen[0]
                        for k in range(n_banks):
                            if open_row[k] >= 0 or reopen[k] != r0:
                                same = False
                        if same and r0 >= 0:
                            ac = ACT16
                            arow = r0
                        else:
                            for k in range(n_banks):
                                if open_row[k] < 0 and reopen[k] >= 0:
                                    ac = ACT
                                    abg = k // bpg
                                    aba = k % bpg
                                    arow = reopen[k]
                                    break
                    else:
                        k = bgi * bpg + bai
                        if open_row[k] < 0 and reopen[k] >= 0:
                            ac = ACT
                            abg = bgi
                            aba = bai
                            arow = reopen[k]
                    if ac >= 0:
                        if n_ins + 1 > cap:
                            return STATUS_OVERFLOW, n_ins, stall
                        ta = _earliest(ac, abg, aba, prev, nx, n_bg, bpg, addr_all, win_to, win_lat,
                                       win_size, has_win_to, ring, wcount, whead)
                        _apply(ac, abg, aba, ta, nx, n_bg, bpg, addr_all, upd_ptr, upd_to, upd_lat,
                               all_ptr, all_to, all_lat, win_from, win_size, ring, wcount, whead, has_win_from)
                        if ac == ACT16:
                            for k in range(n_banks):
                                open_row[k] = arow
                                reopen[k] = -1
                            n_reopen = 0
                        else:
                            open_row[abg * bpg + aba] = arow
                            reopen[abg * bpg + aba] = -1
                            n_reopen -= 1
                        _record(n_ins, i, ac, abg, aba, arow, ta, ins_pos, ins_cmd, ins_bg, ins_ba,
                                ins_row, ins_cycle, counts)
                        n_ins += 1
                        prev = ta
                        continue
                break
            _apply(c, bgi, bai, t, nx, n_bg, bpg, addr_all, upd_ptr, upd_to, upd_lat, all_ptr,
                   all_to, all_lat, win_from, win_size, ring, wcount, whead, has_win_from)
        if c == ACT or c == PRE or c == REFPB:
            k = bgi * bpg + bai
            open_row[k] = r if c == ACT else -1
            if reopen[k] >= 0:
                reopen[k] = -1
                n_reopen -= 1
        elif c == ACT16 or c == PREA or c == REFAB:
            v = r if c == ACT16 else -1
            for k in range(n_banks):
                open_row[k] = v
                reopen[k] = -1
            n_reopen = 0
        cycles_out[i] = t
        counts[c] += 1
        prev = t
        stall += t - t0
    sc[0] = prev
    sc[1] = due
    sc[2] = rr
    sc[3] = n_reopen
    return STATUS_OK, n_ins, stall


@njit(cache=True, parallel=True)
def run_channels(n_bg, bpg, n_banks, addr_all, is_column, supported, upd_ptr, upd_to, upd_lat,
                 all_ptr, all_to, all_lat, win_from, win_to, win_lat, win_size, has_win_to,
                 tmod_lookahead, cmd, bg, ba, row, starts, lengths, out_starts, refresh,
                 interval, first_due, cycles_out, ins_pos, ins_cmd, ins_bg, ins_ba, ins_row,
                 ins_cycle, counts, status, n_ins, stall):
    """Issue many channels' streams (channel ``k`` reads ``cmd[starts[k]:starts[k]+lengths[k]]``;
    lock-step channels share one stream). Channels are independent and run in parallel."""
    for k in prange(starts.shape[0]):
        s = starts[k]
        e = s + lengths[k]
        o = out_starts[k]
        nx, ring, wcount, whead, open_row, reopen, sc = new_state(n_bg, n_banks, win_size, first_due[k])
        release = np.zeros(e - s, dtype=np.int64)
        st, ni, sl = run_channel(
            n_bg, bpg, n_banks, addr_all, is_column, supported, upd_ptr, upd_to, upd_lat,
            all_ptr, all_to, all_lat, win_from, win_to, win_lat, win_size, has_win_to,
            tmod_lookahead, cmd[s:e], bg[s:e], ba[s:e], row[s:e], release, refresh, interval,
            nx, ring, wcount, whead, open_row, reopen, sc,
            cycles_out[o:o + lengths[k]], ins_pos[k], ins_cmd[k], ins_bg[k],
            ins_ba[k], ins_row[k], ins_cycle[k], counts[k])
        status[k] = st
        n_ins[k] = ni
        stall[k] = sl
