"""The compiled decode-step scheduler: the time-ordered event list of
:class:`pimsim.system.SystemSimulator`, its kernel issue, postponed refresh and store of
kernel runs, as one numba function over arrays.

It computes the schedule of ``SystemSimulator(scheduler="listed")`` exactly (tests require
identical step statistics, timelines and channel states): the same events in the same
order, the same grant rule (least operator index, ready time, program position at the
end of an instant) and the same channel kernel (:func:`pimsim.engine.kernel.run_channel`).
Only the bookkeeping differs: command streams live in one arena (``Arena``), cut into
pieces (and those into sub-pieces) when long, equal streams and pieces registered once;
runs of sub-pieces, pieces and whole streams are stored (``RunStore``) under the timing
entries they read, relative to their first possible cycle, and replayed only after a
value-by-value comparison of the key (:func:`_lookup`). The replay paths are compiled
without reference counting (``_nrt=False``): they create no arrays, and calls into them
cost no atomic reference-count updates of the arrays they are handed.
"""

from __future__ import annotations

import heapq

import numpy as np
from numba import njit

from pimsim.engine.compile import ACT, ACT16, PRE, PREA, REFAB, REFPB
from pimsim.engine.kernel import NC, postponed_refresh, run_channel
from pimsim.standard import N_COMMANDS

#: status codes of run_step
OK, ERR_CHANNEL, ERR_REFRESH = 0, 1, 2
#: misc outputs of run_step
M_STALL, M_NOW, M_HITS, M_STATUS, M_CHANNEL, M_ISSUED, M_ISSUED_CMDS = range(7)
#: a stored run, packed in the store's pool: these header words (cycles relative to its
#: base; read end -1: no read), then its command counts, channel cycles by class, rows
#: left open (-2: untouched), key, raised entries (index, value pairs), window events
_LAST, _FIRST, _READ_END, _KEY_LEN, _N_RAISE, _N_EV = range(6)
_HEAD = 6
#: pieces reading more timing entries than this are not keyed
KEY_MAX = 256
#: a piece's run is stored from its (STORE_FROM + 1)-th run on (most pieces that recur
#: do so step after step; a first run is often the only one)
STORE_FROM = 1
#: streams longer than this are issued, and their runs stored, in pieces of about CHUNK
#: commands (issuing a stream in pieces gives the cycles of issuing it at once, as long
#: as no piece ends with a TMOD), so the refresh-free pieces of a long kernel replay
CHUNK = 512
#: a piece longer than 2 x SUB is also cut into sub-pieces of about SUB commands (the same
#: rule); they are issued one by one when the piece's own run cannot replay (a refresh
#: falls due in it), so that only the sub-pieces around the refresh are issued
SUB = 64
_HASH_MUL = 1099511628211
#: the arena is also cleared when it holds this many command arrays (streams, and arrays
#: found equal to a registered stream)
KEEP_MAX = 1 << 18


@njit(cache=True)
def account_run(cycles, cmd, ins_cycle, ins_cmd, class_of, n_classes, cmd_acct):
    """Channel cycles by class (each gap between consecutive issued commands goes to the
    command before it, at most ``cmd_acct[1, k]`` cycles after an inserted command k when
    that is positive; the last command gets one cycle), the data tail after the last
    issue, and the cycle the last read's data is back (-1: no read); ``cmd_acct[0, k]`` is
    the cycles until a command k's data is back (-1: none). Input and inserted commands
    are both in increasing cycle order."""
    out = np.zeros(n_classes, dtype=np.int64)
    n = cycles.shape[0]
    m = ins_cycle.shape[0]
    i = 0
    j = 0
    have = False
    pc = 0
    pk = 0
    p_cap = 0
    last_read_end = -1
    while i < n or j < m:
        if j >= m or (i < n and cycles[i] < ins_cycle[j]):
            t = cycles[i]
            k = cmd[i]
            lat = cmd_acct[0, k]
            if lat >= 0 and t + lat > last_read_end:
                last_read_end = t + lat
            i += 1
            cap = 0
        else:
            t = ins_cycle[j]
            k = ins_cmd[j]
            j += 1
            cap = cmd_acct[1, k]
        if have:
            d = t - pc
            if p_cap > 0 and d > p_cap:
                d = p_cap
            out[class_of[pk]] += d
        have = True
        pc = t
        pk = k
        p_cap = cap
    if have:
        out[class_of[pk]] += 1
    tail = 1
    if last_read_end - pc > tail:
        tail = last_read_end - pc
    return out, tail, last_read_end


class _Vec:
    """A growable int64 array (amortised appends; ``view`` is the filled part)."""

    def __init__(self, cap: int = 1024):
        self.a = np.zeros(cap, dtype=np.int64)
        self.n = 0

    def _room(self, k: int) -> None:
        if self.n + k > self.a.shape[0]:
            a = np.zeros(max(2 * self.a.shape[0], self.n + k), dtype=np.int64)
            a[:self.n] = self.a[:self.n]
            self.a = a

    def extend(self, values) -> None:
        values = np.asarray(values, dtype=np.int64)
        k = values.shape[0]
        self._room(k)
        self.a[self.n:self.n + k] = values
        self.n += k

    def append(self, value: int) -> None:
        self._room(1)
        self.a[self.n] = value
        self.n += 1

    @property
    def view(self) -> np.ndarray:
        return self.a[:self.n]


class Arena:
    """Command streams registered once, by identity of their ``cmd`` array, in growing
    int64 arrays; ``sid`` numbers them. A stream equal to one registered before (command
    by command) gets that stream's number. Each stream is cut into pieces (one piece
    unless longer than 2 x ``chunk``), at commands that depend only on the commands before
    them;
    a piece equal to a piece of an earlier stream is that piece, so a stream that differs
    from an earlier one only in its last part shares the pieces before it, and their
    stored runs. Stored runs are kept per piece. Cleared (with the stored runs keyed by it)
    when it would pass ``limit`` commands or hold KEEP_MAX command arrays."""

    def __init__(self, win_to: np.ndarray, win_from: np.ndarray, tmod: int,
                 addr_all: np.ndarray, n_bg: int, bpg: int, limit: int = 1 << 25,
                 chunk: int = CHUNK, sub: int = SUB):
        self.w_to = win_to.astype(np.uint8)
        self.chunk = chunk          # piece and sub-piece sizes (speed only)
        self.sub = sub
        self.w_from = win_from.astype(np.uint8)
        self.tmod = tmod
        self.addr_all = addr_all.astype(np.uint8)
        self.n_bg = n_bg
        self.bpg = bpg
        self.limit = limit
        self.generation = -1
        self._clear()

    def _clear(self) -> None:
        self.cmd, self.bg, self.ba, self.row = _Vec(1 << 16), _Vec(1 << 16), _Vec(1 << 16), _Vec(1 << 16)
        # per stream: where its data starts, its entries in plist/ppos (its pieces and
        # their positions in the stream), whether its first piece is the whole stream
        self.s_off = _Vec()
        self.plist_ptr = _Vec()
        self.plist_ptr.append(0)
        self.plist = _Vec()
        self.ppos = _Vec()
        self.whole = _Vec()
        self.piece_off = _Vec()     # per piece: arena offset, length, replayable
        self.piece_len = _Vec()
        self.piece_memo = _Vec()
        self.read_ptr = _Vec()      # per piece: the timing entries its commands read
        self.read_ptr.append(0)
        self.read_idx = _Vec()
        self.read_first = _Vec()    # ... and the first command (index in the piece) reading each
        self.win_to = _Vec()        # per piece and window: does a command wait on it
        self.win_from = _Vec()      # per piece and window: commands entering it
        self.sub_lo = _Vec()        # per piece: its first sub-piece, and how many
        self.sub_n = _Vec()
        self.keep: list = []        # the cmd arrays, kept alive while their sid stands
        self.sid: dict[int, int] = {}
        self.streams: dict = {}     # (content hash, length) -> stream numbers
        self.pieces: dict = {}      # (content hash, length) -> piece numbers
        self.n_streams = 0
        self.max_len = 1
        self.generation += 1

    def sid_of(self, stream) -> int:
        """The stream's number, registering it first if new (-1: empty stream)."""
        s = self.sid.get(id(stream.cmd))
        if s is not None:   # keep holds cmd, so its id is still its own
            return s
        n = len(stream.cmd)
        if n == 0:
            return -1
        cmd, bg, ba, row = (np.ascontiguousarray(x, dtype=np.int64)
                            for x in (stream.cmd, stream.bg, stream.ba, stream.row))
        if (self.cmd.n + n > self.limit and self.cmd.n) or len(self.keep) >= KEEP_MAX:
            self._clear()
        key = (_hash_span(cmd, bg, ba, row, 0, n), n)
        for s in self.streams.get(key, ()):
            if _same(self.cmd.a, self.bg.a, self.ba.a, self.row.a, self.s_off.a[s], cmd, bg,
                     ba, row, 0, n):
                self.keep.append(stream.cmd)
                self.sid[id(stream.cmd)] = s
                return s
        u = self.cmd.n
        self.cmd.extend(cmd)
        self.bg.extend(bg)
        self.ba.extend(ba)
        self.row.extend(row)
        cuts = _cut_points(cmd, 0, n, self.chunk, self.tmod)
        # a stream in several pieces has a whole-stream piece first (its runs are stored
        # too, so a kernel that replays whole is one replay, not one per piece), and its
        # pieces have sub-pieces
        multi = len(cuts) > 2
        spans: list = []            # new pieces: (start, end, first sub-piece, sub-pieces)
        entries: list = []          # the stream's pieces
        pos: list = []
        first = nxt = self.piece_off.n
        if multi:
            spans.append((0, n, 0, 0))
            entries.append(nxt)
            pos.append(0)
            nxt += 1
        for lo, hi in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
            pos.append(lo)
            pkey = (_hash_span(cmd, bg, ba, row, lo, hi), hi - lo) if multi else None
            found = -1
            for p in self.pieces.get(pkey, ()):
                # (a piece of this stream itself is not in the tables yet)
                off = self.piece_off.a[p] if p < first else u + spans[p - first][0]
                if _same(self.cmd.a, self.bg.a, self.ba.a, self.row.a, off, cmd, bg, ba, row,
                         lo, hi):
                    found = p
                    break
            if found >= 0:
                entries.append(found)
                continue
            entries.append(nxt)
            if multi:
                self.pieces.setdefault(pkey, []).append(nxt)
                sc = _cut_points(cmd, lo, hi, self.sub, self.tmod).tolist()
            else:
                sc = [lo, hi]
            k = len(sc) - 1 if len(sc) > 2 else 0
            spans.append((lo, hi, nxt + 1 if k else 0, k))
            spans += [(a, b, 0, 0) for a, b in zip(sc[:-1], sc[1:])] if k else []
            nxt += 1 + k
        sp = np.array(spans, dtype=np.int64).reshape(-1, 4)
        ptr, read, first_read, memo, wto, wfrom = _piece_reads(
            cmd, bg, ba, sp[:, 0], sp[:, 1], self.addr_all, self.n_bg, self.bpg, self.w_to,
            self.w_from, KEY_MAX, self.tmod)
        self.read_ptr.extend(self.read_idx.n + ptr[1:])
        self.read_idx.extend(read)
        self.read_first.extend(first_read)
        self.win_to.extend(wto.ravel())
        self.win_from.extend(wfrom.ravel())
        self.piece_off.extend(u + sp[:, 0])
        self.piece_len.extend(sp[:, 1] - sp[:, 0])
        self.piece_memo.extend(memo)
        self.sub_lo.extend(sp[:, 2])
        self.sub_n.extend(sp[:, 3])
        s = self.n_streams
        self.n_streams += 1
        self.s_off.append(u)
        self.whole.append(multi)
        self.plist.extend(entries)
        self.ppos.extend(pos)
        self.plist_ptr.append(self.plist.n)
        self.max_len = max(self.max_len, n)
        self.keep.append(stream.cmd)
        self.sid[id(stream.cmd)] = s
        self.streams.setdefault(key, []).append(s)
        return s

    @property
    def n_pieces(self) -> int:
        return self.piece_off.n

    def tables(self):
        return (self.cmd.a, self.bg.a, self.ba.a, self.row.a, self.plist_ptr.view,
                self.piece_off.view, self.piece_len.view, self.piece_memo.view,
                self.read_ptr.view, self.read_idx.view, self.win_to.view, self.win_from.view,
                self.whole.view, self.plist.view, self.sub_lo.view, self.sub_n.view,
                self.ppos.view, self.read_first.view)


@njit(cache=True)
def _cut_points(cmd, lo, hi, size, tmod):
    """Cut points of cmd[lo:hi] (lo first, hi last) into parts of at least ``size``
    commands, one part unless longer than 2 x size; no part but the last ends with a TMOD.
    Each cut depends only on the commands before it (and on hi only through where the
    cutting stops)."""
    out = np.empty(2 + (hi - lo) // size, dtype=np.int64)
    m = 0
    out[m] = lo
    m += 1
    if hi - lo > 2 * size:
        k = lo + size
        while hi - k > size:
            while k < hi and cmd[k - 1] == tmod:
                k += 1
            if k >= hi:
                break
            out[m] = k
            m += 1
            k += size
    out[m] = hi
    return out[:m + 1]


@njit(cache=True)
def _hash_span(cmd, bg, ba, row, lo, hi):
    h = np.int64(-3750763034362895579)
    for i in range(lo, hi):
        h = (h ^ cmd[i]) * np.int64(_HASH_MUL)
        h = (h ^ bg[i]) * np.int64(_HASH_MUL)
        h = (h ^ ba[i]) * np.int64(_HASH_MUL)
        h = (h ^ row[i]) * np.int64(_HASH_MUL)
    return h


@njit(cache=True)
def _same(a_cmd, a_bg, a_ba, a_row, off, cmd, bg, ba, row, lo, hi):
    """Whether the arena holds cmd[lo:hi] (and its bg, ba, row) at ``off``."""
    for i in range(hi - lo):
        j = off + i
        if (a_cmd[j] != cmd[lo + i] or a_bg[j] != bg[lo + i] or a_ba[j] != ba[lo + i]
                or a_row[j] != row[lo + i]):
            return False
    return True


@njit(cache=True)
def _piece_reads(cmd, bg, ba, los, his, addr_all, n_bg, bpg, win_to, win_from, key_max, tmod):
    """Per span cmd[los[s]:his[s]]: the flat indices (row x NC + command) of the
    timing-table entries the engine reads to place its commands, increasing (rows 0 and 1
    for an all-bank command; row 0, its bank group's and its bank's row otherwise, see
    pimsim.engine.kernel._earliest), with the index in the span of the first command whose
    placement reads each (a command after a TMOD is also read when the TMOD looks ahead),
    kept only for spans reading at most ``key_max`` (``memo``); per window, whether a
    command waits on it and how many commands enter it. Returns (read pointers, reads,
    first readers, memo, waits, entries)."""
    n_rows = 2 + n_bg + n_bg * bpg
    n_sp = los.shape[0]
    n_win = win_to.shape[0]
    first = np.full(n_rows * NC, -1, dtype=np.int64)
    ptr = np.zeros(n_sp + 1, dtype=np.int64)
    memo = np.zeros(n_sp, dtype=np.int64)
    size = n_sp * min(key_max, n_rows * NC)
    out = np.empty(size, dtype=np.int64)
    out_first = np.empty(size, dtype=np.int64)
    wto = np.zeros((n_sp, n_win), dtype=np.int64)
    wfrom = np.zeros((n_sp, n_win), dtype=np.int64)
    for s in range(n_sp):
        first[:] = -1
        lo = los[s]
        for i in range(lo, his[s]):
            c = cmd[i]
            r = i - lo
            if r > 0 and cmd[i - 1] == tmod:
                r -= 1
            e0 = c
            if addr_all[c]:
                e1 = NC + c
                e2 = -1
            else:
                e1 = (2 + bg[i]) * NC + c
                e2 = (2 + n_bg + bg[i] * bpg + ba[i]) * NC + c
            if first[e0] < 0:
                first[e0] = r
            if first[e1] < 0:
                first[e1] = r
            if e2 >= 0 and first[e2] < 0:
                first[e2] = r
            for w in range(n_win):
                if win_to[w, c]:
                    wto[s, w] = 1
                if win_from[w, c]:
                    wfrom[s, w] += 1
        count = 0
        for q in range(first.shape[0]):
            if first[q] >= 0:
                count += 1
        m = ptr[s]
        if count <= key_max:
            memo[s] = 1
            for q in range(first.shape[0]):
                if first[q] >= 0:
                    out[m] = q
                    out_first[m] = first[q]
                    m += 1
        ptr[s + 1] = m
    return ptr, out[:ptr[n_sp]], out_first[:ptr[n_sp]], memo, wto, wfrom


class RunStore:
    """Stored runs of stream pieces: the key (piece; the timing entries the piece reads and
    the four-activate-style windows it waits on, relative to its first possible cycle and
    clipped at 0) -> what the run raised, the window events it added, the rows it left
    open, its counts and cycles, each run packed in one stretch of a pool (a replay reads
    it front to back). Everything is dropped when the pool or the index is full."""

    def __init__(self, banks: int, n_classes: int, capacity: int = 1 << 18,
                 pool: int = 1 << 25):
        self.pool = np.zeros(pool, dtype=np.int64)
        # open addressing: slot -> (key hash, offset of the run in the pool); offset -1:
        # empty; at most half full
        self.index = np.full((1 << (2 * capacity - 1).bit_length(), 2), -1, dtype=np.int64)
        #: runs stored, pool words in use
        self.used = np.zeros(2, dtype=np.int64)
        self.capacity = capacity
        self.runs = np.zeros(0, dtype=np.int64)     # per piece: runs so far
        self.scratch = np.full(64 * NC, -1, dtype=np.int64)

    def clear(self) -> None:
        self.index[:, 1] = -1
        self.used[:] = 0
        self.runs = np.zeros(0, dtype=np.int64)

    def tables(self, n_pieces: int, state_len: int):
        if self.runs.shape[0] < n_pieces:
            r = np.zeros(max(n_pieces, 2 * self.runs.shape[0]), dtype=np.int64)
            r[:self.runs.shape[0]] = self.runs
            self.runs = r
        if self.scratch.shape[0] < state_len:
            self.scratch = np.full(state_len, -1, dtype=np.int64)
        return (self.index, self.pool, self.used, self.capacity, self.runs, self.scratch)


@njit(cache=True, inline="always")
def _ceil_div(a, b):
    return -((-a) // b)


@njit(cache=True, inline="always")
def _base(nx, sc, not_before):
    """The first cycle any command could issue: no earlier than the release, the cycle
    after the last issue, and the limits in nx[0] (they bind every command)."""
    base = not_before
    if sc[0] + 1 > base:
        base = sc[0] + 1
    m0 = nx[0, 0]
    for k in range(1, NC):
        if nx[0, k] < m0:
            m0 = nx[0, k]
    if m0 > base:
        base = m0
    return base


@njit(cache=True, _nrt=False)
def _lookup(pc, base, lk, chl, refresh_on, key, n_classes, counts, classes, look=True):
    """Key piece ``pc`` at ``base`` into ``key`` and replay its stored run if there is one.
    Returns (replayed, key hash, key length, first issue cycle, last read's data end).

    A run depends on the channel only through the timing entries its commands read and
    the activate windows they wait on, relative to ``base``, and, through refresh, on whether a refresh falls due or a row waits to be
    re-opened. A run that met neither is stored with what it raised (the engine only ever
    raises limits, to issue cycle + latency), the window events it added and the rows it
    left open; it replays when the same piece finds the same relative entries and windows,
    nothing waiting to re-open (the caller checks), and the next refresh due after its
    last command. Command k of a run issues no earlier than ``base + k``, so an entry read
    first by command k (by k - 1 where a TMOD looks ahead at it) binds nothing at or before
    that cycle: the key holds each entry relative to it, clipped at 0.

    ``lk``: the arena's read sets and window flags, the window latencies and sizes, the
    store's index and pool, the read sets' first readers; ``chl``: the channel state (flat timing table, windows, open
    rows, scalars). Compiled without reference counting (it creates no arrays), so calling
    it costs no atomic reference-count updates of the arrays it is given."""
    r_ptr, r_idx, p_wto, p_wfrom, win_lat, win_size, index, pool, r_first = lk
    flat, ring, wcount, whead, open_row, sc = chl
    n_banks = open_row.shape[0]
    n_win = win_size.shape[0]
    key[0] = pc
    nk = 1
    r0 = r_ptr[pc]
    for q in range(r_ptr[pc + 1] - r0):
        v = flat[r_idx[r0 + q]] - base - r_first[r0 + q]
        key[nk] = v if v > 0 else 0
        nk += 1
    for w in range(n_win):
        if p_wto[pc * n_win + w] != 0:
            size = win_size[w]
            key[nk] = wcount[w] if wcount[w] < size else size
            nk += 1
            for j in range(size):
                v = ring[w, (whead[w] + j) % size] + win_lat[w] - base
                key[nk] = v if v > 0 else 0
                nk += 1
    h = np.int64(-3750763034362895579)
    for q in range(nk):
        h = (h ^ key[q]) * np.int64(_HASH_MUL)
    if not look:
        return False, h, nk, 0, -1
    e = _find(index, h)
    if e < 0 or pool[e + _KEY_LEN] != nk or (refresh_on != 0
                                             and sc[1] - base <= pool[e + _LAST]):
        return False, h, nk, 0, -1
    q0 = e + _HEAD + N_COMMANDS + n_classes + n_banks
    for q in range(nk):
        if pool[q0 + q] != key[q]:
            return False, h, nk, 0, -1
    p = q0 + nk
    for q in range(pool[e + _N_RAISE]):
        i = pool[p]
        v = pool[p + 1] + base
        if v > flat[i]:
            flat[i] = v
        p += 2
    for w in range(n_win):
        kw = p_wfrom[pc * n_win + w]
        if kw > 0:
            size = win_size[w]
            m = kw if kw < size else size
            head = (whead[w] + kw) % size
            for j in range(m):
                ring[w, (head - m + j) % size] = pool[p] + base
                p += 1
            whead[w] = head
            wcount[w] += kw
    p = e + _HEAD
    for k in range(N_COMMANDS):
        counts[k] += pool[p + k]
    p += N_COMMANDS
    for k in range(n_classes):
        classes[k] += pool[p + k]
    p += n_classes
    for b in range(n_banks):
        v = pool[p + b]
        if v != -2:
            open_row[b] = v
    sc[0] = base + pool[e + _LAST]
    read_end = pool[e + _READ_END]
    return True, h, nk, base + pool[e + _FIRST], (read_end + base if read_end >= 0 else -1)


@njit(cache=True)
def _store(pc, key, nk, h, base, cyc, read_end, run_counts, run_classes, eng, arena, ch,
           store, n_classes):
    """Store the run of piece ``pc`` (issued at ``cyc``, no command inserted, no refresh
    due) under its key."""
    (n_bg, bpg, n_banks, addr_all, is_column, supported, upd_ptr, upd_to, upd_lat, all_ptr,
     all_to, all_lat, win_from, win_to, win_lat, win_size, has_win_to, tmod_lookahead,
     refresh, interval) = eng
    a_cmd, a_bg, a_ba, p_off, p_len, p_wfrom = arena[0], arena[1], arena[2], arena[5], arena[6], arena[11]
    nx, flat, ring, wcount, whead, open_row, reopen, sc = ch
    index, pool, used, capacity, runs, scratch = store
    n_win = win_size.shape[0]
    o = p_off[pc]
    n = p_len[pc]
    n_raise = _raises(a_cmd[o:o + n], a_bg[o:o + n], a_ba[o:o + n], cyc, base, n_bg, bpg,
                      addr_all, upd_ptr, upd_to, upd_lat, all_ptr, all_to, all_lat, scratch)
    n_ev = 0
    for w in range(n_win):
        kw = p_wfrom[pc * n_win + w]
        n_ev += kw if kw < win_size[w] else win_size[w]
    size = _HEAD + N_COMMANDS + n_classes + n_banks + nk + 2 * n_raise + n_ev
    if used[0] >= capacity or used[1] + size > pool.shape[0]:
        index[:, 1] = -1
        used[:] = 0
    e = used[1]
    used[0] += 1
    used[1] += size
    pool[e + _LAST] = sc[0] - base
    pool[e + _FIRST] = cyc[0] - base
    pool[e + _READ_END] = read_end - base if read_end >= 0 else -1
    pool[e + _KEY_LEN] = nk
    pool[e + _N_RAISE] = n_raise
    pool[e + _N_EV] = n_ev
    p = e + _HEAD
    for k in range(N_COMMANDS):
        pool[p + k] = run_counts[k]
    p += N_COMMANDS
    for k in range(n_classes):
        pool[p + k] = run_classes[k]
    p += n_classes
    for b in range(n_banks):
        pool[p + b] = -2
    for q in range(o, o + n):
        k = a_cmd[q]
        if k == ACT or k == PRE or k == REFPB:
            b = a_bg[q] * bpg + a_ba[q]
            pool[p + b] = open_row[b]
        elif k == ACT16 or k == PREA or k == REFAB:
            for b in range(n_banks):
                pool[p + b] = open_row[b]
    p += n_banks
    for q in range(nk):
        pool[p + q] = key[q]
    p += nk
    for i in range(nx.size):
        if scratch[i] >= 0:
            pool[p] = i
            pool[p + 1] = scratch[i]
            p += 2
            scratch[i] = -1
    for w in range(n_win):
        kw = p_wfrom[pc * n_win + w]
        if kw > 0:
            skip = kw - win_size[w] if kw > win_size[w] else 0
            seen = 0
            for q in range(o, o + n):
                if win_from[w, a_cmd[q]]:
                    if seen >= skip:
                        pool[p] = cyc[q - o] - base
                        p += 1
                    seen += 1
    _put(index, h, e)


@njit(cache=True, _nrt=False)
def _try_piece(pc, not_before, memo_on, refresh_on, p_memo, lk, nx, chl, key, n_classes,
               counts, classes, look=True):
    """Replay piece ``pc``'s stored run if one applies (:func:`_lookup`; only its key when
    not ``look``). Returns (replayed, keyed, base, key hash, key length, first issue cycle,
    last read's data end)."""
    sc = chl[5]
    base = _base(nx, sc, not_before)
    keyed = memo_on and p_memo[pc] != 0 and sc[3] == 0
    if not keyed:
        return False, False, base, 0, 0, 0, -1
    hit, h, nk, f, re = _lookup(pc, base, lk, chl, refresh_on, key, n_classes, counts,
                                classes, look)
    return hit, True, base, h, nk, f, re


@njit(cache=True)
def _run_piece(pc, not_before, cyc_off, keyed, base, h, nk, eng, arena, ch, refresh_on, store,
               bufs, class_of, n_classes, cmd_acct, counts, classes):
    """Issue piece ``pc`` on a channel (state ``ch``), its first command no earlier than
    ``not_before``, its cycles written at ``cyc_off`` of the cycle buffer; store the run
    under its key (from :func:`_try_piece`) when it qualifies. Adds its command counts and
    channel cycles; returns (status, refresh stall, first issue cycle, last read's data end
    or -1, commands inserted)."""
    (n_bg, bpg, n_banks, addr_all, is_column, supported, upd_ptr, upd_to, upd_lat, all_ptr,
     all_to, all_lat, win_from, win_to, win_lat, win_size, has_win_to, tmod_lookahead,
     refresh, interval) = eng
    a_cmd, a_bg, a_ba, a_row, p_off, p_len = (arena[0], arena[1], arena[2], arena[3],
                                              arena[5], arena[6])
    nx, flat, ring, wcount, whead, open_row, reopen, sc = ch
    runs = store[4]
    release, cycbuf, key = bufs[0], bufs[1], bufs[2]
    n = p_len[pc]
    o = p_off[pc]
    cyc = cycbuf[cyc_off:cyc_off + n]
    cap = 64 + n // 8
    snap = (nx.copy(), ring.copy(), wcount.copy(), whead.copy(), open_row.copy(),
            reopen.copy(), sc.copy())
    release[0] = not_before
    while True:
        run_counts = np.zeros(N_COMMANDS, dtype=np.int64)
        ins_pos = np.zeros(cap, dtype=np.int64)
        ins_cmd = np.zeros(cap, dtype=np.int64)
        ins_bg = np.zeros(cap, dtype=np.int64)
        ins_ba = np.zeros(cap, dtype=np.int64)
        ins_row = np.zeros(cap, dtype=np.int64)
        ins_cycle = np.zeros(cap, dtype=np.int64)
        status, n_ins, stall = run_channel(
            n_bg, bpg, n_banks, addr_all, is_column, supported, upd_ptr, upd_to, upd_lat,
            all_ptr, all_to, all_lat, win_from, win_to, win_lat, win_size, has_win_to,
            tmod_lookahead, a_cmd[o:o + n], a_bg[o:o + n], a_ba[o:o + n], a_row[o:o + n],
            release[:n], refresh, interval, nx, ring, wcount, whead, open_row, reopen, sc,
            cyc, ins_pos, ins_cmd, ins_bg, ins_ba, ins_row, ins_cycle, run_counts)
        if status == -1:
            nx[:] = snap[0]
            ring[:] = snap[1]
            wcount[:] = snap[2]
            whead[:] = snap[3]
            open_row[:] = snap[4]
            reopen[:] = snap[5]
            sc[:] = snap[6]
            cap *= 4
            continue
        break
    release[0] = 0
    if status != 0:
        return ERR_CHANNEL, 0, 0, -1, 0
    run_classes, _, read_end = account_run(cyc, a_cmd[o:o + n], ins_cycle[:n_ins],
                                           ins_cmd[:n_ins], class_of, n_classes, cmd_acct)
    for k in range(counts.shape[0]):
        counts[k] += run_counts[k]
    for k in range(n_classes):
        classes[k] += run_classes[k]
    first = cyc[0]
    if n_ins > 0 and ins_cycle[0] < first:
        first = ins_cycle[0]
    runs[pc] += 1
    if keyed and runs[pc] > STORE_FROM and n_ins == 0 and (refresh_on == 0 or sc[1] > sc[0]):
        _store(pc, key, nk, h, base, cyc, read_end, run_counts, run_classes, eng, arena, ch,
               store, n_classes)
    return OK, stall, first, read_end, n_ins


@njit(cache=True, inline="always")
def _find(index, h):
    """The entry stored under key hash h, or -1."""
    mask = index.shape[0] - 1
    i = h & mask
    while index[i, 1] >= 0:
        if index[i, 0] == h:
            return index[i, 1]
        i = (i + 1) & mask
    return -1


@njit(cache=True, inline="always")
def _put(index, h, e):
    mask = index.shape[0] - 1
    i = h & mask
    while index[i, 1] >= 0 and index[i, 0] != h:
        i = (i + 1) & mask
    index[i, 0] = h
    index[i, 1] = e


@njit(cache=True)
def _raises(cmd, bg, ba, cyc, base, n_bg, bpg, addr_all, upd_ptr, upd_to, upd_lat, all_ptr,
            all_to, all_lat, out):
    """What commands issued at ``cyc`` raise the timing entries to, relative to ``base``
    (flat row x NC index; -1 where not raised; as pimsim.engine.kernel._apply_all and
    _apply_bank update them); returns how many entries."""
    m = 0
    for i in range(cmd.shape[0]):
        c = cmd[i]
        t = cyc[i] - base
        if addr_all[c]:
            for k in range(all_ptr[c], all_ptr[c + 1]):
                m += _raise(out, all_to[k], t + all_lat[k])
        else:
            for k in range(upd_ptr[0, c], upd_ptr[0, c + 1]):
                m += _raise(out, upd_to[0, k], t + upd_lat[0, k])
            rg = (2 + bg[i]) * NC
            for k in range(upd_ptr[1, c], upd_ptr[1, c + 1]):
                v = t + upd_lat[1, k]
                m += _raise(out, rg + upd_to[1, k], v)
                m += _raise(out, NC + upd_to[1, k], v)
            rb = (2 + n_bg + bg[i] * bpg + ba[i]) * NC
            for k in range(upd_ptr[2, c], upd_ptr[2, c + 1]):
                v = t + upd_lat[2, k]
                m += _raise(out, rb + upd_to[2, k], v)
                m += _raise(out, NC + upd_to[2, k], v)
    return m


@njit(cache=True, inline="always")
def _raise(out, i, v):
    """Raise entry i to v; 1 if it was not raised before."""
    new = 1 if out[i] < 0 else 0
    if v > out[i]:
        out[i] = v
    return new


@njit(cache=True, inline="always")
def _lookup_tables(eng, arena, store):
    """The tables :func:`_lookup` reads."""
    return (arena[8], arena[9], arena[10], arena[11], eng[14], eng[15], store[0], store[1],
            arena[17])


@njit(cache=True)
def _issue_split(pc, not_before, pos, keyed, base, h, nk, eng, arena, ch, memo_on, refresh_on,
                 store, bufs, class_of, n_classes, cmd_acct, counts, classes, misc, look):
    """Piece ``pc``, at ``pos`` in its stream, whose own stored run did not apply (its key
    from :func:`_try_piece` in ``bufs[4]``): its sub-pieces one by one (each replayed or
    issued); its own run is then stored when every sub-piece was issued and nothing
    inserted. Returns (status, refresh stall, first issue cycle, last read's data end or
    -1, every command issued here with nothing inserted, commands inserted)."""
    a_cmd, p_off, p_len, p_memo = arena[0], arena[5], arena[6], arena[7]
    sub_lo, sub_n = arena[14], arena[15]
    nx, sc = ch[0], ch[7]
    chl = (ch[1], ch[2], ch[3], ch[4], ch[5], sc)
    lk = _lookup_tables(eng, arena, store)
    runs = store[4]
    key = bufs[4]
    n_c = counts.shape[0]
    before = bufs[5]                    # counts and classes before, to store the run's own
    if keyed:
        before[:n_c] = counts
        before[n_c:n_c + n_classes] = classes
    stall = 0
    first = -1
    read_end = -1
    issued = True
    inserted = 0
    for q in range(sub_lo[pc], sub_lo[pc] + sub_n[pc]):
        last_before = sc[0]
        nb = not_before if first < 0 else 0
        hit, qkeyed, qbase, qh, qnk, f, re = _try_piece(q, nb, memo_on, refresh_on, p_memo, lk,
                                                        nx, chl, bufs[2], n_classes, counts,
                                                        classes, look)
        if hit:
            misc[M_HITS] += 1
            issued = False
            st = 0
        else:
            status, st, f, re, n_ins = _run_piece(q, nb, pos + p_off[q] - p_off[pc], qkeyed,
                                                  qbase, qh, qnk, eng, arena, ch, refresh_on,
                                                  store, bufs, class_of, n_classes, cmd_acct,
                                                  counts, classes)
            if status != OK:
                return status, 0, 0, -1, False, 0
            misc[M_ISSUED] += 1
            misc[M_ISSUED_CMDS] += p_len[q]
            inserted += n_ins
        if first < 0:
            first = f
        else:
            classes[class_of[a_cmd[p_off[q] - 1]]] += f - last_before - 1
        stall += st
        if re > read_end:
            read_end = re
    runs[pc] += 1
    if inserted > 0:
        issued = False
    if keyed and runs[pc] > STORE_FROM and issued and (refresh_on == 0 or sc[1] > sc[0]):
        for k in range(n_c):
            before[k] = counts[k] - before[k]
        for k in range(n_classes):
            before[n_c + k] = classes[k] - before[n_c + k]
        _store(pc, key, nk, h, base, bufs[1][pos:pos + p_len[pc]], read_end, before[:n_c],
               before[n_c:n_c + n_classes], eng, arena, ch, store, n_classes)
    return OK, stall, first, read_end, issued, inserted


@njit(cache=True)
def _issue(c, sid, not_before, eng, arena, chans, memo_on, refresh_on, store, bufs,
           class_of, n_classes, cmd_acct, counts, classes, misc):
    """Issue stream ``sid`` on channel ``c``, its first command no earlier than
    ``not_before``: a stored run of the whole stream if it has several pieces and one
    applies, else piece by piece. Returns (status, refresh stall, tail: cycles from the
    last issue until the last read's data is back, at least 1; first issue cycle)."""
    a_cmd = arena[0]
    plist_ptr, p_off, p_len, p_memo, p_whole = arena[4], arena[5], arena[6], arena[7], arena[12]
    plist, sub_n, ppos = arena[13], arena[15], arena[16]
    runs = store[4]
    nx = chans[0][c]
    sc = chans[6][c]
    # the channel's state, viewed once per kernel
    ch = (nx, nx.reshape(-1), chans[1][c], chans[2][c], chans[3][c], chans[4][c], chans[5][c],
          sc)
    chl = (ch[1], ch[2], ch[3], ch[4], ch[5], sc)
    lk = _lookup_tables(eng, arena, store)
    j0 = plist_ptr[sid]
    j1 = plist_ptr[sid + 1]
    whole = p_whole[sid] != 0
    keyed = False
    hw = 0
    nkw = 0
    base = 0
    key2 = bufs[3]
    n_c = counts.shape[0]
    before = bufs[6]                    # counts and classes before, to store the whole run
    pw = plist[j0]
    if whole:
        j0 += 1
        hit, keyed, base, hw, nkw, f, re = _try_piece(pw, not_before, memo_on, refresh_on,
                                                      p_memo, lk, nx, chl, key2, n_classes,
                                                      counts, classes)
        if hit:
            misc[M_HITS] += 1
            tail = 1
            if re - sc[0] > tail:
                tail = re - sc[0]
            return OK, 0, tail, f
        if keyed:
            before[:n_c] = counts
            before[n_c:n_c + n_classes] = classes
    # a run that could store the whole stream issues every piece (a run with replayed
    # pieces is not stored whole): the first such run, and then the runs after 2, 4, 8 ...
    # misses, so that a stream met in several channel states (several channels, or a
    # state that recurs only after the pieces were stored) is stored whole for them too
    m = runs[pw]
    look = not (keyed and m >= STORE_FROM and (m & (m - 1)) == 0)
    stall = 0
    first = -1
    read_end = -1
    issued_all = True
    prev = -1
    for j in range(j0, j1):
        pc = plist[j]
        last_before = sc[0]
        nb = not_before if first < 0 else 0
        split = sub_n[pc] > 0       # issued in sub-pieces, its key kept in bufs[4]
        hit, pkeyed, pbase, ph, pnk, f, re = _try_piece(pc, nb, memo_on, refresh_on, p_memo,
                                                        lk, nx, chl, bufs[4] if split else
                                                        bufs[2], n_classes, counts, classes,
                                                        look)
        if hit:
            misc[M_HITS] += 1
            issued_all = False
            st = 0
        elif split:
            status, st, f, re, issued, n_ins = _issue_split(
                pc, nb, ppos[j], pkeyed, pbase, ph, pnk, eng, arena, ch, memo_on, refresh_on,
                store, bufs, class_of, n_classes, cmd_acct, counts, classes, misc, look)
            if status != OK:
                return status, 0, 0, 0
            if not issued:
                issued_all = False
        else:
            status, st, f, re, n_ins = _run_piece(pc, nb, ppos[j], pkeyed, pbase, ph, pnk, eng,
                                                  arena, ch, refresh_on, store, bufs, class_of,
                                                  n_classes, cmd_acct, counts, classes)
            if status != OK:
                return status, 0, 0, 0
            misc[M_ISSUED] += 1
            misc[M_ISSUED_CMDS] += p_len[pc]
            if n_ins > 0:
                issued_all = False
        if first < 0:
            first = f
        else:
            # the gap after the previous piece's last command goes to that command
            classes[class_of[a_cmd[p_off[prev] + p_len[prev] - 1]]] += f - last_before - 1
        prev = pc
        stall += st
        if re > read_end:
            read_end = re
    if keyed:
        runs[pw] += 1
        if runs[pw] > STORE_FROM and issued_all and (refresh_on == 0 or sc[1] > sc[0]):
            # every piece issued here, nothing inserted: the whole run is stored too
            for k in range(n_c):
                before[k] = counts[k] - before[k]
            for k in range(n_classes):
                before[n_c + k] = classes[k] - before[n_c + k]
            _store(pw, key2, nkw, hw, base, bufs[1][:p_len[pw]], read_end, before[:n_c],
                   before[n_c:n_c + n_classes], eng, arena, ch, store, n_classes)
    tail = 1
    if read_end - sc[0] > tail:
        tail = read_end - sc[0]
    return OK, stall, tail, first


@njit(cache=True, _nrt=False)
def _refresh_before(c, now, tck, postpone, pull_in, rfc, interval, all_ptr, all_to, all_lat,
                    chans, fl_cmd, fl_cyc):
    """The postponed refreshes issued before a kernel granted channel ``c`` at ``now``
    (ps). Returns (how many, or -1: a pulled-in refresh off its cycle, or -2: the
    refresh buffers must hold at least the second value first; the kernel's first cycle;
    the channel's last issue cycle before)."""
    sc = chans[6][c]
    not_before = _ceil_div(now, tck)
    prev0 = sc[0]
    if postpone <= 0:
        return 0, 0, not_before, prev0
    first_due = sc[1] - postpone * interval
    owed = (not_before - first_due) // interval + 1
    if owed < 0:
        owed = 0
    need = owed + 1 + max(pull_in, 0)
    if need > fl_cmd.shape[0]:
        return -2, need, not_before, prev0
    nf = postponed_refresh(chans[0][c], chans[4][c], chans[5][c], sc, all_ptr, all_to,
                           all_lat, not_before, postpone, pull_in, interval, rfc, fl_cmd,
                           fl_cyc)
    return nf, 0, not_before, prev0


@njit(cache=True, _nrt=False)
def _replay_kernel(c, sid, not_before, memo_on, refresh_on, arena, lk, chans, key, n_classes,
                   counts, classes, misc):
    """A kernel replayed in one: its stream's stored run (the whole stream's, or its only
    piece's) if one applies. Returns (replayed, tail, first issue cycle)."""
    plist_ptr, p_memo, p_whole, plist, sub_n = arena[4], arena[7], arena[12], arena[13], arena[15]
    j = plist_ptr[sid]
    pc = plist[j]
    if p_whole[sid] == 0 and (plist_ptr[sid + 1] - j != 1 or sub_n[pc] != 0):
        return False, 0, 0
    nx = chans[0][c]
    sc = chans[6][c]
    chl = (nx.reshape(-1), chans[1][c], chans[2][c], chans[3][c], chans[4][c], sc)
    hit, _, _, _, _, f, re = _try_piece(pc, not_before, memo_on, refresh_on, p_memo, lk, nx,
                                        chl, key, n_classes, counts, classes)
    if not hit:
        return False, 0, 0
    misc[M_HITS] += 1
    tail = 1
    if re - sc[0] > tail:
        tail = re - sc[0]
    return True, tail, f


@njit(cache=True, _nrt=False)
def _kernel_done(c, now, tck, nf, prev0, not_before, first, stall, tail, block_of, fl_cmd,
                 fl_cyc, chans, class_of, counts, classes, misc):
    """Account the refreshes issued before a kernel and its refresh stall. Returns (when the
    channel falls free, when its results are ready), in ps."""
    sc = chans[6][c]
    if nf > 0:
        for j in range(nf):
            k = fl_cmd[j]
            counts[k] += 1
            t2 = fl_cyc[j + 1] if j + 1 < nf else first
            d = t2 - fl_cyc[j]
            if block_of[k] < d:
                d = block_of[k]
            classes[class_of[k]] += d
        end = fl_cyc[nf - 1] + block_of[fl_cmd[nf - 1]]
        lo = not_before if not_before > prev0 + 1 else prev0 + 1
        if end - lo > 0:
            stall += end - lo
    misc[M_STALL] += stall
    last = sc[0]
    free = (last + 1) * tck
    if now > free:
        free = now
    done = (last + tail) * tck
    if free > done:
        done = free
    return free, done


@njit(cache=True, _nrt=False)
def _arrival(u, t0, start_delay, in_ptr, in_src, in_lat, nrank, end):
    """(input waited for: node, -1 for the step start, -2 none; its link delay; ready)."""
    via = -2
    delay = 0
    last = 0
    have = False
    if start_delay[u] != 0:
        via = -1
        last = t0
        have = True
    for q in range(in_ptr[u], in_ptr[u + 1]):
        p = in_src[q]
        arrive = end[p] + in_lat[q]
        if (not have or arrive > last
                or (arrive == last and (via < 0 or nrank[p] > nrank[via]))):
            last = arrive
            via = p
            delay = in_lat[q]
            have = True
    ready = t0 + start_delay[u]
    if have and last > ready:
        ready = last
    return via, delay, ready


@njit(cache=True)
def run_step(kind, res, prio, start_delay, in_ptr, in_src, in_lat, nrank, n_prod, user_ptr,
             user_idx, dur, ksid, kchan, t0, n_res, tck, eng, arena, chans, refr, memo_on,
             refresh_on, store, bufs, class_of, n_classes, cmd_acct,
             o_ready, o_start, o_end, o_via, o_delay, counts, classes, misc):
    """One step's schedule (see :meth:`pimsim.system.SystemSimulator._run_listed`): kind 0
    kernel (stream ``ksid`` on channel ``kchan``), 1 ASIC operator (``dur`` ps); resource
    ``res``; inputs CSR (producer, link latency); users CSR over distinct producers."""
    n = kind.shape[0]
    READY, RELEASE, FINISH = 0, 1, 2
    postpone, pull_in, rfc, block_of, fl_cmd, fl_cyc = refr
    all_ptr, all_to, all_lat, interval = eng[9], eng[10], eng[11], eng[19]
    lk = _lookup_tables(eng, arena, store)
    key2 = bufs[3]
    left = n_prod.copy()
    busy = np.zeros(n_res, dtype=np.uint8)
    heap = [(np.int64(0), np.int64(0), np.int64(0), np.int64(0))]
    heap.pop()
    waiting = []
    for r in range(n_res):
        w = [(np.int64(0), np.int64(0), np.int64(0))]
        w.pop()
        waiting.append(w)
    seq = 0
    for x in range(n):
        if n_prod[x] == 0:
            heap.append((t0 + start_delay[x], np.int64(seq), np.int64(READY), np.int64(x)))
            seq += 1
    heapq.heapify(heap)
    now = t0
    while len(heap) > 0:
        now = heap[0][0]
        while len(heap) > 0 and heap[0][0] == now:
            ev = heapq.heappop(heap)
            what = ev[2]
            x = ev[3]
            if what == READY:
                heapq.heappush(waiting[res[x]], (prio[x], now, x))
            elif what == RELEASE:
                busy[x] = 0
            else:
                o_end[x] = now
                for q in range(user_ptr[x], user_ptr[x + 1]):
                    u = user_idx[q]
                    left[u] -= 1
                    if left[u] == 0:
                        via, delay, r = _arrival(u, t0, start_delay, in_ptr, in_src, in_lat,
                                                 nrank, o_end)
                        heapq.heappush(heap, (max(r, now), np.int64(seq), np.int64(READY), u))
                        seq += 1
        for r in range(n_res):
            if busy[r] != 0 or len(waiting[r]) == 0:
                continue
            item = heapq.heappop(waiting[r])
            ready = item[1]
            x = item[2]
            busy[r] = 1
            via, delay, _ = _arrival(x, t0, start_delay, in_ptr, in_src, in_lat, nrank, o_end)
            if kind[x] == 0 and ksid[x] < 0:
                free = end = now
            elif kind[x] == 0:
                # a kernel granted its channel: postponed refreshes first, then its commands
                # (replayed in one where a stored run applies, else issued)
                c = kchan[x]
                nf, need, not_before, prev0 = _refresh_before(
                    c, now, tck, postpone, pull_in, rfc, interval, all_ptr, all_to, all_lat,
                    chans, fl_cmd, fl_cyc)
                if nf == -2:
                    fl_cmd = np.zeros(2 * need, dtype=np.int64)
                    fl_cyc = np.zeros(2 * need, dtype=np.int64)
                    nf, need, not_before, prev0 = _refresh_before(
                        c, now, tck, postpone, pull_in, rfc, interval, all_ptr, all_to,
                        all_lat, chans, fl_cmd, fl_cyc)
                if nf < 0:
                    misc[M_STATUS] = ERR_REFRESH
                    misc[M_CHANNEL] = c
                    return
                stall = 0
                hit = False
                if memo_on:
                    hit, tail, first = _replay_kernel(c, ksid[x], not_before, memo_on,
                                                      refresh_on, arena, lk, chans, key2,
                                                      n_classes, counts, classes, misc)
                if not hit:
                    status, stall, tail, first = _issue(c, ksid[x], not_before, eng, arena,
                                                        chans, memo_on, refresh_on, store,
                                                        bufs, class_of, n_classes, cmd_acct,
                                                        counts, classes, misc)
                    if status != OK:
                        misc[M_STATUS] = status
                        misc[M_CHANNEL] = c
                        return
                free, end = _kernel_done(c, now, tck, nf, prev0, not_before, first, stall,
                                         tail, block_of, fl_cmd, fl_cyc, chans, class_of,
                                         counts, classes, misc)
            else:
                free = now + dur[x]
                end = free
            o_ready[x] = ready
            o_start[x] = now
            o_via[x] = via
            o_delay[x] = delay
            heapq.heappush(heap, (free, np.int64(seq), np.int64(RELEASE), np.int64(r)))
            heapq.heappush(heap, (end, np.int64(seq + 1), np.int64(FINISH), x))
            seq += 2
    misc[M_NOW] = now


@njit(cache=True)
def _csr(n, key, val):
    """Rows ``key`` -> values ``val`` in input order (a stable bucket sort)."""
    ptr = np.zeros(n + 1, dtype=np.int64)
    for e in range(key.shape[0]):
        ptr[key[e] + 1] += 1
    for v in range(n):
        ptr[v + 1] += ptr[v]
    fill = ptr[:-1].copy()
    out = np.empty(key.shape[0], dtype=np.int64)
    for e in range(key.shape[0]):
        out[fill[key[e]]] = val[e]
        fill[key[e]] += 1
    return ptr, out


@njit(cache=True)
def prepare(is_transfer, src, dst, link):
    """A step's program graph (nodes in insertion order, edges in first-insertion order)
    as the schedulers see it: the non-transfer nodes in the topological order of
    ``networkx.topological_sort`` (Kahn's generations, successors in edge order), each
    with its inputs (producer position, link latency accumulated through transfers), the
    link latency of inputs from outside the step, its distinct producers and its users.

    Returns (order: node per position, inputs ptr, producer, latency, start delay,
    producers ptr, producers, users ptr, users); order is empty if the graph has a cycle."""
    n = is_transfer.shape[0]
    sptr, succ = _csr(n, src, dst)
    pptr, pred = _csr(n, dst, src)
    left = np.zeros(n, dtype=np.int64)
    for e in range(dst.shape[0]):
        left[dst[e]] += 1
    topo = np.empty(n, dtype=np.int64)
    k = 0
    for v in range(n):
        if left[v] == 0:
            topo[k] = v
            k += 1
    head = 0
    while head < k:
        gen_end = k
        while head < gen_end:
            v = topo[head]
            head += 1
            for q in range(sptr[v], sptr[v + 1]):
                w = succ[q]
                left[w] -= 1
                if left[w] == 0:
                    topo[k] = w
                    k += 1
    if k < n:
        z = np.empty(0, dtype=np.int64)
        return z, z, z, z, z, z, z, z, z
    pos = np.full(n, -1, dtype=np.int64)
    m = 0
    for i in range(n):
        v = topo[i]
        if not is_transfer[v]:
            pos[v] = m
            m += 1
    order = np.empty(m, dtype=np.int64)
    for v in range(n):
        if pos[v] >= 0:
            order[pos[v]] = v
    in_ptr = np.zeros(m + 1, dtype=np.int64)
    in_src = []
    in_lat = []
    start_delay = np.zeros(m, dtype=np.int64)
    pr_ptr = np.zeros(m + 1, dtype=np.int64)
    producers = []
    seen = np.full(m, -1, dtype=np.int64)
    stack_v = np.empty(16, dtype=np.int64)
    stack_l = np.empty(16, dtype=np.int64)
    for i in range(m):
        v = order[i]
        sp = 0
        for q in range(pptr[v + 1] - 1, pptr[v] - 1, -1):
            if sp == stack_v.shape[0]:
                stack_v = np.concatenate((stack_v, stack_v))
                stack_l = np.concatenate((stack_l, stack_l))
            stack_v[sp] = pred[q]
            stack_l[sp] = 0
            sp += 1
        while sp > 0:
            sp -= 1
            x = stack_v[sp]
            lat = stack_l[sp]
            if not is_transfer[x]:
                p = pos[x]
                in_src.append(p)
                in_lat.append(lat)
                if seen[p] != i:
                    seen[p] = i
                    producers.append(p)
            elif pptr[x + 1] == pptr[x]:
                if lat > start_delay[i]:
                    start_delay[i] = lat
            else:
                for q in range(pptr[x + 1] - 1, pptr[x] - 1, -1):
                    if sp == stack_v.shape[0]:
                        stack_v = np.concatenate((stack_v, stack_v))
                        stack_l = np.concatenate((stack_l, stack_l))
                    stack_v[sp] = pred[q]
                    stack_l[sp] = lat + link
                    sp += 1
        in_ptr[i + 1] = len(in_src)
        pr_ptr[i + 1] = len(producers)
    prod = np.array(producers, dtype=np.int64) if len(producers) else np.empty(0, dtype=np.int64)
    owner = np.empty(prod.shape[0], dtype=np.int64)
    for i in range(m):
        for q in range(pr_ptr[i], pr_ptr[i + 1]):
            owner[q] = i
    user_ptr, users = _csr(m, prod, owner)
    src_a = np.array(in_src, dtype=np.int64) if len(in_src) else np.empty(0, dtype=np.int64)
    lat_a = np.array(in_lat, dtype=np.int64) if len(in_lat) else np.empty(0, dtype=np.int64)
    return order, in_ptr, src_a, lat_a, start_delay, pr_ptr, prod, user_ptr, users


@njit(cache=True)
def critical_path(ready, start, end, via, delay, cat, op, node, t, start_ps, cat_sum, cat_seen,
                  op_sum, op_seen):
    """Walk a step's critical path back from ``node`` (ending the step at ``t``) through
    ``via`` (producer position, -1 the step start): per node its category (``cat``) and
    operator (``op``) get the part of its run before ``t`` (``cat_sum``/``op_sum``, visited
    codes marked in ``cat_seen``/``op_seen``). Returns (wait, link latency on the path, 1
    if a link latency was on it)."""
    wait = 0
    transfer = 0
    has_transfer = 0
    while node >= 0:
        r, s, e, d = ready[node], start[node], end[node], delay[node]
        run = min(e, t) - s
        cat_sum[cat[node]] += run
        cat_seen[cat[node]] = 1
        op_sum[op[node]] += run
        op_seen[op[node]] = 1
        wait += (s - r) + (t - min(e, t))
        if d:
            transfer += d
            has_transfer = 1
        t = r - d
        node = via[node]
    wait += t - start_ps
    return wait, transfer, has_transfer
