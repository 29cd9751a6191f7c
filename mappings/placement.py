"""Placement: where every weight element and every reserved K/V element lives.

:func:`place` asks a strategy for the regions of every weight matrix and every layer's K
and V cache, checks capacity (arithmetic, before anything is built per element), then
allocates rows channel by channel. Tensors that are not matrices of a vector-matrix
product (norm weights, biases, untied embedding tables) are stored as plain data in a
``dense`` area at the end of each channel and read with RD.

Addresses are enumerated on demand (vectorised numpy): :meth:`Placement.columns` gives one
entry per stored 32-B column, :meth:`Placement.elements` one per element.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np

from mappings.layout import Region
from mappings.strategies import Attention, Geometry, Linear, Strategy, cols
from pimsim.errors import PimsimError
from workloads.schema import model_context as config_context


class MappingError(PimsimError):
    """A model cannot be mapped as asked (unsupported shape, bad argument)."""


class CapacityError(MappingError):
    """The model and its KV reserve do not fit the channels; the message gives the bytes."""


#: Dense tensors larger than this are cut into chunks (at multiples of their last
#: dimension) spread over the channels.
DENSE_CHUNK_BYTES = 1 << 20


@dataclass(eq=False)
class DenseChunk:
    """Elements ``first .. first+elements-1`` of a tensor stored as plain data: element
    ``first + i`` is in column ``col0 + i // 16`` of the channel's dense area, whose column
    q lies in bank ``(q // 64) % banks``, row ``base_row + (q // 64) // banks``, column
    ``q % 64``."""

    name: str
    channel: int
    col0: int
    first: int
    elements: int
    base_row: int = -1


@dataclass(eq=False)
class Placement:
    geometry: Geometry
    regions: list[Region]
    by_weight: dict[str, list[Region]]
    kv: dict[int, tuple[list[Region], list[Region]]]
    dense: dict[str, list[DenseChunk]]
    rows_used: np.ndarray                     # rows per channel (all banks)
    weight_rows: np.ndarray
    kv_rows: np.ndarray
    dense_rows: np.ndarray
    max_context: int                                # positions the KV reserve is sized for
    linears: dict = field(default_factory=dict)     # weight name -> strategies.Linear
    attention: dict = field(default_factory=dict)   # layer -> strategies.Attention

    # -- addresses ------------------------------------------------------------------------
    def columns(self, region: Region) -> dict[str, np.ndarray]:
        """One entry per stored column of ``region``: ``out`` (output id), ``sub``,
        ``kcol`` (input column), ``ch``, ``bank``, ``row`` (absolute), ``col``."""
        g = self.geometry
        acc = {k: [] for k in ("out", "sub", "kcol", "ch", "bank", "row", "col")}
        for p in region.parts:
            t = p.template
            so = p.slot_out[:, t.slot]                     # (banks, segs)
            bank, seg = np.nonzero(so >= 0)
            n = t.n[seg]
            rep = lambda a: np.repeat(a, n)               # noqa: E731
            j = np.arange(int(n.sum()), dtype=np.int64) - np.repeat(np.cumsum(n) - n, n)
            acc["out"].append(rep(so[bank, seg]))
            acc["sub"].append(rep(t.sub[seg]))
            acc["kcol"].append(rep(t.k0[seg]) + j)
            acc["ch"].append(np.full(j.size, p.channel, dtype=np.int64))
            acc["bank"].append(rep(bank))
            acc["row"].append(rep(t.row[seg]) + p.base_row)
            acc["col"].append(rep(t.c0[seg]) + j)
        out = {k: (np.concatenate(v) if v else np.zeros(0, dtype=np.int64)) for k, v in acc.items()}
        assert (out["col"] < g.columns).all()
        return out

    def elements(self, region: Region) -> dict[str, np.ndarray]:
        """One entry per stored element: the column table plus ``lane`` and ``index``:
        the flat index in the weight tensor (linear), or in the (reserve, kv_heads,
        head_dim) K cache / (kv_heads, head_dim, reserve) V cache."""
        c = self.columns(region)
        v = self.geometry.values_per_column
        lane = np.tile(np.arange(v, dtype=np.int64), c["out"].size)
        e = {k: np.repeat(a, v) for k, a in c.items()}
        e["lane"] = lane
        k = e["kcol"] * v + lane
        m = region.meta
        if region.kind == "linear":
            keep = k < m["in_len"]
            kk = k + m["in_offset"]
            nn = e["out"] + m["out_offset"]
            if m["layout"] == "out_in":
                idx = nn * m["in_features"] + kk
            else:
                idx = kk * m["out_features"] + nn
        elif region.kind == "kcache":
            keep = k < m["head_dim"]
            idx = (e["out"] * m["kv_heads"] + e["sub"]) * m["head_dim"] + k
        else:  # vcache: out = head * head_dim + d, input = token position
            keep = k < m["reserve"]
            idx = e["out"] * m["reserve"] + k
        e = {name: a[keep] for name, a in e.items()}
        e["index"] = idx[keep]
        return e

    def dense_elements(self, name: str) -> dict[str, np.ndarray]:
        """One entry per element of a dense tensor: index, ch, bank, row, col, lane."""
        g = self.geometry
        acc = []
        for d in self.dense[name]:
            i = np.arange(d.elements, dtype=np.int64)
            q = d.col0 + i // g.values_per_column
            rs = q // g.columns
            acc.append(dict(index=d.first + i, ch=np.full(i.size, d.channel, dtype=np.int64),
                            bank=rs % g.banks, row=d.base_row + rs // g.banks,
                            col=q % g.columns, lane=i % g.values_per_column))
        return {k: np.concatenate([a[k] for a in acc]) for k in acc[0]}

    def dense_columns(self, name: str, first: int, count: int):
        """[(channel, bank, row, col)] of the columns holding elements first .. first+count-1."""
        g = self.geometry
        v = g.values_per_column
        out = []
        for d in self.dense[name]:
            lo, hi = max(first, d.first), min(first + count, d.first + d.elements)
            if lo >= hi:
                continue
            q = d.col0 + np.arange((lo - d.first) // v, -(-(hi - d.first) // v), dtype=np.int64)
            rs = q // g.columns
            out.append((d.channel, rs % g.banks, d.base_row + rs // g.banks, q % g.columns))
        return out

    def dense_size(self, name: str) -> int:
        return sum(d.elements for d in self.dense[name])

    # -- summaries ------------------------------------------------------------------------
    def summary(self) -> dict:
        g = self.geometry
        per_row = g.banks * g.row_bytes
        return {
            "channels": g.channels,
            "bytes_per_channel": g.channel_bytes,
            "rows_per_bank": g.rows,
            "rows_used_max": int(self.rows_used.max()),
            "bytes_used": int(self.rows_used.sum()) * per_row,
            "weight_bytes_reserved": int(self.weight_rows.sum()) * per_row,
            "kv_bytes_reserved": int(self.kv_rows.sum()) * per_row,
            "dense_bytes_reserved": int(self.dense_rows.sum()) * per_row,
            "max_context": self.max_context,
            "kv_reserve_positions": max((a.reserve for a in self.attention.values()), default=0),
        }


def _linears_and_attention(trace, reserve: int) -> tuple[dict[str, Linear], dict[int, Attention]]:
    ops = trace.decode.ops
    att: dict[int, Attention] = {}
    for op in ops:
        if op.op == "attn_score" and op.layer not in att:
            att[op.layer] = Attention(op.layer, op["q_heads"], op["kv_heads"], op["head_dim"],
                                      min(reserve, op["window"] or reserve))
    lins: dict[str, Linear] = {}
    for op in ops:
        if op.op not in ("linear", "lm_head") or op["weight"] in lins:
            continue
        role = "other"
        if op.layer is not None and any(ops[d].op == "attn_context" for d in op.deps):
            role = "out_proj"
        elif op.layer is not None and any(s in op.module.lower() for s in ("attn", "attention")):
            role = "qkv"
        a = att.get(op.layer)
        lins[op["weight"]] = Linear(op["weight"], op["in_features"], op["out_features"],
                                    op["weight_layout"], op.layer, role,
                                    a.head_dim if a else None)
    return lins, att


def model_context(trace) -> int | None:
    """The model's maximum context in positions (``workloads.schema.CONTEXT_KEYS``), or
    None when its config gives none."""
    return config_context(trace.config)


def _check_kv_reserve(trace, g: Geometry, strategy: Strategy, att: dict[int, Attention],
                      preset: str) -> None:
    """A KV reserve whose elements alone (every layer's K and V, BF16) exceed all channels
    is a :class:`CapacityError` before any per-position table is built (the full check
    below needs the regions, which enumerate the positions)."""
    kv = sum(2 * a.kv_heads * a.head_dim * a.reserve for a in att.values()) * g.elem_bytes
    have = g.channels * g.channel_bytes
    if kv > have:
        positions = max(a.reserve for a in att.values())
        raise CapacityError(
            f"{trace.model} ({strategy.name}) does not fit {preset or 'the spec'}: the KV "
            f"reserve for {positions} positions alone needs at least {kv} B ({len(att)} "
            f"layers of K and V), more than the {have} B of all {g.channels} channels "
            f"(organization.channels); reserve fewer positions (max_context)")


def place(trace, g: Geometry, strategy: Strategy, max_context: int | None,
          preset: str = "") -> Placement:
    if max_context is not None:
        if isinstance(max_context, bool) or not isinstance(max_context, numbers.Integral) \
                or max_context < 1:
            raise MappingError(f"{trace.model}: max_context must be a positive integer (KV "
                               f"positions to reserve), got {max_context!r}")
        max_context = int(max_context)
    ctx = max_context if max_context is not None else model_context(trace)
    if ctx is None:
        raise MappingError(f"{trace.model}: no maximum context in the config "
                           f"(n_positions / max_position_embeddings); pass max_context")
    lins, att = _linears_and_attention(trace, ctx)
    for a in att.values():
        if a.head_dim > g.tile_cols * g.values_per_column:
            raise MappingError(f"{trace.model}: layer {a.layer} head_dim {a.head_dim} exceeds "
                               f"one global-buffer load ({g.tile_cols * g.values_per_column})")
    _check_kv_reserve(trace, g, strategy, att, preset)

    # regions in execution order (first use of each weight, KV at the layer's first attention op)
    regions: list[Region] = []
    by_weight: dict[str, list[Region]] = {}
    kv: dict[int, tuple[list[Region], list[Region]]] = {}
    for op in trace.decode.ops:
        if op.op in ("linear", "lm_head") and op["weight"] not in by_weight:
            rs = strategy.linear_regions(g, lins[op["weight"]])
            by_weight[op["weight"]] = rs
            regions += rs
        elif op.op in ("kv_append", "attn_score", "attn_context") and op.layer not in kv \
                and op.layer in att:
            ks, vs = strategy.kv_regions(g, att[op.layer])
            kv[op.layer] = (ks, vs)
            regions += ks + vs

    weight_rows = np.zeros(g.channels, dtype=np.int64)
    kv_rows = np.zeros(g.channels, dtype=np.int64)
    for r in regions:
        (weight_rows if r.kind == "linear" else kv_rows)[:] += r.rows_per_channel(g.channels)

    # dense tensors: every weight no matrix region holds, in chunks, to the emptiest channel
    dense: dict[str, list[DenseChunk]] = {}
    dense_cols = np.zeros(g.channels, dtype=np.int64)
    load = (weight_rows + kv_rows) * g.banks * g.columns
    for name, w in trace.weights.items():
        if name in by_weight:
            continue
        n = int(np.prod(w["shape"]))
        last = int(w["shape"][-1])
        step = max(last, DENSE_CHUNK_BYTES // g.elem_bytes // last * last)
        dense[name] = []
        for first in range(0, n, step):
            c = int(np.argmin(load + dense_cols))
            k = min(step, n - first)
            dense[name].append(DenseChunk(name, c, int(dense_cols[c]), first, k))
            dense_cols[c] += cols(k, g.values_per_column)
    dense_rows = -(-dense_cols // (g.banks * g.columns))
    rows_used = weight_rows + kv_rows + dense_rows

    # capacity, before any row is handed out
    c = int(np.argmax(rows_used))
    if rows_used[c] > g.rows:
        per_row = g.banks * g.row_bytes
        raise CapacityError(
            f"{trace.model} ({strategy.name}) does not fit {preset or 'the spec'}: channel {c} "
            f"needs {int(rows_used[c]) * per_row} B ({int(weight_rows[c] + dense_rows[c]) * per_row}"
            f" B weights + {int(kv_rows[c]) * per_row} B KV reserve for {max((a.reserve for a in att.values()), default=0)} positions), "
            f"{g.channel_bytes} B available per channel ({g.channels} channels x {g.banks} banks "
            f"x {g.rows} rows x {g.row_bytes} B); all channels need "
            f"{int(rows_used.sum()) * per_row} B of {g.channels * g.channel_bytes} B, so at least "
            f"{-(-int(rows_used.sum()) // g.rows)} channels of this size (organization.channels)")

    cursor = np.zeros(g.channels, dtype=np.int64)
    for r in regions:
        for p in r.parts:
            p.base_row = int(cursor[p.channel])
            cursor[p.channel] += p.template.n_rows
    for chunks in dense.values():
        for d in chunks:
            d.base_row = int(cursor[d.channel])
    return Placement(g, regions, by_weight, kv, dense, rows_used, weight_rows, kv_rows,
                     dense_rows, ctx, linears=lins, attention=att)
