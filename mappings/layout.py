"""Row templates and regions: how one operand's data lies in the rows of a channel.

Vocabulary (docs/mapping.md has pictures and reasons):

* A **unit** is one bank of one channel; its MAC unit has ``result_registers``
  accumulators (one on AiM).
* An operand (a weight matrix, a K or V cache) is a set of **outputs** (output neurons,
  keys, V neurons); each output is the dot product of its stored data with an **input
  vector** (x, a query head, a probability row).
* Each bank holds up to ``m`` outputs in numbered **slots**. All 16 banks of a channel use
  the same **template** (the same slot -> row/column layout): they share the global buffer,
  so the column at row position ``c`` of every bank is multiplied with global-buffer slot
  ``c``; only *which* output sits in a slot differs between banks (``slot_out``).
* A **piece** is a run of ``w`` consecutive 32-B columns of one slot holding input columns
  ``k0 .. k0+w-1`` of input vector ``inp`` for sub-output ``sub``; a piece that crosses a
  row boundary is split into two **segments**. With one result register per bank every
  segment's sum is read out (one RDMAC16, see ``mappings.program``) and the ASIC adds the
  partial sums of one output; with enough registers the segments of one output
  accumulate in the bank and are read out once.

Everything here is plain integer arithmetic on numpy arrays; templates are cached by shape
so that the 48 identical layers of GPT2-XL cost one template each.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

SEG_FIELDS = ("row", "c0", "n", "slot", "sub", "inp", "k0")


@dataclass(frozen=True, eq=False)
class Template:
    """Row layout of one operand in one channel (identical in all banks of the channel).

    Segment arrays are int64, sorted by (row, c0); rows are relative to the region's base.
    """

    n_rows: int
    n_slots: int
    row: np.ndarray
    c0: np.ndarray
    n: np.ndarray
    slot: np.ndarray
    sub: np.ndarray
    inp: np.ndarray
    k0: np.ndarray

    @property
    def n_segments(self) -> int:
        return int(self.row.size)

    def columns_used(self) -> int:
        """Column slots (per bank) that hold data of some slot."""
        return int(self.n.sum())

    def select(self, mask: np.ndarray) -> "Template":
        return Template(self.n_rows, self.n_slots, *(getattr(self, f)[mask] for f in SEG_FIELDS))


def segments_from_pieces(columns: int, slot, sub, inp, k0, w, pos, n_rows: int | None = None,
                         n_slots: int | None = None) -> Template:
    """Split pieces (stream position ``pos``, width ``w`` columns) at row boundaries."""
    slot, sub, inp, k0, w, pos = (np.asarray(a, dtype=np.int64).ravel() for a in
                                  (slot, sub, inp, k0, w, pos))
    keep = w > 0
    slot, sub, inp, k0, w, pos = (a[keep] for a in (slot, sub, inp, k0, w, pos))
    if w.size and int(w.max()) > columns:
        raise ValueError(f"piece of {int(w.max())} columns exceeds a row of {columns}")
    row = pos // columns
    c0 = pos % columns
    first = np.minimum(w, columns - c0)
    rest = w - first
    split = rest > 0
    rows = np.concatenate([row, row[split] + 1])
    c0s = np.concatenate([c0, np.zeros(int(split.sum()), dtype=np.int64)])
    ns = np.concatenate([first, rest[split]])
    k0s = np.concatenate([k0, k0[split] + first[split]])
    cat = lambda a: np.concatenate([a, a[split]])  # noqa: E731
    slots, subs, inps = cat(slot), cat(sub), cat(inp)
    order = np.lexsort((c0s, rows))
    rows, c0s, ns, k0s, slots, subs, inps = (a[order] for a in (rows, c0s, ns, k0s, slots, subs, inps))
    if n_rows is None:
        n_rows = int(rows.max()) + 1 if rows.size else 0
    if n_slots is None:
        n_slots = int(slots.max()) + 1 if slots.size else 0
    return Template(n_rows, n_slots, rows, c0s, ns, slots, subs, inps, k0s)


def _tiles(k_cols: int, tile_cols: int) -> list[tuple[int, int]]:
    """(first input column, width) of each input tile."""
    return [(t, min(tile_cols, k_cols - t)) for t in range(0, k_cols, tile_cols)]


def _packed_tiles(k_cols: int, tile_cols: int, columns: int) -> list[tuple[int, int]]:
    """Input tiles for pieces wrapped through rows: whole tiles, then the remainder cut into
    widths that divide the row (largest first). A piece of such a width never straddles
    rows and sits at a multiple of its width, so every row of the tile meets the same
    global-buffer contents (the tile repeated across the buffer): one load per tile."""
    out = []
    t = 0
    while k_cols - t >= tile_cols:
        out.append((t, tile_cols))
        t += tile_cols
    while t < k_cols:
        r = k_cols - t
        w = max(d for d in range(1, min(r, tile_cols) + 1) if columns % d == 0)
        out.append((t, w))
        t += w
    return out


def linear_tiles(k_cols: int, tile_cols: int, columns: int, pack: bool) -> list[tuple[int, int]]:
    """(first input column, width) of the tiles ``linear_template`` cuts the input into."""
    return _packed_tiles(k_cols, tile_cols, columns) if pack else _tiles(k_cols, tile_cols)


@functools.lru_cache(maxsize=4096)
def linear_template(m: int, k_first: int, k_cols: int, columns: int, tile_cols: int,
                    pack: bool, last_tiles: tuple[int, ...] | None = None) -> Template:
    """``m`` output slots of ``k_cols`` input columns (starting at input column ``k_first``).

    The input is cut into tiles of ``tile_cols`` columns (what one global-buffer load
    holds). ``pack``: tile-major stream, the pieces of one tile wrapped continuously through
    the rows (rows filled); else every (slot, tile) piece starts its own row (padded).
    ``last_tiles``: the last slot holds only these tiles (indices into ``linear_tiles``), a
    slice of its output's input; its pieces follow the other slots' pieces of the same tile,
    so they meet the same global-buffer contents. None: every slot holds every tile.
    """
    slots, k0s, ws, poss = [], [], [], []
    row0 = 0
    for i, (t0, w) in enumerate(linear_tiles(k_cols, tile_cols, columns, pack)):
        k = m if last_tiles is None or i in last_tiles else m - 1
        s = np.arange(k, dtype=np.int64)
        if pack:
            pos = row0 * columns + s * w
            rows = -(-k * w // columns)
        else:
            pos = (row0 + s) * columns
            rows = k
        slots.append(s)
        k0s.append(np.full(k, k_first + t0))
        ws.append(np.full(k, w))
        poss.append(pos)
        row0 += rows
    if not slots:
        return segments_from_pieces(columns, [], [], [], [], [], [], 0, m)
    slot = np.concatenate(slots)
    return segments_from_pieces(columns, slot, 0 * slot, 0 * slot, np.concatenate(k0s),
                                np.concatenate(ws), np.concatenate(poss), row0, m)


@functools.lru_cache(maxsize=256)
def kcache_template(m: int, heads: int, w: int, columns: int, tile_cols: int,
                    concat: bool) -> Template:
    """``m`` key slots, each holding ``heads`` K-head vectors of ``w`` columns.

    ``concat``: heads concatenated like the input of a weight matrix: heads are cut into
    tiles of ``tile_cols // w`` heads (one global-buffer load of query heads), and within a
    tile the keys' pieces are wrapped back to back through the rows (rows filled).
    Else head-major, each head's keys packed in rows of their own (per-head matrices).
    """
    slots, subs, poss = [], [], []
    if concat:
        per_tile = max(1, tile_cols // w)
        row0 = 0
        for h0 in range(0, heads, per_tile):
            hs = np.arange(h0, min(heads, h0 + per_tile), dtype=np.int64)
            width = hs.size * w
            s = np.repeat(np.arange(m, dtype=np.int64), hs.size)
            g = np.tile(hs, m)
            slots.append(s)
            subs.append(g)
            poss.append(row0 * columns + s * width + (g - h0) * w)
            row0 += -(-m * width // columns)
        n_rows = row0
    else:
        per_head = -(-m * w // columns)
        for h in range(heads):
            s = np.arange(m, dtype=np.int64)
            slots.append(s)
            subs.append(np.full(m, h, dtype=np.int64))
            poss.append(h * per_head * columns + s * w)
        n_rows = per_head * heads
    s, g, pos = (np.concatenate(a) for a in (slots, subs, poss))
    return segments_from_pieces(columns, s, g, g, 0 * s, np.full(s.size, w), pos, n_rows, m)


def _sections(counts: list[int], sections: int) -> list[int]:
    """Sections (pieces per row) of each head of a V row family: one each, the rest one at
    a time to the head that needs the most rows (the first of equals)."""
    out = [1] * len(counts)
    for _ in range(sections - len(counts)):
        need = [-(-n // w) for n, w in zip(counts, out)]
        out[need.index(max(need))] += 1
    return out


@functools.lru_cache(maxsize=256)
def vcache_template(slot_heads: tuple[int, ...], token_cols: int, columns: int,
                    tile_cols: int, per_row: int = 1) -> Template:
    """V stored transposed: slot ``s`` (an output neuron of head ``slot_heads[s]``) holds
    the tokens of one head dimension (16 per column).

    ``per_row`` (k) outputs share a row, each with W = ``tile_cols / k`` columns: row block
    q of a slot holds token columns ``[q W, (q+1) W)``, so all pieces of a row cover the
    same tokens. The channel's heads (runs of equal ``slot_heads``) are taken in **families**
    of up to k consecutive heads; each head of a family gets one or more of the k
    **sections** of a row (columns ``[i W, (i+1) W)``; spare sections go to the heads with
    the most slots) and its slots fill its sections row by row. Every row of a family's
    block q then meets the same global-buffer contents (section i: its head's
    probabilities of that block): one load per family and block. A family with fewer than k
    slots uses fewer, wider sections (the smallest count >= its slots that divides
    ``tile_cols``; one slot: a whole row). Rows are family-major, then row of the family,
    then block. k = 1: one slot per row, ``tile_cols`` token columns per row."""
    if per_row < 1 or tile_cols % per_row:
        raise ValueError(f"{per_row} V outputs per row do not divide {tile_cols} columns")
    m = len(slot_heads)
    runs: list[list[int]] = []
    for s, h in enumerate(slot_heads):
        if runs and slot_heads[runs[-1][0]] == h:
            runs[-1].append(s)
        else:
            runs.append([s])
    slots, k0s, ws, poss = [], [], [], []
    row0 = 0
    for f0 in range(0, len(runs), per_row):
        fam = runs[f0:f0 + per_row]
        total = sum(len(r) for r in fam)
        d = per_row if total >= per_row else \
            next(x for x in range(total, per_row + 1) if tile_cols % x == 0)
        secs = _sections([len(r) for r in fam], d)
        width = tile_cols // d
        blocks = _tiles(token_cols, width)
        nb = len(blocks)
        fam_rows = max(-(-len(r) // w) for r, w in zip(fam, secs))
        first = 0
        for run, w in zip(fam, secs):
            j = np.arange(len(run), dtype=np.int64)
            q = np.repeat(np.arange(nb, dtype=np.int64), j.size)
            jj = np.tile(j, nb)
            slots.append(np.asarray(run, dtype=np.int64)[jj])
            k0s.append(np.array([a for a, _ in blocks], dtype=np.int64)[q])
            ws.append(np.array([b for _, b in blocks], dtype=np.int64)[q])
            poss.append((row0 + (jj // w) * nb + q) * columns + (first + jj % w) * width)
            first += w
        row0 += fam_rows * nb
    if not slots:
        return segments_from_pieces(columns, [], [], [], [], [], [], 0, m)
    s = np.concatenate(slots)
    g = np.asarray(slot_heads, dtype=np.int64)[s]
    return segments_from_pieces(columns, s, 0 * s, g, np.concatenate(k0s), np.concatenate(ws),
                                np.concatenate(poss), row0, m)


@dataclass(eq=False)
class ChannelPart:
    """One region's share of one channel."""

    channel: int
    base_row: int
    template: Template
    #: (banks, n_slots) output id held by each bank's slot, -1 where the slot is empty.
    slot_out: np.ndarray


@dataclass(eq=False)
class Region:
    """Where one operand (or a piece of one: a head, a channel's input slice) lies.

    ``kind``: ``linear`` (weight matrix, outputs = output features ``out_offset + id``,
    inputs = ``x[in_offset : in_offset + in_len]``), ``kcache`` (outputs = key positions,
    sub = K head), ``vcache`` (outputs = ``head * head_dim + d``), ``dense`` (a tensor stored
    as plain data, read with RD).
    """

    name: str
    kind: str
    layer: int | None
    parts: list[ChannelPart]
    meta: dict = field(default_factory=dict)

    def rows_per_channel(self, channels: int) -> np.ndarray:
        out = np.zeros(channels, dtype=np.int64)
        for p in self.parts:
            out[p.channel] += p.template.n_rows
        return out
