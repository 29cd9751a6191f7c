"""The program of one decode step: a DAG of PIM kernels, ASIC ops and transfers.

:class:`Program` holds it as a :class:`FlatGraph` (node names and items in order, edges as
positions), and as a networkx ``DiGraph`` (``Program.graph``, built on first use) whose
nodes carry their object in the ``item`` attribute. An item is a :class:`MacKernel` or
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
from collections import OrderedDict
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
from numba import njit

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

    def same_node(self, other: "MacKernel") -> bool:
        """Same commands, channel, category and operator as ``other`` (``out_limit`` only
        decides which read-outs hold data)."""
        return (self.passes is other.passes and self.part is other.part
                and self.repeats == other.repeats and self.registers == other.registers
                and self.gb_reuse == other.gb_reuse and self.channel == other.channel
                and self.what == other.what and self.op_index == other.op_index)

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
    if base_row != 0:
        # the same passes at another base row (layers share templates): the same arrays
        # with the rows shifted (commands without a row keep -1)
        cmd, neg, _, row, col = _kernel_arrays(passes, 0, repeats, registers, gb_reuse)
        return cmd, neg, neg, np.where(row >= 0, row + base_row, -1), col
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
    moved, order = _hoist(cmd, CMD_ID["TMOD"], CMD_ID["ACT16"])
    return order if moved else None


@njit(cache=True)
def _hoist(cmd, tmod, act16):
    """(any ACT16 moved, the permutation) of :func:`_hoisted_order`: sort key 2 x position,
    and 2 x (first TMOD of the stretch) - 1 for an ACT16 right after a block."""
    n = cmd.shape[0]
    key = np.empty(n, dtype=np.int64)
    moved = False
    count = 0
    in_prev = False
    stretch = 0
    for i in range(n):
        # inside a block: from its opening TMOD (odd running count) to its closing TMOD
        is_tm = cmd[i] == tmod
        if is_tm:
            count += 1
        inside = is_tm or count % 2 == 1
        key[i] = 2 * i
        if cmd[i] == act16 and in_prev:
            key[i] = 2 * stretch - 1
            moved = True
        if inside and not in_prev:
            stretch = i
        in_prev = inside
    return moved, np.argsort(key, kind="mergesort")


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
    wrgb = p.gb_slot[q.wrgb] if q.load else np.zeros(0, dtype=np.int64)
    return _pass_arrays(p.seg["row"], p.seg["c0"], p.seg["n"],
                        np.ascontiguousarray(plan.batches(p, i), dtype=np.int64),
                        plan.registers, bool(q.load), int(q.drain),
                        np.ascontiguousarray(wrgb, dtype=np.int64), int(base_row), C["TMOD"],
                        C["RDMAC16"], C["WRGB"], C["ACT16"], C["MAC16"], C["PREA"])


@njit(cache=True)
def _pass_arrays(row, c0, n, batch, R, load, drain, wrgb, base_row, tmod, rdmac, wrgb_cmd,
                 act16, mac16, prea):
    """One pass's (cmd, row, col), segment by segment (see _pass_commands)."""
    k = row.shape[0]
    head = (2 + drain + wrgb.shape[0]) if load else 0
    total = head
    for i in range(k):
        first = i == 0 or row[i] != row[i - 1]
        last = i == k - 1 or row[i + 1] != row[i]
        total += (1 if first else 0) + n[i] + (1 if last else 0) + batch[i] * (R + 2)
    cmd = np.full(total, mac16, dtype=np.int64)
    rows = np.full(total, -1, dtype=np.int64)
    cols = np.full(total, -1, dtype=np.int64)
    if load:
        cmd[0] = tmod
        for j in range(drain):
            cmd[1 + j] = rdmac
        for j in range(wrgb.shape[0]):
            cmd[1 + drain + j] = wrgb_cmd
            cols[1 + drain + j] = wrgb[j]
        cmd[head - 1] = tmod
    w = head
    for i in range(k):
        r = row[i] + base_row
        if i == 0 or row[i] != row[i - 1]:
            cmd[w] = act16
            rows[w] = r
            w += 1
        for j in range(n[i]):
            rows[w] = r
            cols[w] = c0[i] + j
            w += 1
        if i == k - 1 or row[i + 1] != row[i]:
            cmd[w] = prea
            w += 1
        if batch[i]:
            cmd[w] = tmod
            for j in range(R):
                cmd[w + 1 + j] = rdmac
            cmd[w + R + 1] = tmod
            w += R + 2
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

    def same_node(self, other: "AccessKernel") -> bool:
        """Same commands (the same access arrays), channel, category and operator."""
        return (self.bank is other.bank and self.row is other.row and self.col is other.col
                and self.what == other.what and self.name == other.name
                and self.channel == other.channel
                and self.banks_per_bankgroup == other.banks_per_bankgroup
                and self.op_index == other.op_index)

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
        # kernels of later steps often hold the very same arrays (parameter reads, V
        # appends into one token column): look them up by identity first
        key = (id(self.bank), id(self.row), id(self.col), self.name, self.what,
               self.banks_per_bankgroup, None if spec is None else id(spec.dram.timing))
        hit = _BY_ARRAYS.get(key)
        if hit is not None:
            return hit[-1]
        lag = None if spec is None else lags(spec.dram.timing, self.what == "write")
        b, r, c = (np.ascontiguousarray(a, dtype=np.int64).tobytes()
                   for a in (self.bank, self.row, self.col))
        stream = _access_stream(self.name, self.what, self.banks_per_bankgroup, lag, b, r, c)
        if len(_BY_ARRAYS) >= 16384:
            _BY_ARRAYS.clear()
        # the entry holds the arrays (and timing), so their ids stay theirs while it stands
        _BY_ARRAYS[key] = (self.bank, self.row, self.col,
                           None if spec is None else spec.dram.timing, stream)
        return stream

    def timing_stream(self, spec):
        """A stream whose commands, banks and rows are those of ``commands(spec)`` (its
        columns may be another kernel's): all a scheduler that places commands by their
        timing needs. Kernels that access the same banks and rows in the same order share
        it (a V append into the next token column)."""
        hit = _BY_ARRAYS.get((id(self.bank), id(self.row), id(self.col), self.name, self.what,
                              self.banks_per_bankgroup, id(spec.dram.timing)))
        if hit is not None:
            return hit[-1]
        key = (self.what, self.banks_per_bankgroup, id(spec.dram.timing),
               np.ascontiguousarray(self.bank, dtype=np.int64).tobytes(),
               np.ascontiguousarray(self.row, dtype=np.int64).tobytes())
        hit = _BY_TIMING.get(key)
        if hit is not None and hit[0] is spec.dram.timing:
            return hit[1]
        stream = self.commands(spec)
        if len(_BY_TIMING) >= 16384:
            _BY_TIMING.clear()
        _BY_TIMING[key] = (spec.dram.timing, stream)
        return stream


#: access streams by the identity of their kernel's arrays (see AccessKernel.commands)
_BY_ARRAYS: dict = {}
#: access streams by their banks and rows (see AccessKernel.timing_stream)
_BY_TIMING: dict = {}


@functools.lru_cache(maxsize=4096)
def _access_stream(name: str, what: str, bpg: int, lag, bank_b: bytes, row_b: bytes,
                   col_b: bytes):
    from pimsim.engine import CommandStream

    bank, row, col = (np.frombuffer(b, dtype=np.int64) for b in (bank_b, row_b, col_b))
    C = CMD_ID
    cmd, bg, ba, rows, cols, run_bank, run_len = _access_arrays(
        bank, row, col, bpg, C["RD" if what == "read" else "WR"], C["ACT"], C["PRE"])
    # runs in a single bank follow each other whatever the pipelining
    if lag is not None and run_bank.size > 1 and run_bank.min() != run_bank.max():
        d_col, d_pre = lag
        perm = pipelined_order(run_bank, run_len, int(bank.max()) + 1, d_col, d_pre)
        cmd, bg, ba, rows, cols = cmd[perm], bg[perm], ba[perm], rows[perm], cols[perm]
    return CommandStream(cmd, bg, ba, rows, cols, source=name)


@njit(cache=True)
def _access_arrays(bank, row, col, bpg, col_cmd, act, pre):
    """Run by run (a run: consecutive accesses to one bank and row): ACT (the row), the
    column commands (row, column), PRE; and each run's bank and length."""
    n = bank.shape[0]
    n_runs = 0
    for i in range(n):
        if i == 0 or bank[i] != bank[i - 1] or row[i] != row[i - 1]:
            n_runs += 1
    total = n + 2 * n_runs
    cmd = np.empty(total, dtype=np.int64)
    bg = np.empty(total, dtype=np.int64)
    ba = np.empty(total, dtype=np.int64)
    rows = np.full(total, -1, dtype=np.int64)
    cols = np.full(total, -1, dtype=np.int64)
    run_bank = np.empty(n_runs, dtype=np.int64)
    run_len = np.zeros(n_runs, dtype=np.int64)
    w = 0
    r = -1
    for i in range(n):
        b = bank[i]
        if i == 0 or b != bank[i - 1] or row[i] != row[i - 1]:
            if i > 0:
                cmd[w] = pre
                bg[w] = bank[i - 1] // bpg
                ba[w] = bank[i - 1] % bpg
                w += 1
            r += 1
            run_bank[r] = b
            cmd[w] = act
            bg[w] = b // bpg
            ba[w] = b % bpg
            rows[w] = row[i]
            w += 1
        cmd[w] = col_cmd
        bg[w] = b // bpg
        ba[w] = b % bpg
        rows[w] = row[i]
        cols[w] = col[i]
        run_len[r] += 1
        w += 1
    if n > 0:
        cmd[w] = pre
        bg[w] = bank[n - 1] // bpg
        ba[w] = bank[n - 1] % bpg
    return cmd, bg, ba, rows, cols, run_bank, run_len


@dataclass(eq=False)
class AsicOp:
    name: str
    kind: str
    elements: int
    op_index: int = -1
    detail: dict = field(default_factory=dict)

    def same_node(self, other: "AsicOp") -> bool:
        """The same operator work (kind, element count, details) in the same operator."""
        return (self.kind == other.kind and self.elements == other.elements
                and self.op_index == other.op_index and self.detail == other.detail)


@dataclass(eq=False)
class Transfer:
    name: str
    direction: str          # to_pim | to_asic
    channel: int
    bytes: int
    op_index: int = -1

    def same_node(self, other: "Transfer") -> bool:
        return (self.direction == other.direction and self.bytes == other.bytes
                and self.channel == other.channel and self.op_index == other.op_index)


def row_hit(counts: dict[str, int]) -> tuple[int, int]:
    """(column accesses, column accesses that needed no activation of their own)."""
    cols = sum(counts.get(c, 0) for c in COLUMN_CMDS)
    acts = sum(counts.get(c, 0) for c in ACT_CMDS)
    return cols, cols - acts


#: The item of a node that only an edge added (networkx: a node without attributes).
NO_ITEM = type("NoItem", (), {"__repr__": lambda self: "NO_ITEM", "__slots__": ()})()


class FlatGraph:
    """A light append-only directed graph, what the program builder writes into.

    ``names`` lists the nodes in insertion order, ``items`` their items (parallel),
    ``index`` maps a name to its position (a copy makes it when first needed); ``src`` /
    ``dst`` are the edges as positions, in order of first insertion, without duplicates.
    The semantics are networkx's: adding an existing node replaces its item and keeps its
    position, adding an existing edge does nothing, and an edge that names a missing node
    adds it (without an item, :data:`NO_ITEM`). :meth:`to_networkx` gives the equal
    ``nx.DiGraph``: the same node and edge order and the same order of every node's
    successors and predecessors (networkx keeps them in order of first insertion)."""

    __slots__ = ("names", "items", "_index", "src", "dst", "_edges")

    def __init__(self):
        self.names: list = []
        self.items: list = []
        self._index: dict | None = {}
        self.src: list[int] = []
        self.dst: list[int] = []
        #: ``i << 32 | j`` of every edge, to find repeats; None: not made yet (a copy)
        self._edges: set[int] | None = set()

    def __len__(self) -> int:
        return len(self.names)

    def number_of_nodes(self) -> int:
        return len(self.names)

    def number_of_edges(self) -> int:
        return len(self.src)

    @property
    def index(self) -> dict:
        """Node name -> position."""
        if self._index is None:
            self._index = dict(zip(self.names, range(len(self.names))))
        return self._index

    # -- one at a time ----------------------------------------------------------------------
    def add_node(self, name, item=NO_ITEM) -> int:
        """Add (or update) a node; returns its position."""
        index = self._index
        if index is None:
            index = self.index
        i = index.get(name)
        if i is None:
            i = index[name] = len(self.names)
            self.names.append(name)
            self.items.append(item)
        elif item is not NO_ITEM:
            self.items[i] = item
        return i

    def add_edge(self, u, v) -> None:
        """Edge between two node names (missing nodes are added, ``u`` first)."""
        self.add_edge_at(self.add_node(u), self.add_node(v))

    def add_edge_at(self, i: int, j: int) -> None:
        """Edge between the nodes at positions ``i`` and ``j``."""
        e = i << 32 | j
        edges = self._edges
        if edges is None:
            edges = self._edge_set()
        if e not in edges:
            edges.add(e)
            self.src.append(i)
            self.dst.append(j)

    def _edge_set(self) -> set[int]:
        self._edges = {i << 32 | j for i, j in zip(self.src, self.dst)}
        return self._edges

    # -- in bulk ----------------------------------------------------------------------------
    def add_nodes(self, names: list, items: list):
        """``add_node`` for each (name, item) in order; returns the positions (a range where
        every name is new)."""
        index = self.index
        base = len(self.names)
        end = base + len(names)
        index.update(zip(names, range(base, end)))
        if len(index) == end:
            self.names += names
            self.items += items
            return range(base, end)
        # a name was there already, or repeats: restore the index, then one at a time
        index.clear()
        index.update(zip(self.names, range(base)))
        return [self.add_node(n, it) for n, it in zip(names, items)]

    def add_edges_at(self, src: list[int], dst: list[int], keys: list[int] | None = None) -> None:
        """``add_edge_at`` for each pair in order (``keys``: their ``i << 32 | j``)."""
        edges = self._edges
        if edges is None:
            edges = self._edge_set()
        n0 = len(edges)
        edges.update([i << 32 | j for i, j in zip(src, dst)] if keys is None else keys)
        if len(edges) == n0 + len(src):
            self.src += src
            self.dst += dst
            return
        # an edge was there already, or repeats: restore the set, then one at a time
        self._edge_set()
        for i, j in zip(src, dst):
            self.add_edge_at(i, j)

    def copy(self) -> "FlatGraph":
        """An independent copy (the items themselves are shared)."""
        f = FlatGraph.__new__(FlatGraph)
        f.names, f.items, f._index = self.names.copy(), self.items.copy(), None
        f.src, f.dst, f._edges = self.src.copy(), self.dst.copy(), None
        return f

    # -- views ------------------------------------------------------------------------------
    def to_networkx(self) -> nx.DiGraph:
        """The equal ``nx.DiGraph`` (items in the node attribute ``item``): the graph that
        ``add_node(name, item=...)`` for every node in order, then ``add_edge`` for every
        edge in order give, written straight into its dictionaries (``_node``, ``_succ``,
        ``_pred``; twice as fast; a test checks that the two agree)."""
        G = nx.DiGraph()
        names = self.names
        node, succ, pred = G._node, G._succ, G._pred
        for n, it in zip(names, self.items):
            node[n] = {} if it is NO_ITEM else {"item": it}
            succ[n] = {}
            pred[n] = {}
        for i, j in zip(self.src, self.dst):
            u, v = names[i], names[j]
            d = {}
            succ[u][v] = d
            pred[v][u] = d
        return G


@dataclass(eq=False)
class Program:
    """One decode step at context ``kv_len`` (K/V of positions 0..kv_len-1 after the append).

    ``flat`` holds the step's nodes (items) and edges; :attr:`graph` is the same DAG as a
    networkx graph, built on first use. ``layout``, when the builder gives one, is shared
    by every step with the same node names and edges: only the items at
    ``layout.dyn_pos`` differ between them (the others are the same objects)."""

    flat: FlatGraph
    kv_len: int
    model: str
    strategy: str
    layout: object = None

    @functools.cached_property
    def graph(self) -> nx.DiGraph:
        """The step as a networkx DAG (node attribute ``item``), built from ``flat`` once."""
        return self.flat.to_networkx()

    def items(self, kind: type | tuple | None = None):
        for it in self.flat.items:
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



#: Where a fragment edge starts at this source, it stands for every dependency of the op
#: (in order) where the fragment is put into a step.
_DEPS = -1
_DEPS_NODE = object()     # the stand-in node, position 0, while a fragment is recorded
_UNSET = object()


class _Fragment:
    """Step-independent nodes and edges of one op: local positions, or ``_DEPS``."""

    __slots__ = ("names", "items", "src", "dst", "outputs", "dep_edges", "keys", "own_src",
                 "own_dst", "own_keys", "shape")

    def __init__(self, names, items, src, dst, outputs):
        self.names, self.items, self.src, self.dst, self.outputs = \
            names, items, src, dst, outputs
        #: the edges from the op's dependencies (indices into src / dst)
        self.dep_edges = [e for e, a in enumerate(src) if a == _DEPS]
        #: edge keys (FlatGraph) at offset 0; a step adds its offset to them
        self.keys = [a << 32 | b for a, b in zip(src, dst)]
        #: the edges without those from the dependencies (for an op without any)
        own = [e for e, a in enumerate(src) if a != _DEPS]
        self.own_src = [src[e] for e in own]
        self.own_dst = [dst[e] for e in own]
        self.own_keys = [self.keys[e] for e in own]
        self.shape: int | None = None       # see _Builder.embedding_fragment


class _Recorder:
    """Records an op's nodes and edges (networkx semantics) into a :class:`_Fragment`;
    position ``DEPS`` stands for the op's dependencies."""

    DEPS = 0

    def __init__(self):
        self.f = FlatGraph()
        self.f.add_node(_DEPS_NODE)

    def add(self, name: str, item, after=()) -> int:
        i = self.f.add_node(name, item)
        for a in after:
            self.f.add_edge_at(a, i)
        return i

    def fragment(self, outputs: list[int]) -> _Fragment:
        f = self.f
        return _Fragment(f.names[1:], f.items[1:], [s - 1 for s in f.src],
                         [d - 1 for d in f.dst], [o - 1 for o in outputs])


class _KTable:
    """Where each key position lies in a K-cache part: the (bank, slot) holding it (the
    first in bank-major order, as ``np.nonzero`` finds it), and per slot its columns in
    write order. Shared by all layers with the same template and slot assignment."""

    def __init__(self, t: Template, slot_out: np.ndarray):
        self.t = t
        bank, slot = np.nonzero(slot_out >= 0)
        out = slot_out[bank, slot]
        where: dict[int, tuple[int, int]] = {}
        for p, b, s in zip(out.tolist()[::-1], bank.tolist()[::-1], slot.tolist()[::-1]):
            where[p] = (b, s)              # reversed: the first in bank-major order wins
        self.where = where
        self.slots: dict[int, tuple | None] = {}

    def slot(self, s: int):
        """(rows relative to the part, columns, sub, input column, lanes) of slot ``s``,
        sorted by (row, column); None where the slot holds no segment."""
        hit = self.slots.get(s, _UNSET)
        if hit is _UNSET:
            t = self.t
            sel = np.flatnonzero(t.slot == s)
            n = t.n[sel]
            j = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
            rows = np.repeat(t.row[sel], n)
            cols_ = np.repeat(t.c0[sel], n) + j
            if rows.size == 0:
                hit = None
            else:
                # one bank per write: sorting by (bank, row, column) is by (row, column)
                order = np.lexsort((cols_, rows))
                hit = (rows[order], cols_[order], np.repeat(t.sub[sel], n)[order],
                       (np.repeat(t.k0[sel], n) + j)[order], np.full(rows.size, -1))
            self.slots[s] = hit
        return hit


class _VTable:
    """Per V token column: the columns one position's values go to in a V-cache part
    (banks, rows relative to the part, columns, outputs, subs; sorted by (bank, row,
    column)). Shared by all layers with the same template and slot assignment."""

    def __init__(self, t: Template, slot_out: np.ndarray):
        self.t = t
        self.slot_out = slot_out
        self.cols: dict[int, tuple | None] = {}

    def at(self, pc: int):
        hit = self.cols.get(pc, _UNSET)
        if hit is _UNSET:
            t = self.t
            sel = np.flatnonzero((t.k0 <= pc) & (pc < t.k0 + t.n))
            so = self.slot_out[:, t.slot[sel]]          # (banks, segs)
            bank, si = np.nonzero(so >= 0)
            seg = sel[si]
            rows = t.row[seg]
            cols_ = t.c0[seg] + (pc - t.k0[seg])
            if rows.size == 0:
                hit = None
            else:
                order = np.lexsort((cols_, rows, bank))
                hit = (bank[order], rows[order], cols_[order], so[bank, si][order],
                       t.sub[seg][order])
            self.cols[pc] = hit
        return hit


class _WritePart:
    """One part of a kv_append op: its names, table and the transfer per write count."""

    __slots__ = ("region", "part", "channel", "key", "kcache", "kname", "tname", "table",
                 "transfers", "rows")

    def __init__(self, op, region: Region, part: ChannelPart, table):
        self.region, self.part, self.channel = region, part, part.channel
        self.key = (region.name, part.channel)
        self.kcache = region.kind == "kcache"
        self.kname = f"{op.index}:{region.name}:ch{part.channel}:write"
        self.tname = f"{self.kname}:to_pim"
        self.table = table
        self.transfers: dict[int, Transfer] = {}
        #: (K slot or V token column, its absolute rows) of the last write
        self.rows: tuple = (None, None)


class _AttentionPart:
    """One part of an attention op: its names, and per number of valid positions the
    passes and what follows from them (shared with the layers of the same shape)."""

    __slots__ = ("region", "part", "channel", "key", "kname", "tin", "tout", "by_n", "memo")

    def __init__(self, op, region: Region, part: ChannelPart, what: str, by_n: dict):
        self.region, self.part, self.channel = region, part, part.channel
        self.key = (region.name, part.channel)
        tag = f"{op.index}:{region.name}:ch{part.channel}"
        self.kname = f"{tag}:{what}"
        self.tin = f"{tag}:to_pim"
        self.tout = f"{tag}:to_asic"
        self.by_n = by_n
        #: (passes, to_pim transfer, to_asic transfer, context kernel) of the last passes
        self.memo: tuple | None = None


class _Skeleton:
    """The nodes and edges of a step, and where its step-dependent items lie."""

    __slots__ = ("flat", "dyn_pos")

    def __init__(self, flat: FlatGraph, dyn_pos: list[int]):
        self.flat, self.dyn_pos = flat, dyn_pos


#: Step structures kept per mapping: at most this many, and beyond the newest at most
#: :data:`SKELETON_NODES` nodes in all (least recently used dropped). Steps share one
#: while the same parts are written and run (16 consecutive positions go to one K part),
#: and the K writes cycle through the channels.
SKELETONS = 16
SKELETON_NODES = 250_000


class _Builder:
    """Builds the program of one step into a :class:`FlatGraph`, in two passes.

    *Items*: what does not depend on the step is made once per mapping and kept in
    ``mapping.items`` (items are never written to, so steps may share them): each weight,
    parameter and ASIC op's nodes and edges as a fragment (put into a step as whole
    lists); the embedding reads per row read; per kv_append / attention op the names of its
    parts; per K/V part shape where each position is written and which passes each number
    of valid positions runs. Per step only the items that depend on it are made (the K/V
    writes, the attention kernels and epilogues, the softmax, the embedding reads of its
    token and position), listed in the order the nodes are added, with their names.

    *Structure*: the nodes and edges, exactly those the ``add_node`` / ``add_edge`` calls
    of the op-by-op description give (node, edge, successor and predecessor order
    included). Apart from the fixed fragments, they follow only from the names of the
    step-dependent nodes (which parts are written and run) and the shapes of the
    embedding fragments, so a step with the same ones copies the structure of an earlier
    step and puts its own items in (``mapping.items`` keeps those of recent steps,
    :data:`SKELETONS`). The wiring below must therefore depend on nothing else."""

    def __init__(self, mapping, kv_len: int, token: int):
        self.m = mapping
        self.cache = mapping.items
        self.pl = mapping.placement
        self.g = self.pl.geometry
        self.L = kv_len
        self.token = token
        #: per op: (wiring method, op, what the method needs)
        self.steps: list[tuple] = []
        #: the step-dependent nodes in the order they are added
        self.dyn_names: list[str] = []
        self.dyn_items: list = []
        #: shape ids of the fragments whose items depend on the step (embeddings)
        self.shapes: list[int] = []
        # wiring state
        self.F: FlatGraph | None = None
        self.dyn_pos: list[int] = []
        self.cursor = 0
        #: op index -> positions of the nodes later ops depend on
        self.producer: dict[int, list[int]] = {}
        #: kv_append op -> {(region name, channel): write node}: an attention kernel waits
        #: only for the write into its own region and channel
        self.writes: dict[int, dict[tuple[str, int], int]] = {}
        #: (layer, channel) -> V-cache write nodes: they wait for the layer's score kernels
        #: on their channel (a V write is needed only by the context kernel, after softmax)
        self.v_writes: dict[tuple[int, int], list[int]] = {}

    # -- fragments (made once per mapping) -------------------------------------------------
    def _cached(self, key, make):
        """``mapping.items[key]``, made by ``make()`` the first time."""
        hit = self.cache.get(key)
        if hit is None:
            hit = self.cache[key] = make()
        return hit

    def read_dense(self, rec: _Recorder, op, tensor: str, first: int, count: int) -> list[int]:
        out = []
        key = ("read", op.index, tensor, first, count)
        kernels = self.cache.get(key)
        if kernels is None:
            kernels = self.cache[key] = []
            for ch, bank, row, col in self.pl.dense_columns(tensor, first, count):
                order = np.lexsort((col, row, bank))
                kernels.append(AccessKernel(
                    f"{op.index}:{tensor}:ch{ch}:read", ch, "read", bank[order], row[order],
                    col[order], np.full(order.size, -1, dtype=np.int64),
                    self.g.banks_per_bankgroup, op.index, tensor))
        for k in kernels:
            ch = k.channel
            kn = rec.add(k.name, k)
            t = Transfer(f"{k.name}:to_asic", "to_asic", ch, k.counts["RD"] * self.g.column_bytes,
                         op.index)
            out.append(rec.add(t.name, t, [kn]))
        return out

    def read_params(self, rec: _Recorder, op, names) -> list[int]:
        out = []
        for nm in names:
            if nm is not None and nm in self.pl.dense:
                out += self.read_dense(rec, op, nm, 0, self.pl.dense_size(nm))
        return out

    def linear_fragment(self, op) -> _Fragment:
        rec = _Recorder()
        g = self.g
        cb = g.column_bytes
        ends, partials = [], 0
        for region in self.pl.by_weight[op["weight"]]:
            for part in region.parts:
                passes = _passes_cached(part.template, g.columns)
                tag = f"{op.index}:{region.name}:ch{part.channel}"
                # a weight kernel is the same every step (its passes are cached per template)
                key = ("mac", tag, passes)
                k = self.cache.get(key)
                if k is None:
                    k = self.cache[key] = MacKernel(
                        f"{tag}:linear", part.channel, "linear", region, part, passes, 1,
                        op.index, None, g.result_registers, g.gb_reuse)
                tin = rec.add(f"{tag}:to_pim", Transfer(f"{tag}:to_pim", "to_pim", part.channel,
                                                         k.counts["WRGB"] * cb, op.index),
                              [rec.DEPS])
                kn = rec.add(k.name, k, [tin])
                ends.append(rec.add(f"{tag}:to_asic",
                                    Transfer(f"{tag}:to_asic", "to_asic", part.channel,
                                             k.counts["RDMAC16"] * cb, op.index), [kn]))
                partials += k.partial_sums()
        bias = self.read_params(rec, op, [op["bias"]])
        n = op["out_features"]
        a = AsicOp(f"{op.index}:{op.module}:vmm_epilogue", "vmm_epilogue",
                   partials - n + (n if op["bias"] else 0), op.index,
                   dict(partial_sums=partials, outputs=n, bias=bool(op["bias"])))
        return rec.fragment([rec.add(a.name, a, ends + bias)])

    def embedding_fragment(self, op, idx: int) -> _Fragment:
        rec = _Recorder()
        w = op["weight"]
        ends = []
        if w in self.pl.dense:
            ends = self.read_dense(rec, op, w, idx * op["dim"], op["dim"])
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
                    kn = rec.add(k.name, k, [rec.DEPS])
                    t_ = Transfer(f"{k.name}:to_asic", "to_asic", part.channel,
                                  k.counts["RD"] * self.g.column_bytes, op.index)
                    ends.append(rec.add(t_.name, t_, [kn]))
        a = AsicOp(f"{op.index}:{op.module}:embedding", "embedding", op["dim"], op.index)
        frag = rec.fragment([rec.add(a.name, a, ends + [rec.DEPS])])
        # fragments with the same nodes and edges share a shape id (a skeleton key)
        shapes = self.cache.setdefault(("fragment shapes",), {})
        frag.shape = shapes.setdefault((tuple(frag.names), tuple(frag.src), tuple(frag.dst),
                                        tuple(frag.outputs)), len(shapes))
        return frag

    def asic_elements(self, op) -> int:
        a = op.attrs
        if op.op in ("layernorm", "rmsnorm", "activation"):
            return a["features"] * a["tokens"]
        if op.op == "elementwise":
            return a["features"] * a["tokens"]
        if op.op == "rotary":
            return a["heads"] * a["rotary_dim"] * a["tokens"]
        if op.op == "softmax":
            return a["heads"] * a["q_len"] * min(self.L, a["window"] or self.L)
        return 0

    def asic_fragment(self, op) -> _Fragment:
        rec = _Recorder()
        a = op.attrs
        params = self.read_params(rec, op, [a.get("weight"), a.get("bias")]) \
            if op.op in ("layernorm", "rmsnorm") else []
        item = AsicOp(f"{op.index}:{op.module}:{op.op}", op.op, self.asic_elements(op),
                      op.index, dict(a))
        return rec.fragment([rec.add(item.name, item, [rec.DEPS] + params)])

    # -- per-op plans (made once per mapping) ------------------------------------------------
    def write_parts(self, op) -> list[_WritePart]:
        key = ("kv_append", op.index)
        parts = self.cache.get(key)
        if parts is None:
            ks, vs = self.pl.kv[op.layer]
            parts = []
            for region in (ks if op["target"] == "k" else vs):
                for part in region.parts:
                    kind = "ktable" if region.kind == "kcache" else "vtable"
                    tkey = (kind, part.template, part.slot_out.tobytes(), part.slot_out.shape)
                    table = self.cache.get(tkey)
                    if table is None:
                        table = self.cache[tkey] = (_KTable if kind == "ktable" else _VTable)(
                            part.template, part.slot_out)
                    parts.append(_WritePart(op, region, part, table))
            self.cache[key] = parts
        return parts

    def attention_parts(self, op, what: str) -> list[_AttentionPart]:
        key = ("attention", op.index)
        parts = self.cache.get(key)
        if parts is None:
            att = self.pl.attention[op.layer]
            ks, vs = self.pl.kv[op.layer]
            group = att.q_heads // att.kv_heads
            parts = []
            for region in (ks if what == "score" else vs):
                for part in region.parts:
                    so = part.slot_out
                    skey = ("passes", what, part.template, so.tobytes(), so.shape, group)
                    by_n = self.cache.get(skey)
                    if by_n is None:
                        by_n = self.cache[skey] = {}
                    parts.append(_AttentionPart(op, region, part, what, by_n))
            self.cache[key] = parts
        return parts

    def _passes_at(self, ap: _AttentionPart, what: str, n_valid: int, group: int) -> tuple:
        """(passes, to_pim bytes, to_asic bytes, partial sums) of a part at ``n_valid``."""
        g = self.g
        part = ap.part
        passes = _active_passes(what, part.template, part.slot_out, n_valid, g.columns,
                                g.values_per_column)
        if not passes:
            hit = (passes, 0, 0, 0)
        else:
            c = _mac_counts(passes, group, g.result_registers, g.gb_reuse)
            so = part.slot_out
            out_limit = n_valid if what == "score" else None
            partial = group * _stats(passes, so.tobytes(), so.shape[0], out_limit,
                                     g.result_registers)[0]
            hit = (passes, c["WRGB"] * g.column_bytes, c["RDMAC16"] * g.column_bytes, partial)
        ap.by_n[n_valid] = hit
        return hit

    def _full(self, n: int, value: int) -> np.ndarray:
        """``np.full(n, value)`` (int64), shared: nothing writes to the items' arrays."""
        full = self.cache.get(("full",))
        if full is None or len(full) > 4096:
            full = self.cache[("full",)] = {}
        a = full.get((n, value))
        if a is None:
            a = full[(n, value)] = np.full(n, value)
        return a

    # -- pass 1: the step's items ------------------------------------------------------------
    def _dyn(self, name: str, item) -> None:
        self.dyn_names.append(name)
        self.dyn_items.append(item)

    def kv_append(self, op) -> list[_WritePart]:
        """The K/V writes of one position: per written part, a transfer and a kernel."""
        g = self.g
        pos = (self.L - 1) % self.pl.attention[op.layer].reserve
        v = g.values_per_column
        bpg = g.banks_per_bankgroup
        names, items = self.dyn_names, self.dyn_items
        written = []
        for wp in self.write_parts(op):
            if wp.kcache:
                hit = wp.table.where.get(pos)
                if hit is None:
                    continue
                at = hit[1]
                arrays = wp.table.slot(at)
                if arrays is None:
                    continue
                rel, cols_, sub, kcol, lanes = arrays
                n = rel.size
                bank, s_out = self._full(n, hit[0]), self._full(n, pos)
            else:
                at = pos // v
                arrays = wp.table.at(at)
                if arrays is None:
                    continue
                bank, rel, cols_, s_out, sub = arrays
                n = bank.size
                lanes, kcol = self._full(n, pos % v), self._full(n, at)
            if wp.rows[0] != at:
                wp.rows = (at, rel + wp.part.base_row)
            k = AccessKernel(wp.kname, wp.channel, "write", bank, wp.rows[1], cols_, lanes, bpg,
                             op.index, wp.region.name, wp.region, s_out, sub, kcol)
            tin = wp.transfers.get(n)
            if tin is None:
                tin = wp.transfers[n] = Transfer(wp.tname, "to_pim", wp.channel,
                                                 n * g.column_bytes, op.index)
            names += (wp.tname, wp.kname)
            items += (tin, k)
            written.append(wp)
        return written

    def attention(self, op, what: str) -> list[_AttentionPart]:
        """Per part with valid positions: transfer in, kernel, transfer out; the epilogue."""
        g = self.g
        att = self.pl.attention[op.layer]
        n_valid = min(self.L, att.reserve)
        group = att.q_heads // att.kv_heads
        score = what == "score"
        names, items = self.dyn_names, self.dyn_items
        run, partials = [], 0
        for ap in self.attention_parts(op, what):
            hit = ap.by_n.get(n_valid)
            if hit is None:
                hit = self._passes_at(ap, what, n_valid, group)
            passes = hit[0]
            if not passes:
                continue
            memo = ap.memo
            if memo is None or memo[0] is not passes:
                ctx = None if score else MacKernel(
                    ap.kname, ap.channel, what, ap.region, ap.part, passes, group, op.index,
                    None, g.result_registers, g.gb_reuse)
                memo = ap.memo = (passes,
                                  Transfer(ap.tin, "to_pim", ap.channel, hit[1], op.index),
                                  Transfer(ap.tout, "to_asic", ap.channel, hit[2], op.index),
                                  ctx)
            k = MacKernel(ap.kname, ap.channel, what, ap.region, ap.part, passes, group,
                          op.index, n_valid, g.result_registers, g.gb_reuse) if score \
                else memo[3]
            names += (ap.tin, ap.kname, ap.tout)
            items += (memo[1], k, memo[2])
            run.append(ap)
            partials += hit[3]
        outputs = att.q_heads * (n_valid if score else att.head_dim)
        extra = outputs if score and op["scale"] not in (None, 1.0) else 0
        name = self._cached(("epilogue", op.index),
                              lambda: f"{op.index}:{op.module}:{what}_epilogue")
        self._dyn(name, AsicOp(name, f"{what}_epilogue", partials - outputs + extra, op.index,
                               dict(partial_sums=partials, outputs=outputs, kv_len=n_valid)))
        return run

    def softmax(self, op) -> None:
        name = self._cached(("softmax", op.index), lambda: f"{op.index}:{op.module}:{op.op}")
        self._dyn(name, AsicOp(name, op.op, self.asic_elements(op), op.index, dict(op.attrs)))

    def collect(self) -> None:
        steps = self.steps
        for op in self.m.trace.decode.ops:
            kind = op.op
            if kind in ("linear", "lm_head"):
                steps.append((self.put, op, self._cached(("linear", op.index),
                                                           lambda: self.linear_fragment(op))))
            elif kind == "embedding":
                idx = self.token if op["role"] == "token" else (self.L - 1) % op["rows"]
                frag = self._cached(("embedding", op.index, idx),
                                      lambda: self.embedding_fragment(op, idx))
                self.dyn_names += frag.names
                self.dyn_items += frag.items
                self.shapes.append(frag.shape)
                steps.append((self.put_dynamic, op, frag))
            elif kind == "kv_append":
                steps.append((self.wire_kv_append, op, self.kv_append(op)))
            elif kind == "attn_score":
                steps.append((self.wire_attention, op, ("score", self.attention(op, "score"))))
            elif kind == "attn_context":
                steps.append((self.wire_attention, op,
                              ("context", self.attention(op, "context"))))
            elif kind == "softmax":  # the only ASIC op whose element count follows kv_len
                self.softmax(op)
                steps.append((self.wire_single, op, None))
            else:
                steps.append((self.put, op, self._cached(("asic", op.index),
                                                           lambda: self.asic_fragment(op))))

    # -- pass 2: the structure ---------------------------------------------------------------
    def deps(self, op) -> list[int]:
        producer = self.producer
        return [n for d in op.deps for n in producer.get(d, [])]

    def add_dyn(self) -> int:
        """Add the next step-dependent node."""
        c = self.cursor
        self.cursor = c + 1
        i = self.F.add_node(self.dyn_names[c], self.dyn_items[c])
        self.dyn_pos.append(i)
        return i

    def put(self, op, frag: _Fragment, dynamic: bool = False) -> list[int]:
        """Add a fragment; its edges from ``_DEPS`` come from each dependency of the op."""
        F = self.F
        deps = self.deps(op)
        if dynamic:
            c = self.cursor
            self.cursor = c + len(frag.names)
            pos = F.add_nodes(self.dyn_names[c:self.cursor], self.dyn_items[c:self.cursor])
            self.dyn_pos += pos
        else:
            pos = F.add_nodes(frag.names, frag.items)
        nd = len(deps)
        if type(pos) is range and nd <= 1:     # the usual case: new nodes, one dependency
            base = pos.start
            off = base << 32 | base
            if nd:
                d0 = deps[0]
                src = [a + base for a in frag.src]
                keys = [k + off for k in frag.keys]
                dst = frag.dst
                for e in frag.dep_edges:
                    src[e] = d0
                    keys[e] = d0 << 32 | (dst[e] + base)
            else:
                src = [a + base for a in frag.own_src]
                keys = [k + off for k in frag.own_keys]
                dst = frag.own_dst
            F.add_edges_at(src, [b + base for b in dst], keys)
            return [base + o for o in frag.outputs]
        src: list[int] = []
        dst: list[int] = []
        for s, d in zip(frag.src, frag.dst):
            if s < 0:
                if nd:
                    src += deps
                    dst += [pos[d]] * nd
            else:
                src.append(pos[s])
                dst.append(pos[d])
        F.add_edges_at(src, dst)
        return [pos[o] for o in frag.outputs]

    def put_dynamic(self, op, frag: _Fragment) -> list[int]:
        return self.put(op, frag, True)

    def wire_kv_append(self, op, written: list[_WritePart]) -> list[int]:
        F = self.F
        deps = self.deps(op)
        ends = []
        for wp in written:
            tn = self.add_dyn()
            for a in deps:
                F.add_edge_at(a, tn)
            node = self.add_dyn()
            F.add_edge_at(tn, node)
            self.writes.setdefault(op.index, {})[wp.key] = node
            if not wp.kcache:
                self.v_writes.setdefault((op.layer, wp.channel), []).append(node)
            ends.append(node)
        return ends

    def wire_attention(self, op, data) -> list[int]:
        what, run = data
        F = self.F
        writes = self.writes
        appends = [d for d in op.deps if d in writes]
        deps = [n for d in op.deps if d not in writes for n in self.producer.get(d, [])]
        ends = []
        for ap in run:
            tin = self.add_dyn()
            for a in deps:
                F.add_edge_at(a, tin)
            for d in appends:
                w = writes[d].get(ap.key)
                if w is not None:
                    F.add_edge_at(w, tin)
            kn = self.add_dyn()
            F.add_edge_at(tin, kn)
            tout = self.add_dyn()
            F.add_edge_at(kn, tout)
            if what == "score":
                for w in self.v_writes.get((op.layer, ap.channel), ()):
                    F.add_edge_at(kn, w)
            ends.append(tout)
        node = self.add_dyn()
        for e in ends:
            F.add_edge_at(e, node)
        return [node]

    def wire_single(self, op, _) -> list[int]:
        F = self.F
        node = self.add_dyn()
        for a in self.deps(op):
            F.add_edge_at(a, node)
        return [node]

    def wire(self) -> FlatGraph:
        self.F = FlatGraph()
        for method, op, data in self.steps:
            self.producer[op.index] = method(op, data)
        assert self.cursor == len(self.dyn_items)
        return self.F

    # -- the step ------------------------------------------------------------------------------
    def build(self) -> Program:
        self.collect()
        skeletons = self.cache.get(("skeletons",))
        if skeletons is None:
            skeletons = self.cache[("skeletons",)] = OrderedDict()
        key = (tuple(self.dyn_names), tuple(self.shapes))
        sk = skeletons.get(key)
        if sk is None:
            F = self.wire()
            kept = F.copy()
            for p in self.dyn_pos:          # this step's own items: not kept alive
                kept.items[p] = None
            sk = skeletons[key] = _Skeleton(kept, self.dyn_pos)
            total = sum(len(s.flat.names) for s in skeletons.values())
            while len(skeletons) > 1 and (len(skeletons) > SKELETONS or total > SKELETON_NODES):
                total -= len(skeletons.popitem(last=False)[1].flat.names)
        else:
            skeletons.move_to_end(key)
            F = sk.flat.copy()
            items = F.items
            for p, it in zip(sk.dyn_pos, self.dyn_items):
                items[p] = it
        return Program(F, self.L, self.m.trace.model, self.m.strategy.name, sk)
