"""Pure-Python twin of :func:`pimsim.engine.kernel.run_channel`.

Same signature and same results, computed another way: straight from the constraint
records (``rec_*`` of the compiled timing). For every record it keeps the cycle of the
latest command of its ``from`` set in each scope instance (or the last W of them, for a
window), and a command's earliest cycle is the maximum over the records that name it in
``to`` of (that cycle + the record's cycles). Slow, obvious, and the reference the kernel
is tested against.
"""

from __future__ import annotations

from collections import deque

from pimsim.engine.compile import ACT, ACT16, PRE, PREA, REFAB, REFPB, TMOD, CompiledTiming
from pimsim.engine.kernel import STATUS_NO_PROGRESS, STATUS_OK, STATUS_OVERFLOW

CHANNEL, BANKGROUP, BANK = 0, 1, 2


class _Records:
    """Latest-A bookkeeping per constraint record (the definition of the table)."""

    def __init__(self, ct: CompiledTiming):
        self.ct = ct
        self.recs = []
        for i in range(ct.rec_scope.shape[0]):
            froms = {a for a in range(12) if ct.rec_from[i, a]}
            tos = {b for b in range(12) if ct.rec_to[i, b]}
            self.recs.append((froms, tos, int(ct.rec_scope[i]), int(ct.rec_cycles[i]),
                              int(ct.rec_window[i])))
        # per record: dict instance -> latest cycle; "*" for all-bank commands
        self.last: list[dict] = [dict() for _ in self.recs]
        self.hist: list[deque] = [deque(maxlen=max(w, 1)) for (_, _, _, _, w) in self.recs]

    def _instance(self, scope: int, bg: int, ba: int):
        if bg < 0:
            return "*"
        if scope == BANKGROUP:
            return bg
        return (bg, ba)

    def earliest(self, c: int, bg: int, ba: int, prev: int) -> int:
        t = prev + 1
        for r, (froms, tos, scope, cycles, window) in enumerate(self.recs):
            if c not in tos:
                continue
            if window:
                h = self.hist[r]
                if len(h) == window:
                    t = max(t, h[0] + cycles)
                continue
            last = self.last[r]
            if not last:
                continue
            if scope == CHANNEL:
                cands = last.values()
            elif bg < 0:
                cands = last.values()  # an all-bank command shares every instance
            else:
                inst = self._instance(scope, bg, ba)
                cands = [last[k] for k in (inst, "*") if k in last]
            for v in cands:
                t = max(t, v + cycles)
        return t

    def issue(self, c: int, bg: int, ba: int, t: int) -> None:
        for r, (froms, tos, scope, cycles, window) in enumerate(self.recs):
            if c not in froms:
                continue
            if window:
                self.hist[r].append(t)
            elif scope == CHANNEL:
                self.last[r]["ch"] = t
            else:
                self.last[r][self._instance(scope, bg, ba)] = t


def run_channel(n_bg, bpg, n_banks, addr_all, is_column, supported, upd_ptr, upd_to, upd_lat,
                all_ptr, all_to, all_lat, win_from, win_to, win_lat, win_size, has_win_to,
                tmod_lookahead, cmd, bg, ba, row, release, refresh, interval,
                nx, ring, wcount, whead, open_row, reopen, sc,
                cycles_out, ins_pos, ins_cmd, ins_bg, ins_ba, ins_row, ins_cycle, counts,
                *, history: "_Records"):
    """Twin of the kernel. ``history`` holds the record-form state (make one with
    :func:`new_history`; pass the same one to continue a channel). The kernel's update-form
    arguments and state arrays (nx, ring, wcount, whead) are accepted for signature parity
    and ignored; open_row, reopen and sc carry the same meaning as in the kernel."""
    recs = history
    n = len(cmd)
    cap = len(ins_pos)
    prev, due, rr = int(sc[0]), int(sc[1]), int(sc[2])
    n_ins = 0
    stall = 0

    def addr(k: int) -> tuple[int, int]:
        return k // bpg, k % bpg

    def record(i, c, cbg, cba, crow, t):
        nonlocal n_ins, prev
        recs.issue(c, cbg, cba, t)
        ins_pos[n_ins], ins_cmd[n_ins], ins_bg[n_ins] = i, c, cbg
        ins_ba[n_ins], ins_row[n_ins], ins_cycle[n_ins] = cba, crow, t
        n_ins += 1
        counts[c] += 1
        prev = t

    for i in range(n):
        c, cbg, cba, r = int(cmd[i]), int(bg[i]), int(ba[i]), int(row[i])
        t0 = None
        for _guard in range(4 * n_banks + 64):
            t = max(recs.earliest(c, cbg, cba, prev), int(release[i]))
            if c == TMOD and tmod_lookahead and i + 1 < n:
                t = max(t, recs.earliest(int(cmd[i + 1]), int(bg[i + 1]), int(ba[i + 1]), prev),
                        int(release[i + 1]))
            if t0 is None:
                t0 = t
            if refresh and t >= due:
                if refresh == 1:
                    open_banks = [k for k in range(n_banks) if open_row[k] >= 0]
                    steps = ([(PREA, -1, -1)] if open_banks else []) + [(REFAB, -1, -1)]
                else:
                    b_bg, b_ba = addr(rr)
                    open_banks = [rr] if open_row[rr] >= 0 else []
                    steps = ([(PRE, b_bg, b_ba)] if open_banks else []) + [(REFPB, b_bg, b_ba)]
                first = steps[0]
                tr = max(recs.earliest(first[0], first[1], first[2], prev), due)
                if is_column[c] and t < tr:
                    banks = range(n_banks) if addr_all[c] else [cbg * bpg + cba]
                    if all(open_row[k] == r for k in banks):
                        break
                if n_ins + len(steps) > cap:
                    return STATUS_OVERFLOW, n_ins, stall
                for k in open_banks:
                    reopen[k] = open_row[k]
                    open_row[k] = -1
                for s_cmd, sbg, sba in steps:
                    ts = max(recs.earliest(s_cmd, sbg, sba, prev), due)
                    record(i, s_cmd, sbg, sba, -1, ts)
                if refresh == 2:
                    rr = (rr + 1) % n_banks
                due += interval
                continue
            if is_column[c]:
                act = None
                if addr_all[c]:
                    rows = set(reopen.tolist())
                    if (supported[ACT16] and all(o < 0 for o in open_row) and len(rows) == 1
                            and reopen[0] >= 0):
                        act = (ACT16, -1, -1, int(reopen[0]))
                    else:
                        for k in range(n_banks):
                            if open_row[k] < 0 and reopen[k] >= 0:
                                act = (ACT, *addr(k), int(reopen[k]))
                                break
                else:
                    k = cbg * bpg + cba
                    if open_row[k] < 0 and reopen[k] >= 0:
                        act = (ACT, cbg, cba, int(reopen[k]))
                if act is not None:
                    if n_ins + 1 > cap:
                        return STATUS_OVERFLOW, n_ins, stall
                    ac, abg, aba, arow = act
                    ta = recs.earliest(ac, abg, aba, prev)
                    targets = range(n_banks) if ac == ACT16 else [abg * bpg + aba]
                    for k in targets:
                        open_row[k] = arow
                        reopen[k] = -1
                    record(i, ac, abg, aba, arow, ta)
                    continue
            break
        else:
            return STATUS_NO_PROGRESS, n_ins, stall
        recs.issue(c, cbg, cba, t)
        if c in (ACT, ACT16):
            targets = range(n_banks) if c == ACT16 else [cbg * bpg + cba]
            for k in targets:
                open_row[k] = r
                reopen[k] = -1
        elif c in (PRE, REFPB, PREA, REFAB):
            targets = range(n_banks) if c in (PREA, REFAB) else [cbg * bpg + cba]
            for k in targets:
                open_row[k] = -1
                reopen[k] = -1
        cycles_out[i] = t
        counts[c] += 1
        prev = t
        stall += t - t0
    sc[0], sc[1], sc[2] = prev, due, rr
    sc[3] = int((reopen >= 0).sum())
    return STATUS_OK, n_ins, stall


def new_history(records: CompiledTiming) -> _Records:
    """The record-form state of a fresh channel (nothing issued)."""
    return _Records(records)
