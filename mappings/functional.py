"""Functional proof of a mapping: run a program's data movement on numpy arrays (fp32).

Bank contents live in one array per (region, channel) of shape (banks, rows, columns,
values per column), filled with finite garbage first so that any read of a place the
mapping did not write shows up. Weights are stored through :meth:`Placement.elements`;
K/V positions either the same way or through the program's own write kernels. MAC kernels
run pass by pass exactly as their commands do: the global buffer is loaded slot by slot,
every MAC16 multiplies a column of every bank with the slot of the same index, the
accumulator is read (and cleared) at each segment end, and the ASIC side adds the partial
sums of each output.
"""

from __future__ import annotations

import numpy as np

from mappings.layout import Region
from mappings.program import AccessKernel, MacKernel


class Functional:
    def __init__(self, mapping, seed: int = 0):
        self.m = mapping
        self.pl = mapping.placement
        self.g = self.pl.geometry
        self.rng = np.random.default_rng(seed)
        self.mem: dict[tuple[int, int], np.ndarray] = {}

    def _arr(self, region: Region, channel: int) -> tuple[np.ndarray, int]:
        part = next(p for p in region.parts if p.channel == channel)
        key = (id(region), channel)
        if key not in self.mem:
            shape = (self.g.banks, part.template.n_rows, self.g.columns, self.g.values_per_column)
            self.mem[key] = self.rng.uniform(-100, 100, shape).astype(np.float32)
        return self.mem[key], part.base_row

    # -- storing ----------------------------------------------------------------------------
    def store(self, region: Region, flat: np.ndarray, keep=None) -> None:
        """Store ``flat`` (the tensor in the element index space of ``Placement.elements``)."""
        e = self.pl.elements(region)
        if keep is not None:
            sel = keep(e)
            e = {k: v[sel] for k, v in e.items()}
        for c in np.unique(e["ch"]).tolist():
            s = e["ch"] == c
            arr, base = self._arr(region, c)
            arr[e["bank"][s], e["row"][s] - base, e["col"][s], e["lane"][s]] = flat[e["index"][s]]

    def store_columns(self, region: Region, table: np.ndarray, keep=None) -> None:
        """Store whole columns: ``table[out, sub, kcol]`` is the (values,) block of input
        columns ``kcol`` of output ``out`` (sub-output ``sub``), zero-padded."""
        c = self.pl.columns(region)
        if keep is not None:
            sel = keep(c)
            c = {k: v[sel] for k, v in c.items()}
        for ch in np.unique(c["ch"]).tolist():
            s = c["ch"] == ch
            arr, base = self._arr(region, ch)
            arr[c["bank"][s], c["row"][s] - base, c["col"][s], :] = \
                table[c["out"][s], c["sub"][s], c["kcol"][s]]

    def write(self, k: AccessKernel, data) -> None:
        """Execute a write kernel; ``data(out, sub, kcol, lane)`` gives the values written:
        a (n, values) block for whole columns, (n,) for masked single-lane writes."""
        arr, base = self._arr(k.region, k.channel)
        full = k.lane < 0
        if full.any():
            arr[k.bank[full], k.row[full] - base, k.col[full], :] = data(
                k.src_out[full], k.src_sub[full], k.src_kcol[full], None)
        m = ~full
        if m.any():
            arr[k.bank[m], k.row[m] - base, k.col[m], k.lane[m]] = data(
                k.src_out[m], k.src_sub[m], k.src_kcol[m], k.lane[m])

    def read(self, k: AccessKernel) -> np.ndarray:
        arr, base = self._arr(k.region, k.channel)
        return arr[k.bank, k.row - base, k.col, :]

    # -- MAC kernels ------------------------------------------------------------------------
    def run_mac(self, k: MacKernel, inputs):
        """Yield (outputs (banks, segs), sub (segs,), repeat r, values (banks, segs)) per pass.

        ``inputs(inp, r)`` returns the input vector (padded to whole columns) that input
        ``inp`` means in repeat ``r``."""
        arr, _ = self._arr(k.region, k.channel)
        v = self.g.values_per_column
        for r in range(k.repeats):
            for p in k.passes:
                gb = np.zeros((self.g.gb_slots, v), dtype=np.float32)
                for i in np.unique(p.gb_inp).tolist():
                    sel = p.gb_inp == i
                    vec = inputs(i, r).reshape(-1, v)
                    gb[p.gb_slot[sel]] = vec[p.gb_kcol[sel]]
                seg = p.seg
                n = seg["n"]
                starts = np.cumsum(n) - n
                colidx = np.arange(int(n.sum())) - np.repeat(starts, n) + np.repeat(seg["c0"], n)
                rowidx = np.repeat(seg["row"], n)
                prod = (arr[:, rowidx, colidx, :] * gb[colidx]).sum(axis=-1)  # MAC16 per column
                acc = np.add.reduceat(prod, starts, axis=1)                      # RDMAC16 per segment
                yield k.part.slot_out[:, seg["slot"]], seg["sub"], r, acc


def column_table(region: Region, tensor: np.ndarray, values: int) -> np.ndarray:
    """(outputs, subs, input columns, values) view of a region's tensor, zero-padded.

    ``tensor``: a linear weight as stored in the trace, the K cache (reserve, kv_heads,
    head_dim) or the V cache (kv_heads, head_dim, reserve)."""
    m = region.meta
    if region.kind == "linear":
        w = tensor.reshape(m["out_features"], m["in_features"]) if m["layout"] == "out_in" \
            else tensor.reshape(m["in_features"], m["out_features"]).T
        w = w[m["out_offset"]:m["out_offset"] + m["n_out"], m["in_offset"]:m["in_offset"] + m["in_len"]]
        w = w[:, None, :]
    elif region.kind == "kcache":
        w = tensor
    else:
        w = tensor.reshape(-1, 1, tensor.shape[-1])
    k = -(-w.shape[-1] // values) * values
    out = np.zeros(w.shape[:2] + (k,), dtype=np.float32)
    out[..., :w.shape[-1]] = w
    return out.reshape(w.shape[0], w.shape[1], k // values, values)


def pad(vec: np.ndarray, values: int, length: int | None = None) -> np.ndarray:
    n = length if length is not None else vec.size
    n = -(-n // values) * values
    out = np.zeros(max(n, vec.size), dtype=np.float32)
    out[:vec.size] = vec
    return out


def linear_output(f: Functional, kernels: list[MacKernel], x: np.ndarray, n_out: int) -> np.ndarray:
    """Run a linear op's kernels on input x; the ASIC adds the partial sums."""
    y = np.zeros(n_out, dtype=np.float64)
    v = f.g.values_per_column
    for k in (k for k in kernels if isinstance(k, MacKernel)):
        m = k.region.meta
        xin = pad(x[m["in_offset"]:m["in_offset"] + m["in_len"]], v)
        for outs, _sub, _r, acc in f.run_mac(k, lambda i, r, xin=xin: xin):
            ok = outs >= 0
            np.add.at(y, outs[ok] + m["out_offset"], acc[ok])
    return y


def scores(f: Functional, kernels: list[MacKernel], q: np.ndarray, kv_heads: int,
           n_valid: int) -> np.ndarray:
    """q: (q_heads, head_dim) -> s[h, position] for positions < n_valid (no scale)."""
    qh = q.shape[0]
    group = qh // kv_heads
    v = f.g.values_per_column
    qp = [pad(q[h], v) for h in range(qh)]
    s = np.zeros((qh, n_valid), dtype=np.float64)
    for k in (k for k in kernels if isinstance(k, MacKernel)):
        for outs, sub, r, acc in f.run_mac(k, lambda i, r: qp[i * group + r]):
            ok = (outs >= 0) & (outs < n_valid)
            h = np.broadcast_to(sub * group + r, outs.shape)
            np.add.at(s, (h[ok], outs[ok]), acc[ok])
    return s


def context(f: Functional, kernels: list[MacKernel], p: np.ndarray, kv_heads: int,
            head_dim: int, reserve: int) -> np.ndarray:
    """p: (q_heads, n_valid) probabilities by position slot -> o[h, d]."""
    qh = p.shape[0]
    group = qh // kv_heads
    v = f.g.values_per_column
    pp = [pad(p[h], v, reserve) for h in range(qh)]
    o = np.zeros((qh, head_dim), dtype=np.float64)
    for k in (k for k in kernels if isinstance(k, MacKernel)):
        for outs, _sub, r, acc in f.run_mac(k, lambda i, r: pp[i * group + r]):
            ok = outs >= 0
            h = (outs[ok] // head_dim) * group + r
            np.add.at(o, (h, outs[ok] % head_dim), acc[ok])
    return o
