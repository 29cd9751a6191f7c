"""The program of one decode step: a networkx DAG of PIM kernels, ASIC ops and transfers.

Nodes carry one object in the ``item`` attribute: a :class:`MacKernel` or
:class:`AccessKernel` (a per-channel PIM kernel, expandable exactly into a
:class:`pimsim.engine.CommandStream` by ``.commands()``), an :class:`AsicOp` (with element
counts) or a :class:`Transfer` (bytes, direction, channel). Edges are data dependencies.

A MAC kernel is described compactly as *passes*: one global-buffer load (TMOD, WRGB per
used slot, TMOD) followed by rows, each ACT16, MAC16 per used column and PREA after the
row's last MAC16. Every segment accumulates into a result register of each bank's MAC unit
and is read out with RDMAC16 (32 B: that register of all 16 banks), between two TMODs.

With one result register (``Geometry.result_registers == 1``, the AiM-like case) each
segment is read out right after its last MAC16 (and the row's PREA): TMOD, RDMAC16, TMOD.
With ``R > 1`` registers, segment number ``i`` of the pending batch accumulates into
register ``i`` and read-outs are deferred: a batch of k results is read (TMOD, k RDMAC16,
TMOD; the j-th RDMAC16 of a run returns register j of all banks, as RDMAC16 carries no
column field) when all R registers hold a result, at the end of the kernel, and at every
global-buffer load, where it shares the load's pair of mode changes (TMOD, RDMAC16...,
WRGB..., TMOD; both are buffer-mode commands). With ``Geometry.gb_reuse`` a load
writes only the slots whose (input, input column) differ from what the buffer holds from
earlier loads of the same kernel repeat; a load with nothing to write is left out. GQA
kernels repeat their passes once per query head of a group (``repeats``); each repeat
starts with no pending result and an unknown buffer, so repeats tile the stream.

Activation ahead of buffer mode (``R > 1`` only): an ACT16 that directly follows a load or
a read-out batch (a stretch of adjacent TMOD ... TMOD blocks) is issued just before the
stretch's first TMOD, e.g. ACT16, TMOD, RDMAC16..., WRGB..., TMOD, MAC16... and PREA,
ACT16, TMOD, RDMAC16 x R, TMOD, MAC16..., so the row activation (nRCDRDMAC) runs while the
buffer is loaded or the registers are read; ACT16 still issues in bank mode. Only the order
changes, never the counts, and each repeat is reordered on its own (repeats still tile).
Assumed: the global buffer and result registers can be written/read (buffer mode) while a
row activated by ACT16 is open; the public AiM material does not forbid it. With one
register (AiM) the order is the AiM one: the ACT16 follows the load's closing TMOD.

Continued accumulation: with ``R > 1``, a repeat whose segments belong to at most R
distinct outputs (distinct (slot, sub) pairs; the segments of one output lie in the same
bank slot, one per input tile) gives each output its own register, the output's rank among
them in ascending (slot, sub) order. Every segment of an output then adds into the same
register across passes and loads, nothing is read out inside the repeat (loads are plain
TMOD, WRGB..., TMOD), and one batch at its end reads all of them (TMOD, RDMAC16 per
output, TMOD): one value per output and bank instead of one per segment, so the ASIC has
no partial sums to add. A repeat with more outputs than R keeps the batched read-out
above, and one register (AiM) never accumulates across segments.

Command counts and the row-hit rate are computed from this description without expanding
it; a test checks them against the expanded streams.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from mappings.access_order import lags, pipelined_order
from mappings.layout import SEG_FIELDS, ChannelPart, Region, Template
from pimsim.standard import CMD_ID

COLUMN_CMDS = ("MAC16", "RD", "WR")
ACT_CMDS = ("ACT16", "ACT")


@dataclass(frozen=True, eq=False)
class MacPass:
    """One global-buffer load and the rows that use it (rows relative to the region)."""

    gb_slot: np.ndarray   # global-buffer slots written
    gb_inp: np.ndarray    # input vector of each slot
    gb_kcol: np.ndarray   # input column of each slot
    rows: np.ndarray      # rows in issue order
    seg: dict             # segment arrays (SEG_FIELDS) of these rows, sorted by (row, c0)

    @property
    def n_segments(self) -> int:
        return int(self.seg["row"].size)


def _row_groups(t: Template):
    if t.n_segments == 0:
        return []
    b = np.flatnonzero(np.diff(t.row)) + 1
    return list(zip(np.r_[0, b].tolist(), np.r_[b, t.n_segments].tolist()))


def build_passes(t: Template, columns: int) -> tuple[MacPass, ...]:
    """Group the template's rows into global-buffer passes.

    Rows with the same slot -> (input, column) pattern share a load; a row whose pattern is
    compatible with an earlier load (no slot used differently) joins it."""
    key_rows: dict[bytes, list[int]] = {}
    key_first: dict[bytes, tuple[int, int]] = {}
    stacked = np.stack([t.c0, t.n, t.inp, t.k0], axis=1)
    for a, b in _row_groups(t):
        key = stacked[a:b].tobytes()
        if key not in key_rows:
            key_rows[key] = []
            key_first[key] = (a, b)
        key_rows[key].append(a)
    passes: list[tuple[np.ndarray, np.ndarray, list[int]]] = []  # (inp[col], kcol[col], starts)
    for key, starts in key_rows.items():
        a, b = key_first[key]
        inp = np.full(columns, -1, dtype=np.int64)
        kc = np.full(columns, -1, dtype=np.int64)
        for i in range(a, b):
            c0, n = int(t.c0[i]), int(t.n[i])
            inp[c0:c0 + n] = t.inp[i]
            kc[c0:c0 + n] = t.k0[i] + np.arange(n)
        for p_inp, p_kc, p_starts in passes:
            used = (inp >= 0) & (p_inp >= 0)
            if (p_inp[used] == inp[used]).all() and (p_kc[used] == kc[used]).all():
                fill = (inp >= 0) & (p_inp < 0)
                p_inp[fill], p_kc[fill] = inp[fill], kc[fill]
                p_starts += starts
                break
        else:
            passes.append((inp, kc, list(starts)))
    seg_row_start = {a: (a, b) for a, b in _row_groups(t)}
    out = []
    for p_inp, p_kc, starts in passes:
        starts = sorted(starts, key=lambda a: int(t.row[a]))
        idx = np.concatenate([np.arange(*seg_row_start[a]) for a in starts])
        slots = np.flatnonzero(p_inp >= 0)
        out.append(MacPass(slots, p_inp[slots], p_kc[slots], t.row[np.array(starts)],
                           {f: getattr(t, f)[idx] for f in SEG_FIELDS}))
    return tuple(out)


@functools.lru_cache(maxsize=8192)
def _passes_cached(t: Template, columns: int) -> tuple[MacPass, ...]:
    return build_passes(t, columns)


#: (what, template, live part, columns) -> passes of the live part of a K or V template.
#: The live part changes only when a K slot receives its first position or a V token
#: column its first value, so consecutive steps share their passes (and with them their
#: command arrays and stored kernel runs); layers share templates and slot assignments.
_ACTIVE: dict = {}


def _active_passes(what: str, t: Template, slot_out: np.ndarray, n_valid: int, columns: int,
                   values: int) -> tuple[MacPass, ...]:
    if what == "score":
        live = kcache_live(slot_out, n_valid)
        key = (what, id(t), live.tobytes(), columns)
    else:
        key = (what, id(t), -(-n_valid // values), columns)
    hit = _ACTIVE.get(key)
    if hit is not None and hit[0] is t:
        return hit[1]
    live_t = t.select(live[t.slot]) if what == "score" else active_vcache(t, n_valid, values)
    passes = build_passes(live_t, columns) if live_t.n_segments else ()
    if len(_ACTIVE) > 4096:
        _ACTIVE.clear()
    _ACTIVE[key] = (t, passes)
    return passes


@functools.lru_cache(maxsize=8192)
def _outputs(passes: tuple[MacPass, ...]) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    """The distinct outputs of one repeat, (slot, sub) in ascending order, and per pass each
    segment's output rank."""
    slot = [p.seg["slot"] for p in passes]
    sub = [p.seg["sub"] for p in passes]
    if not passes or sum(a.size for a in slot) == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z, tuple(z for _ in passes)
    s, b = np.concatenate(slot), np.concatenate(sub)
    span = int(b.max()) + 1
    keys, inv = np.unique(s * span + b, return_inverse=True)
    bounds = np.cumsum([0] + [a.size for a in slot])
    ranks = tuple(inv[bounds[i]:bounds[i + 1]].astype(np.int64) for i in range(len(passes)))
    return keys // span, keys % span, ranks


def accumulates(passes: tuple[MacPass, ...], registers: int) -> bool:
    """True where a repeat accumulates every output in a register of its own across loads
    (``registers > 1`` and at most ``registers`` distinct outputs; module docstring)."""
    return registers > 1 and _outputs(passes)[0].size <= registers


@functools.lru_cache(maxsize=65536)
def _stats(passes: tuple, slot_out_bytes: bytes, banks: int, out_limit,
           registers: int = 1) -> tuple[int, int]:
    """(values read out holding a real output, useful bank-column products) per repeat."""
    so = np.frombuffer(slot_out_bytes, dtype=np.int64).reshape(banks, -1)
    ok = so >= 0 if out_limit is None else (so >= 0) & (so < out_limit)
    valid = ok.sum(axis=0)
    if accumulates(passes, registers):
        partial = int(valid[_outputs(passes)[0]].sum())
    else:
        partial = sum(int(valid[p.seg["slot"]].sum()) for p in passes)
    useful = sum(int((valid[p.seg["slot"]] * p.seg["n"]).sum()) for p in passes)
    return partial, useful


@dataclass(frozen=True, eq=False)
class PassPlan:
    """How one pass runs in a kernel repeat (see the module docstring)."""

    load: bool            # a global-buffer load (TMOD ... TMOD) precedes the pass's rows
    wrgb: np.ndarray      # indices into the pass's gb_slot written by the load, in order
    drain: int            # pending results read out inside the load (registers 0..drain-1)
    pending: int          # results pending when the pass's first segment starts


@dataclass(frozen=True, eq=False)
class KernelPlan:
    """Load and read-out schedule of one repeat of a MAC kernel."""

    passes: tuple[PassPlan, ...]
    registers: int
    final: int            # results read out after the last pass (0: none pending)
    #: per pass, each segment's register when outputs accumulate across loads, else None
    ranks: tuple[np.ndarray, ...] | None = None

    @property
    def accumulate(self) -> bool:
        """Every output accumulates in a register of its own; one read-out at the end."""
        return self.ranks is not None

    def batches(self, p: MacPass, i: int) -> np.ndarray:
        """Per segment of pass ``i``: 1 where a full batch is read out after it."""
        j = np.arange(p.n_segments, dtype=np.int64)
        if self.accumulate:
            return 0 * j
        return ((self.passes[i].pending + j + 1) % self.registers == 0).astype(np.int64)

    def registers_of(self, p: MacPass, i: int) -> np.ndarray:
        """Per segment of pass ``i``: the result register it accumulates into."""
        if self.accumulate:
            return self.ranks[i]
        return (self.passes[i].pending + np.arange(p.n_segments, dtype=np.int64)) % self.registers


@functools.lru_cache(maxsize=8192)
def kernel_plan(passes: tuple[MacPass, ...], registers: int = 1,
                gb_reuse: bool = False) -> KernelPlan:
    """The load and read-out schedule of one kernel repeat (module docstring)."""
    if registers < 1:
        raise ValueError(f"result registers must be >= 1, got {registers}")
    acc = accumulates(passes, registers)
    held_inp: dict[int, int] = {}
    held_kc: dict[int, int] = {}
    pending = 0
    out = []
    for p in passes:
        if gb_reuse:
            slots, inp, kc = p.gb_slot.tolist(), p.gb_inp.tolist(), p.gb_kcol.tolist()
            wr = [j for j, s in enumerate(slots)
                  if held_inp.get(s) != inp[j] or held_kc.get(s) != kc[j]]
            for j in wr:
                held_inp[slots[j]], held_kc[slots[j]] = inp[j], kc[j]
            wrgb = np.array(wr, dtype=np.int64)
            load = bool(wr)
        else:
            wrgb = np.arange(p.gb_slot.size, dtype=np.int64)
            load = True
        if acc:
            out.append(PassPlan(load, wrgb, 0, 0))
            continue
        drain = pending if load else 0
        start = 0 if load else pending
        out.append(PassPlan(load, wrgb, drain, start))
        pending = (start + p.n_segments) % registers
    if acc:
        slots, _, ranks = _outputs(passes)
        return KernelPlan(tuple(out), registers, int(slots.size), ranks)
    return KernelPlan(tuple(out), registers, pending)


@functools.lru_cache(maxsize=65536)
def _mac_counts_1(passes: tuple[MacPass, ...], registers: int,
                  gb_reuse: bool) -> tuple[tuple[str, int], ...]:
    return tuple(_mac_counts_raw(passes, registers, gb_reuse).items())


def _mac_counts(passes: tuple[MacPass, ...], repeats: int, registers: int = 1,
                gb_reuse: bool = False) -> dict[str, int]:
    return {k: v * repeats for k, v in _mac_counts_1(passes, registers, gb_reuse)}


def _mac_counts_raw(passes: tuple[MacPass, ...], registers: int = 1,
                    gb_reuse: bool = False) -> dict[str, int]:
    plan = kernel_plan(passes, registers, gb_reuse)
    loads = sum(q.load for q in plan.passes)
    wrgb = sum(int(q.wrgb.size) for q in plan.passes)
    rows = sum(int(p.rows.size) for p in passes)
    macs = sum(int(p.seg["n"].sum()) for p in passes)
    if plan.accumulate:      # one read-out of every output at the end of the repeat
        reads, batches = plan.final, int(plan.final > 0)
    else:
        reads = sum(p.n_segments for p in passes)
        # full batches: one each time the running segment count reaches a multiple of R
        full = sum((q.pending + p.n_segments) // registers for p, q in zip(passes, plan.passes))
        batches = full + (plan.final > 0)
    return dict(TMOD=2 * (loads + batches), WRGB=wrgb, ACT16=rows, MAC16=macs, RDMAC16=reads,
                PREA=rows)


@dataclass(eq=False)
class MacKernel:
    """All-bank MAC kernel of one operand region on one channel."""

    name: str
    channel: int
    what: str               # linear | score | context
    region: Region
    part: ChannelPart
    passes: tuple[MacPass, ...]
    repeats: int = 1        # query heads per K/V head (GQA)
    op_index: int = -1
    #: outputs with an id >= this are read out but discarded (key slots not yet written)
    out_limit: int | None = None
    registers: int = 1      # result registers per bank MAC unit
    gb_reuse: bool = False  # loads write only the slots whose contents change

    kind = "mac"

    @functools.cached_property
    def counts(self) -> dict[str, int]:
        return _mac_counts(self.passes, self.repeats, self.registers, self.gb_reuse)

    @property
    def plan(self) -> KernelPlan:
        """Load and read-out schedule of one repeat."""
        return kernel_plan(self.passes, self.registers, self.gb_reuse)

    def gb_writes(self) -> tuple[np.ndarray, np.ndarray]:
        """(input, input column) carried by each WRGB of one repeat, in stream order (the
        data of the ``to_pim`` transfer; the command itself names only the slot)."""
        plan = self.plan
        inp = [p.gb_inp[q.wrgb] for p, q in zip(self.passes, plan.passes)]
        kc = [p.gb_kcol[q.wrgb] for p, q in zip(self.passes, plan.passes)]
        cat = lambda a: np.concatenate(a) if a else np.zeros(0, dtype=np.int64)  # noqa: E731
        return cat(inp), cat(kc)

    def mac_registers(self) -> np.ndarray:
        """The result register each MAC16 of one repeat accumulates into, in stream order
        (the register select a MAC16 carries besides its column)."""
        plan = self.plan
        regs = [np.repeat(plan.registers_of(p, i), p.seg["n"]) for i, p in enumerate(self.passes)]
        return np.concatenate(regs) if regs else np.zeros(0, dtype=np.int64)

    def segments(self) -> dict[str, np.ndarray]:
        """Segment arrays (SEG_FIELDS) of one repeat in issue order."""
        return {f: (np.concatenate([p.seg[f] for p in self.passes]) if self.passes else
                    np.zeros(0, dtype=np.int64)) for f in SEG_FIELDS}

    def readouts(self) -> dict[str, np.ndarray]:
        """What RDMAC16 number i of a repeat returns: the sum of output (``slot[i]``,
        ``sub[i]``) of every bank. Segment i in issue order, or with continued accumulation
        the i-th distinct output in ascending (slot, sub) order (its register's number)."""
        if self.plan.accumulate:
            slot, sub, _ = _outputs(self.passes)
            return dict(slot=slot, sub=sub)
        seg = self.segments()
        return dict(slot=seg["slot"], sub=seg["sub"])

    def _stats(self) -> tuple[int, int]:
        so = self.part.slot_out
        return _stats(self.passes, so.tobytes(), so.shape[0], self.out_limit, self.registers)

    def useful_macs(self) -> int:
        """Bank-column products that hold a real output's data (of MAC16 x banks)."""
        return self.repeats * self._stats()[1]

    def partial_sums(self) -> int:
        """Values read out that hold a real output (banks with an empty slot excluded)."""
        return self.repeats * self._stats()[0]

    def commands(self, spec=None):
        """The exact command stream (bank mode at start and end, all banks closed). With
        ``registers > 1`` the ACT16 after a load or read-out batch precedes the batch's
        opening TMOD (module docstring: assumed, the buffer and registers work in buffer
        mode while a row is open)."""
        from pimsim.engine import CommandStream

        cmd, bg, ba, row, col = _kernel_arrays(self.passes, self.part.base_row, self.repeats,
                                               self.registers, self.gb_reuse)
        return CommandStream(cmd, bg, ba, row, col, source=self.name)


def _readout(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TMOD, RDMAC16 x k (registers 0..k-1 in order), TMOD."""
    cmd = np.full(k + 2, CMD_ID["RDMAC16"], dtype=np.int64)
    cmd[0] = cmd[-1] = CMD_ID["TMOD"]
    neg = np.full(k + 2, -1, dtype=np.int64)
    return cmd, neg, neg.copy()


@functools.lru_cache(maxsize=4096)
def _kernel_arrays(passes: tuple[MacPass, ...], base_row: int, repeats: int,
                   registers: int = 1, gb_reuse: bool = False):
    """The command arrays of a MAC kernel, shared by every decode step that runs the same
    passes (weight kernels are identical from token to token); nothing writes to them.
    With ``registers > 1`` each repeat's ACT16s are moved ahead of the buffer-mode stretch
    they follow (:func:`_hoisted_order`)."""
    plan = kernel_plan(passes, registers, gb_reuse)
    parts = [_pass_commands(p, base_row, plan, i) for i, p in enumerate(passes)]
    if plan.final:
        parts.append(_readout(plan.final))
    cmd, row, col = (np.concatenate([q[i] for q in parts]) if parts else
                     np.zeros(0, dtype=np.int64) for i in range(3))
    if registers > 1:           # per repeat, so that repeats still tile the stream
        order = _hoisted_order(cmd)
        if order is not None:
            cmd, row, col = cmd[order], row[order], col[order]
    if repeats > 1:
        cmd, row, col = (np.tile(a, repeats) for a in (cmd, row, col))
    neg = np.full(cmd.size, -1, dtype=np.int64)
    return cmd, neg, neg, row, col


def _hoisted_order(cmd: np.ndarray) -> np.ndarray | None:
    """The permutation that moves every ACT16 directly after a buffer-mode stretch (one or
    more adjacent TMOD ... TMOD blocks: a global-buffer load, a read-out batch) to just
    before the stretch's first TMOD, so that the row activation (nRCDRDMAC) runs while the
    buffer is loaded or the registers are read; None where no ACT16 moves. The ACT16 still
    issues in bank mode, and the order of everything else is kept (command counts are
    unchanged). Assumed: the global buffer and result registers can be written/read (buffer
    mode) while a row activated by ACT16 is open; the public AiM material does not forbid
    it."""
    tm = cmd == CMD_ID["TMOD"]
    # inside a block: from its opening TMOD (odd running count) to its closing TMOD
    block = (np.cumsum(tm) % 2 == 1) | tm
    act = np.flatnonzero(cmd[1:] == CMD_ID["ACT16"]) + 1
    act = act[block[act - 1]]
    if act.size == 0:
        return None
    pos = np.arange(cmd.size, dtype=np.int64)
    begins = block & ~np.r_[False, block[:-1]]
    stretch = np.maximum.accumulate(np.where(begins, pos, 0))   # first TMOD of the stretch
    key = 2 * pos
    key[act] = 2 * stretch[act - 1] - 1
    return np.argsort(key, kind="stable")


def _pass_commands(p: MacPass, base_row: int, plan: KernelPlan | None = None,
                   i: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pass's load [TMOD, RDMAC16 x drain, WRGB per written slot, TMOD]; per segment:
    [ACT16] MAC16 x n [PREA] and, where a batch is full, TMOD RDMAC16 x R TMOD (with one
    register: after every segment). This is the AiM order; with R > 1 registers
    :func:`_kernel_arrays` then moves each ACT16 that follows a load or batch ahead of it."""
    C = CMD_ID
    if plan is None:
        plan = kernel_plan((p,))
    q = plan.passes[i]
    R = plan.registers
    row, c0, n = p.seg["row"], p.seg["c0"], p.seg["n"]
    k = row.size
    first = np.ones(k, dtype=np.int64)
    first[1:] = row[1:] != row[:-1]
    last = np.ones(k, dtype=np.int64)
    last[:-1] = row[1:] != row[:-1]
    batch = plan.batches(p, i)
    length = first + n + last + batch * (R + 2)
    head = (2 + q.drain + q.wrgb.size) if q.load else 0
    off = head + np.cumsum(length) - length
    total = head + int(length.sum())
    cmd = np.full(total, C["MAC16"], dtype=np.int64)
    rows = np.full(total, -1, dtype=np.int64)
    cols = np.full(total, -1, dtype=np.int64)
    if q.load:
        cmd[0] = cmd[head - 1] = C["TMOD"]
        cmd[1:1 + q.drain] = C["RDMAC16"]
        cmd[1 + q.drain:head - 1] = C["WRGB"]
        cols[1 + q.drain:head - 1] = p.gb_slot[q.wrgb]
    a = off[first == 1]
    cmd[a] = C["ACT16"]
    rows[a] = row[first == 1] + base_row
    j = np.arange(int(n.sum()), dtype=np.int64) - np.repeat(np.cumsum(n) - n, n)
    macs = np.repeat(off + first, n) + j
    rows[macs] = np.repeat(row, n) + base_row
    cols[macs] = np.repeat(c0, n) + j
    e = off + first + n
    cmd[e[last == 1]] = C["PREA"]
    t = (e + last)[batch == 1]
    cmd[t] = C["TMOD"]
    cmd[t + R + 1] = C["TMOD"]
    cmd[(t[:, None] + 1 + np.arange(R)).ravel()] = C["RDMAC16"]
    return cmd, rows, cols


_NAME = {v: k for k, v in CMD_ID.items()}


@dataclass(eq=False)
class AccessKernel:
    """Single-bank reads or writes on one channel: per (bank, row) run ACT, RD/WR..., PRE.

    ``lane`` is -1 for a whole 32-B column, else the one BF16 lane a masked write changes
    (the burst still carries 32 B)."""

    name: str
    channel: int
    what: str               # read | write
    bank: np.ndarray
    row: np.ndarray
    col: np.ndarray
    lane: np.ndarray
    banks_per_bankgroup: int
    op_index: int = -1
    target: str = ""        # what is read or written (tensor / cache name)
    #: For functional execution: the region accessed (None for dense tensors) and, per
    #: access, the output id, sub-output and input column whose data the column holds.
    region: Region | None = None
    src_out: np.ndarray | None = None
    src_sub: np.ndarray | None = None
    src_kcol: np.ndarray | None = None

    kind = "access"

    @functools.cached_property
    def _runs(self) -> np.ndarray:
        if self.bank.size == 0:
            return np.zeros(0, dtype=np.int64)
        change = (np.diff(self.bank) != 0) | (np.diff(self.row) != 0)
        return np.r_[0, np.flatnonzero(change) + 1]

    @functools.cached_property
    def counts(self) -> dict[str, int]:
        runs = int(self._runs.size)
        col = "RD" if self.what == "read" else "WR"
        return {"ACT": runs, col: int(self.bank.size), "PRE": runs}

    def commands(self, spec=None):
        """Per (bank, row) run: ACT, RD/WR per access, PRE. Given the system ``spec``, the
        runs are spread over the banks and software-pipelined
        (:func:`mappings.access_order.pipelined_order`); without it, run after run. The
        stream is shared by every kernel with the same accesses (parameter reads are the
        same from token to token); nothing writes to it."""
        lag = None
        if spec is not None and self._runs.size > 1:
            lag = lags(spec.dram.timing, self.what == "write")
        b, r, c = (np.ascontiguousarray(a, dtype=np.int64).tobytes()
                   for a in (self.bank, self.row, self.col))
        return _access_stream(self.name, self.what, self.banks_per_bankgroup, lag, b, r, c)


@functools.lru_cache(maxsize=4096)
def _access_stream(name: str, what: str, bpg: int, lag, bank_b: bytes, row_b: bytes,
                   col_b: bytes):
    from pimsim.engine import CommandStream

    bank, row, col = (np.frombuffer(b, dtype=np.int64) for b in (bank_b, row_b, col_b))
    C = CMD_ID
    n = bank.size
    if n:
        change = (np.diff(bank) != 0) | (np.diff(row) != 0)
        runs = np.r_[0, np.flatnonzero(change) + 1]
    else:
        runs = np.zeros(0, dtype=np.int64)
    first = np.zeros(n, dtype=np.int64)
    first[runs] = 1
    last = np.zeros(n, dtype=np.int64)
    last[np.r_[runs[1:] - 1, n - 1] if n else []] = 1
    length = first + 1 + last
    off = np.cumsum(length) - length
    total = int(length.sum())
    bg = np.repeat(bank // bpg, length)
    ba = np.repeat(bank % bpg, length)
    rows = np.full(total, -1, dtype=np.int64)
    cols = np.full(total, -1, dtype=np.int64)
    cmd = np.full(total, C["RD" if what == "read" else "WR"], dtype=np.int64)
    a = off[first == 1]
    cmd[a] = C["ACT"]
    rows[a] = row[first == 1]
    x = off + first
    rows[x] = row
    cols[x] = col
    cmd[(x + 1)[last == 1]] = C["PRE"]
    bg, ba = bg.astype(np.int64), ba.astype(np.int64)
    if lag is not None:
        d_col, d_pre = lag
        perm = pipelined_order(bank[runs], np.diff(np.r_[runs, n]), int(bank.max()) + 1,
                               d_col, d_pre)
        cmd, bg, ba, rows, cols = cmd[perm], bg[perm], ba[perm], rows[perm], cols[perm]
    return CommandStream(cmd, bg, ba, rows, cols, source=name)


@dataclass(eq=False)
class AsicOp:
    name: str
    kind: str
    elements: int
    op_index: int = -1
    detail: dict = field(default_factory=dict)


@dataclass(eq=False)
class Transfer:
    name: str
    direction: str          # to_pim | to_asic
    channel: int
    bytes: int
    op_index: int = -1


def row_hit(counts: dict[str, int]) -> tuple[int, int]:
    """(column accesses, column accesses that needed no activation of their own)."""
    cols = sum(counts.get(c, 0) for c in COLUMN_CMDS)
    acts = sum(counts.get(c, 0) for c in ACT_CMDS)
    return cols, cols - acts


@dataclass(eq=False)
class Program:
    """One decode step at context ``kv_len`` (K/V of positions 0..kv_len-1 after the append)."""

    graph: nx.DiGraph
    kv_len: int
    model: str
    strategy: str

    def items(self, kind: type | tuple | None = None):
        for n, data in self.graph.nodes(data=True):
            it = data["item"]
            if kind is None or isinstance(it, kind):
                yield it

    def kernels(self):
        return list(self.items((MacKernel, AccessKernel)))

    def counts(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for k in self.kernels():
            for c, v in k.counts.items():
                total[c] = total.get(c, 0) + v
        return total

    def row_hit_rate(self) -> float:
        cols, hits = row_hit(self.counts())
        return hits / cols if cols else 0.0

    def mac_utilization(self) -> float:
        """Useful bank-column products over all MAC16 x banks issued (idle banks, empty
        slots and not-yet-written key slots count as waste)."""
        ks = list(self.items(MacKernel))
        total = sum(k.counts["MAC16"] * k.part.slot_out.shape[0] for k in ks)
        return sum(k.useful_macs() for k in ks) / total if total else 0.0

    def kernel_table(self) -> list[dict]:
        """Per kernel: name, channel, kind, command counts, row-hit rate."""
        out = []
        for k in self.kernels():
            cols, hits = row_hit(k.counts)
            out.append(dict(name=k.name, channel=k.channel, what=k.what, counts=dict(k.counts),
                            row_hit_rate=hits / cols if cols else 0.0))
        return out

    def by_op(self) -> dict[str, dict[str, int]]:
        """Command counts summed per kernel kind (linear, score, context, read, write)."""
        out: dict[str, dict[str, int]] = {}
        for k in self.kernels():
            d = out.setdefault(k.what, {})
            for c, v in k.counts.items():
                d[c] = d.get(c, 0) + v
        return out

    def transfer_bytes(self) -> dict[str, int]:
        out = {"to_pim": 0, "to_asic": 0}
        for t in self.items(Transfer):
            out[t.direction] += t.bytes
        return out


# --------------------------------------------------------------------------- generation


def kcache_live(slot_out: np.ndarray, n_valid: int) -> np.ndarray:
    """Per key slot: does it hold a position < n_valid in some bank."""
    return ((slot_out >= 0) & (slot_out < n_valid)).any(axis=0)


def active_kcache(t: Template, slot_out: np.ndarray, n_valid: int) -> Template:
    """Segments of key slots holding at least one position < n_valid in some bank."""
    return t.select(kcache_live(slot_out, n_valid)[t.slot])


def active_vcache(t: Template, n_valid: int, values: int) -> Template:
    """V rows clipped to the token columns that hold positions < n_valid."""
    tc = -(-n_valid // values)
    n = np.clip(tc - t.k0, 0, t.n)
    keep = n > 0
    return Template(t.n_rows, t.n_slots, t.row[keep], t.c0[keep], n[keep], t.slot[keep],
                    t.sub[keep], t.inp[keep], t.k0[keep])


class _Builder:
    def __init__(self, mapping, kv_len: int, token: int):
        self.m = mapping
        self.pl = mapping.placement
        self.g = self.pl.geometry
        self.L = kv_len
        self.token = token
        self.G = nx.DiGraph()
        self.producer: dict[int, list[str]] = {}
        #: kv_append op -> {(region name, channel): write node}: an attention kernel waits
        #: only for the write into its own region and channel
        self.writes: dict[int, dict[tuple[str, int], str]] = {}
        #: (layer, channel) -> V-cache write nodes: they wait for the layer's score kernels
        #: on their channel (a V write is needed only by the context kernel, after softmax)
        self.v_writes: dict[tuple[int, int], list[str]] = {}

    def add(self, name: str, item, after=()) -> str:
        self.G.add_node(name, item=item)
        for a in after:
            self.G.add_edge(a, name)
        return name

    # -- helpers ------------------------------------------------------------------------
    def read_dense(self, op, tensor: str, first: int, count: int) -> list[str]:
        out = []
        key = ("read", op.index, tensor, first, count)
        kernels = self.m.items.get(key)
        if kernels is None:
            kernels = self.m.items[key] = []
            for ch, bank, row, col in self.pl.dense_columns(tensor, first, count):
                order = np.lexsort((col, row, bank))
                kernels.append(AccessKernel(
                    f"{op.index}:{tensor}:ch{ch}:read", ch, "read", bank[order], row[order],
                    col[order], np.full(order.size, -1, dtype=np.int64),
                    self.g.banks_per_bankgroup, op.index, tensor))
        for k in kernels:
            ch = k.channel
            kn = self.add(k.name, k)
            t = Transfer(f"{k.name}:to_asic", "to_asic", ch, k.counts["RD"] * self.g.column_bytes,
                         op.index)
            out.append(self.add(t.name, t, [kn]))
        return out

    def read_params(self, op, names) -> list[str]:
        out = []
        for nm in names:
            if nm is not None and nm in self.pl.dense:
                out += self.read_dense(op, nm, 0, self.pl.dense_size(nm))
        return out

    def mac(self, op, region: Region, part: ChannelPart, passes: tuple[MacPass, ...], what: str,
            repeats: int, deps: list[str], out_limit=None) -> tuple[str, MacKernel]:
        tag = f"{op.index}:{region.name}:ch{part.channel}"
        # a weight kernel is the same every step (its passes are cached per template)
        key = ("mac", tag, passes) if what == "linear" else None
        k = self.m.items.get(key) if key else None
        if k is None:
            k = MacKernel(f"{tag}:{what}", part.channel, what, region, part, passes, repeats,
                          op.index, out_limit, self.g.result_registers, self.g.gb_reuse)
            if key:
                self.m.items[key] = k
        cb = self.g.column_bytes
        tin = self.add(f"{tag}:to_pim", Transfer(f"{tag}:to_pim", "to_pim", part.channel,
                                                  k.counts["WRGB"] * cb, op.index), deps)
        kn = self.add(k.name, k, [tin])
        tout = self.add(f"{tag}:to_asic", Transfer(f"{tag}:to_asic", "to_asic", part.channel,
                                                    k.counts["RDMAC16"] * cb, op.index), [kn])
        return tout, k

    # -- ops ------------------------------------------------------------------------------
    def linear(self, op, deps):
        ends, partials = [], 0
        for region in self.pl.by_weight[op["weight"]]:
            for part in region.parts:
                passes = _passes_cached(part.template, self.g.columns)
                end, k = self.mac(op, region, part, passes, "linear", 1, deps)
                ends.append(end)
                partials += k.partial_sums()
        bias = self.read_params(op, [op["bias"]])
        n = op["out_features"]
        a = AsicOp(f"{op.index}:{op.module}:vmm_epilogue", "vmm_epilogue",
                   partials - n + (n if op["bias"] else 0), op.index,
                   dict(partial_sums=partials, outputs=n, bias=bool(op["bias"])))
        return [self.add(a.name, a, ends + bias)]

    def embedding(self, op, deps):
        w = op["weight"]
        idx = self.token if op["role"] == "token" else (self.L - 1) % op["rows"]
        ends = []
        if w in self.pl.dense:
            ends = self.read_dense(op, w, idx * op["dim"], op["dim"])
        else:  # tied to a matrix: read output `idx`'s stored columns from its region
            for region in self.pl.by_weight[w]:
                m = region.meta
                o = idx - m["out_offset"]
                if not 0 <= o < m["n_out"]:
                    continue
                for part in region.parts:
                    bank, slot = np.nonzero(part.slot_out == o)
                    if bank.size == 0:
                        continue
                    t = part.template
                    sel = np.flatnonzero(t.slot == slot[0])
                    n = t.n[sel]
                    j = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
                    rows = np.repeat(t.row[sel], n) + part.base_row
                    cols_ = np.repeat(t.c0[sel], n) + j
                    kcol = np.repeat(t.k0[sel], n) + j
                    order = np.lexsort((cols_, rows))
                    k = AccessKernel(f"{op.index}:{region.name}:ch{part.channel}:read",
                                     part.channel, "read", np.full(rows.size, bank[0]),
                                     rows[order], cols_[order], np.full(rows.size, -1),
                                     self.g.banks_per_bankgroup, op.index, w, region,
                                     np.full(rows.size, o), np.zeros(rows.size, dtype=np.int64),
                                     kcol[order])
                    kn = self.add(k.name, k, deps)
                    t_ = Transfer(f"{k.name}:to_asic", "to_asic", part.channel,
                                  k.counts["RD"] * self.g.column_bytes, op.index)
                    ends.append(self.add(t_.name, t_, [kn]))
        a = AsicOp(f"{op.index}:{op.module}:embedding", "embedding", op["dim"], op.index)
        return [self.add(a.name, a, ends + deps)]

    def kv_append(self, op, deps):
        ks, vs = self.pl.kv[op.layer]
        pos = (self.L - 1) % self.pl.attention[op.layer].reserve
        ends = []
        v = self.g.values_per_column
        for region in (ks if op["target"] == "k" else vs):
            for part in region.parts:
                t = part.template
                if region.kind == "kcache":
                    bank, slot = np.nonzero(part.slot_out == pos)
                    if bank.size == 0:
                        continue
                    sel = np.flatnonzero(t.slot == slot[0])
                    n = t.n[sel]
                    j = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
                    rows = np.repeat(t.row[sel], n)
                    cols_ = np.repeat(t.c0[sel], n) + j
                    banks = np.full(rows.size, bank[0])
                    lanes = np.full(rows.size, -1)
                    s_out = np.full(rows.size, pos)
                    s_sub = np.repeat(t.sub[sel], n)
                    s_kcol = np.repeat(t.k0[sel], n) + j
                else:
                    pc = pos // v
                    sel = np.flatnonzero((t.k0 <= pc) & (pc < t.k0 + t.n))
                    so = part.slot_out[:, t.slot[sel]]          # (banks, segs)
                    bank, si = np.nonzero(so >= 0)
                    seg = sel[si]
                    rows = t.row[seg]
                    cols_ = t.c0[seg] + (pc - t.k0[seg])
                    banks = bank
                    lanes = np.full(rows.size, pos % v)
                    s_out = so[bank, si]
                    s_sub = t.sub[seg]
                    s_kcol = np.full(rows.size, pc)
                if rows.size == 0:
                    continue
                order = np.lexsort((cols_, rows, banks))
                k = AccessKernel(f"{op.index}:{region.name}:ch{part.channel}:write",
                                 part.channel, "write", banks[order], rows[order] + part.base_row,
                                 cols_[order], lanes[order], self.g.banks_per_bankgroup,
                                 op.index, region.name, region, s_out[order], s_sub[order],
                                 s_kcol[order])
                tin = Transfer(f"{k.name}:to_pim", "to_pim", part.channel,
                               k.counts["WR"] * self.g.column_bytes, op.index)
                tn = self.add(tin.name, tin, deps)
                node = self.add(k.name, k, [tn])
                self.writes.setdefault(op.index, {})[(region.name, part.channel)] = node
                if region.kind != "kcache":
                    self.v_writes.setdefault((op.layer, part.channel), []).append(node)
                ends.append(node)
        return ends

    def attention(self, op, deps, what: str):
        appends = [d for d in op.deps if d in self.writes]
        deps = [n for d in op.deps if d not in self.writes for n in self.producer.get(d, [])]
        att = self.pl.attention[op.layer]
        ks, vs = self.pl.kv[op.layer]
        n_valid = min(self.L, att.reserve)
        group = att.q_heads // att.kv_heads
        ends, partials = [], 0
        for region in (ks if what == "score" else vs):
            for part in region.parts:
                passes = _active_passes(what, part.template, part.slot_out, n_valid,
                                        self.g.columns, self.g.values_per_column)
                if not passes:
                    continue
                own = [self.writes[d][key] for d in appends
                       if (key := (region.name, part.channel)) in self.writes[d]]
                end, k = self.mac(op, region, part, passes, what, group, deps + own,
                                  n_valid if what == "score" else None)
                if what == "score":
                    for w in self.v_writes.get((op.layer, part.channel), ()):
                        self.G.add_edge(k.name, w)
                ends.append(end)
                partials += k.partial_sums()
        outputs = att.q_heads * (n_valid if what == "score" else att.head_dim)
        extra = outputs if what == "score" and op["scale"] not in (None, 1.0) else 0
        a = AsicOp(f"{op.index}:{op.module}:{what}_epilogue", f"{what}_epilogue",
                   partials - outputs + extra, op.index,
                   dict(partial_sums=partials, outputs=outputs, kv_len=n_valid))
        return [self.add(a.name, a, ends)]

    def asic(self, op, deps):
        a = op.attrs
        if op.op in ("layernorm", "rmsnorm", "activation"):
            n = a["features"] * a["tokens"]
        elif op.op == "elementwise":
            n = a["features"] * a["tokens"]
        elif op.op == "rotary":
            n = a["heads"] * a["rotary_dim"] * a["tokens"]
        elif op.op == "softmax":
            n = a["heads"] * a["q_len"] * min(self.L, a["window"] or self.L)
        else:
            n = 0
        params = self.read_params(op, [a.get("weight"), a.get("bias")]) \
            if op.op in ("layernorm", "rmsnorm") else []
        item = AsicOp(f"{op.index}:{op.module}:{op.op}", op.op, n, op.index, dict(a))
        return [self.add(item.name, item, deps + params)]

    def build(self) -> Program:
        for op in self.m.trace.decode.ops:
            deps = [n for d in op.deps for n in self.producer.get(d, [])]
            if op.op in ("linear", "lm_head"):
                out = self.linear(op, deps)
            elif op.op == "embedding":
                out = self.embedding(op, deps)
            elif op.op == "kv_append":
                out = self.kv_append(op, deps)
            elif op.op == "attn_score":
                out = self.attention(op, deps, "score")
            elif op.op == "attn_context":
                out = self.attention(op, deps, "context")
            else:
                out = self.asic(op, deps)
            self.producer[op.index] = out
        return Program(self.G, self.L, self.m.trace.model, self.m.strategy.name)
