"""Mapping strategies: small classes registered by name (``mappings.STRATEGIES``).

A strategy decides, for every weight matrix and every layer's K and V cache, which bank
holds which output and how its data is laid out in the rows (see ``mappings.layout``).
Placement (row allocation, capacity), program generation and the functional check are
shared by all strategies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mappings.layout import (ChannelPart, Region, kcache_template, linear_template, linear_tiles,
                             vcache_template)


@dataclass(frozen=True)
class Geometry:
    """What a mapper needs of a spec (all counts; bytes where named)."""

    channels: int
    banks: int
    banks_per_bankgroup: int
    rows: int
    columns: int          # 32-B columns per row
    column_bytes: int
    values_per_column: int  # BF16 values in a column (= MAC lanes x passes; 16 on AiM)
    gb_slots: int         # global-buffer slots of one column each
    elem_bytes: int = 2   # BF16
    result_registers: int = 1  # accumulators per bank MAC unit (read-outs batched up to this)
    gb_reuse: bool = False     # loads write only slots whose contents change (within a kernel)

    @property
    def units(self) -> int:
        return self.channels * self.banks

    @property
    def tile_cols(self) -> int:
        """Input columns one global-buffer load can serve in one row."""
        return min(self.columns, self.gb_slots)

    @property
    def mac_columns(self) -> int:
        """Columns of a row that MAC16 can use: column c meets global-buffer slot c, so a
        global buffer smaller than a row leaves the rest of each MAC row empty."""
        return min(self.columns, self.gb_slots)

    @property
    def row_bytes(self) -> int:
        return self.columns * self.column_bytes

    @property
    def channel_bytes(self) -> int:
        return self.banks * self.rows * self.row_bytes


@dataclass(frozen=True)
class Linear:
    """A weight matrix as the trace describes it: y[out] = sum_k x[k] W[k, out]."""

    weight: str
    in_features: int
    out_features: int
    layout: str           # out_in | in_out (how the tensor is stored)
    layer: int | None
    role: str             # qkv | out_proj | other (from the data flow of the trace)
    head_dim: int | None


@dataclass(frozen=True)
class Attention:
    layer: int
    q_heads: int
    kv_heads: int
    head_dim: int
    reserve: int          # KV positions reserved (max context, or the sliding window)


def cols(n: int, values: int) -> int:
    return -(-n // values)


class Strategy:
    """Base: the PIM-GPT scheme. Subclasses override the parts they change."""

    name = "pim-gpt"
    description = ("PIM-GPT: outputs spread over all channels x banks, heads concatenated, "
                   "rows filled (wrapped), K key-major, V transposed (k outputs per row)")

    # -- weight matrices ------------------------------------------------------------------
    def linear_regions(self, g: Geometry, lin: Linear) -> list[Region]:
        return [spread_linear(g, lin, lin.weight, lin.out_features, 0, lin.in_features, 0,
                              pack=True, balance=True)]

    # -- KV cache ---------------------------------------------------------------------------
    #: V outputs sharing a row (k) when the MAC units have more than one result register
    v_outputs_per_row = 4

    def v_per_row(self, g: Geometry) -> int:
        """k outputs of the V cache per row: ``v_outputs_per_row`` when the MAC units have
        R > 1 result registers (a row's k segments then cost no extra read-outs) and k
        divides the columns one load serves; 1 with one register, as on AiM."""
        k = self.v_outputs_per_row if g.result_registers > 1 else 1
        return k if k >= 1 and g.tile_cols % k == 0 else 1

    def kv_regions(self, g: Geometry, att: Attention) -> tuple[list[Region], list[Region]]:
        return ([kcache_region(g, att, concat=True)], [vcache_region(g, att, self.v_per_row(g))])


def _parts(g: Geometry, ch: np.ndarray, bank: np.ndarray, slot: np.ndarray, out: np.ndarray,
           make_template) -> list[ChannelPart]:
    parts = []
    for c in range(g.channels):
        sel = ch == c
        if not sel.any():
            continue
        m = int(slot[sel].max()) + 1
        slot_out = np.full((g.banks, m), -1, dtype=np.int64)
        slot_out[bank[sel], slot[sel]] = out[sel]
        parts.append(ChannelPart(c, -1, make_template(c, m), slot_out))
    return parts


def _slices(widths: list[int], p: int) -> list[tuple[int, ...]]:
    """Tiles (indices) of ``p`` slices with balanced column counts: widest tile first, each
    to the slice with the fewest columns so far (the first of equals). Every slice gets a
    tile when ``p <= len(widths)``, and the column counts of two slices differ by at most
    the widest tile."""
    load = [0] * p
    out: list[list[int]] = [[] for _ in range(p)]
    for i in sorted(range(len(widths)), key=lambda i: -widths[i]):
        j = load.index(min(load))
        out[j].append(i)
        load[j] += widths[i]
    return [tuple(sorted(a)) for a in out]


def last_round_slices(g: Geometry, n_out: int, widths: list[int]) -> list[tuple[int, ...]] | None:
    """How the last, partly filled slot round of a matrix is cut (``spread_linear``): the
    tiles of each slice, or None to keep whole outputs there.

    With r = n_out mod U remaining outputs, one slice of all r needs ceil(r / banks)
    channels, so at most channels // ceil(r / banks) slices fit (and at most one per
    tile). Of 2 .. that many, the fewest slices whose widest slice has the fewest columns."""
    r = n_out % g.units
    if r == 0:
        return None
    p_max = min(g.channels // -(-r // g.banks), len(widths))
    best = None
    for p in range(2, p_max + 1):
        sl = _slices(widths, p)
        cost = max(sum(widths[i] for i in a) for a in sl)
        if best is None or cost < best[0]:
            best = (cost, sl)
    return best[1] if best else None


def spread_linear(g: Geometry, lin: Linear, name: str, n_out: int, out_offset: int,
                  in_len: int, in_offset: int, pack: bool, balance: bool = False) -> Region:
    """Outputs round-robin over all units, channels first: output n -> unit n mod U, slot
    n div U.

    ``balance``: when the last slot round is partly filled (r = n_out mod U outputs), it is
    cut along the input instead where ``last_round_slices`` finds slices: channel c holds
    slice c mod p (whole tiles, the same for all its banks, as the template is shared);
    remaining output i (n = n_out - r + i) lies in bank i mod banks of the (i div banks)-th
    channel of each slice, in slot n div U. Each of the r outputs then has p partial sums,
    one per slice; every channel's last slot costs the columns of its slice, not a whole
    output's."""
    n = np.arange(n_out, dtype=np.int64)
    u = n % g.units
    kc = cols(in_len, g.values_per_column)
    ch, bank, slot, out = u % g.channels, u // g.channels, n // g.units, n
    slices = None
    if balance:
        tiles = linear_tiles(kc, g.tile_cols, g.mac_columns, pack)
        slices = last_round_slices(g, n_out, [w for _, w in tiles])
    if slices is not None:
        p = len(slices)
        q = n_out // g.units
        main = n < q * g.units
        i = np.tile(np.arange(n_out - q * g.units, dtype=np.int64), p)
        j = np.repeat(np.arange(p, dtype=np.int64), n_out - q * g.units)
        ch = np.concatenate([ch[main], j + (i // g.banks) * p])
        bank = np.concatenate([bank[main], i % g.banks])
        slot = np.concatenate([slot[main], np.full(i.size, q, dtype=np.int64)])
        out = np.concatenate([out[main], q * g.units + i])

    def make(c, m):
        last = slices[c % len(slices)] if slices is not None and m > n_out // g.units else None
        return linear_template(m, 0, kc, g.mac_columns, g.tile_cols, pack, last)

    parts = _parts(g, ch, bank, slot, out, make)
    return Region(name, "linear", lin.layer, parts,
                  dict(weight=lin.weight, in_features=lin.in_features,
                       out_features=lin.out_features, layout=lin.layout, out_offset=out_offset,
                       n_out=n_out, in_offset=in_offset, in_len=in_len,
                       last_slices=slices))


def kcache_region(g: Geometry, att: Attention, concat: bool) -> Region:
    """Key position j -> bank j mod 16 of channel (j div 16) mod C, slot j div (16 C)."""
    j = np.arange(att.reserve, dtype=np.int64)
    w = cols(att.head_dim, g.values_per_column)
    parts = _parts(g, (j // g.banks) % g.channels, j % g.banks, j // g.units, j,
                   lambda c, m: kcache_template(m, att.kv_heads, w, g.mac_columns, g.tile_cols, concat))
    return Region(f"layer{att.layer}.k_cache", "kcache", att.layer, parts,
                  dict(kv_heads=att.kv_heads, head_dim=att.head_dim, reserve=att.reserve))


def vcache_region(g: Geometry, att: Attention, per_row: int = 1) -> Region:
    """V transposed: output (head, d) holds V[head, :, d] along the rows. Outputs go in
    blocks of 16 (one per bank) of one head; blocks fill the channels in order. A channel's
    slots share rows in groups of ``per_row`` (``vcache_template``)."""
    bph = cols(att.head_dim, g.banks)                 # blocks per head
    nb = att.kv_heads * bph
    b = np.repeat(np.arange(nb, dtype=np.int64), g.banks)
    bank = np.tile(np.arange(g.banks, dtype=np.int64), nb)
    head = b // bph
    d = (b % bph) * g.banks + bank
    out = np.where(d < att.head_dim, head * att.head_dim + d, -1)
    block_ch = np.arange(nb, dtype=np.int64) * g.channels // nb
    first = np.searchsorted(block_ch, np.arange(g.channels))   # first block of each channel
    ch = block_ch[b]
    slot = b - first[ch]
    token_cols = cols(att.reserve, g.values_per_column)

    def make(c, m):
        return vcache_template(tuple(int((first[c] + s) // bph) for s in range(m)), token_cols,
                               g.mac_columns, g.tile_cols, per_row)

    parts = _parts(g, ch, bank, slot, out, make)
    return Region(f"layer{att.layer}.v_cache", "vcache", att.layer, parts,
                  dict(kv_heads=att.kv_heads, head_dim=att.head_dim, reserve=att.reserve,
                       per_row=per_row))


class NaiveStrategy(Strategy):
    name = "naive"
    v_outputs_per_row = 1
    description = ("no concatenation: attention projections split into per-head matrices, "
                   "every (output, input tile) piece and every head's K and V padded to rows")

    def linear_regions(self, g: Geometry, lin: Linear) -> list[Region]:
        dh = lin.head_dim
        if lin.role == "qkv" and dh and lin.out_features % dh == 0:
            return [spread_linear(g, lin, f"{lin.weight}[out {o}:{o + dh}]", dh, o,
                                  lin.in_features, 0, pack=False)
                    for o in range(0, lin.out_features, dh)]
        if lin.role == "out_proj" and dh and lin.in_features % dh == 0:
            return [spread_linear(g, lin, f"{lin.weight}[in {i}:{i + dh}]", lin.out_features, 0,
                                  dh, i, pack=False)
                    for i in range(0, lin.in_features, dh)]
        return [spread_linear(g, lin, lin.weight, lin.out_features, 0, lin.in_features, 0,
                              pack=False)]

    def kv_regions(self, g: Geometry, att: Attention) -> tuple[list[Region], list[Region]]:
        vs = []
        for h in range(att.kv_heads):
            d = np.arange(att.head_dim, dtype=np.int64)
            u = d % g.units
            token_cols = cols(att.reserve, g.values_per_column)
            parts = _parts(g, u % g.channels, u // g.channels, d // g.units, h * att.head_dim + d,
                           lambda c, m, h=h: vcache_template((h,) * m, token_cols, g.mac_columns,
                                                             g.tile_cols))
            vs.append(Region(f"layer{att.layer}.v_cache[head {h}]", "vcache", att.layer, parts,
                             dict(kv_heads=att.kv_heads, head_dim=att.head_dim,
                                  reserve=att.reserve, per_row=1)))
        return [kcache_region(g, att, concat=False)], vs


class ColumnStrategy(Strategy):
    name = "column"
    description = ("input dimension split across channels (each channel's global buffer holds "
                   "one slice of x), every output in every channel: C partial sums per output")

    def linear_regions(self, g: Geometry, lin: Linear) -> list[Region]:
        kc = cols(lin.in_features, g.values_per_column)
        bounds = [c * kc // g.channels for c in range(g.channels + 1)]
        n = np.arange(lin.out_features, dtype=np.int64)
        parts = []
        for c in range(g.channels):
            lo, hi = bounds[c], bounds[c + 1]
            if hi <= lo:
                continue
            m = int(-(-lin.out_features // g.banks))
            slot_out = np.full((g.banks, m), -1, dtype=np.int64)
            slot_out[n % g.banks, n // g.banks] = n
            parts.append(ChannelPart(c, -1, linear_template(m, lo, hi - lo, g.mac_columns,
                                                            g.tile_cols, True), slot_out))
        return [_whole_input_region(lin, parts)]


class SlicedStrategy(Strategy):
    name = "sliced"
    description = ("an input that is s whole global-buffer loads long is cut into p slices (p "
                   "the largest divisor of both s and the channel count), one per group of "
                   "channels, each holding its slice of every output (p partial sums per "
                   "output); other inputs as pim-gpt")

    @staticmethod
    def groups(g: Geometry, k_cols: int) -> int:
        """The number of slices: the most channel groups (a divisor of the channel count)
        that cut the input into equal slices of whole loads; 1 keeps pim-gpt's layout."""
        if k_cols % g.tile_cols:
            return 1
        loads = k_cols // g.tile_cols
        return max(d for d in range(1, g.channels + 1)
                   if g.channels % d == 0 and loads % d == 0)

    def linear_regions(self, g: Geometry, lin: Linear) -> list[Region]:
        kc = cols(lin.in_features, g.values_per_column)
        p = self.groups(g, kc)
        if p == 1:
            return super().linear_regions(g, lin)
        per = kc // p
        width = g.channels // p                    # channels per group
        units = width * g.banks
        n = np.tile(np.arange(lin.out_features, dtype=np.int64), p)
        j = np.repeat(np.arange(p, dtype=np.int64), lin.out_features)   # the slice
        u = n % units
        parts = _parts(g, j * width + u % width, u // width, n // units, n,
                       lambda c, m: linear_template(m, (c // width) * per, per, g.mac_columns,
                                                    g.tile_cols, True))
        return [_whole_input_region(lin, parts)]


def _whole_input_region(lin: Linear, parts: list[ChannelPart]) -> Region:
    """A matrix's region whose parts cover all its outputs and inputs."""
    return Region(lin.weight, "linear", lin.layer, parts,
                  dict(weight=lin.weight, in_features=lin.in_features,
                       out_features=lin.out_features, layout=lin.layout, out_offset=0,
                       n_out=lin.out_features, in_offset=0, in_len=lin.in_features))


STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (Strategy, NaiveStrategy, ColumnStrategy, SlicedStrategy)
}
