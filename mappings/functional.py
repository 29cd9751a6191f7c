"""Functional proof of a mapping: run a program's data movement on numpy arrays (fp32).

Bank contents live in one array per (region, channel) of shape (banks, rows, columns,
values per column), filled with finite BF16 garbage first so that any read of a place the
mapping did not write shows up. Weights are stored through :meth:`Placement.elements`;
K/V positions either the same way or through the program's own write kernels. MAC kernels
are executed from their expanded command stream: TMOD toggles the mode (WRGB and RDMAC16
only in buffer mode, ACT16, MAC16 and PREA only in bank mode), each WRGB writes its slot of a
global buffer that starts with garbage and keeps its contents between loads, each MAC16
multiplies a column of every bank with the slot of the same index and adds into the result
register it selects (:meth:`MacKernel.mac_registers`), and the j-th RDMAC16 of a run of
read-outs reads (and clears) register j of every bank; a register is cleared by nothing
else, so segments that share a register across loads add up. Result number i of a repeat
belongs to the output :meth:`MacKernel.readouts` names (a segment, or with continued
accumulation a whole output); the ASIC side adds the values of each output.
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
            garbage = self.rng.uniform(-100, 100, shape).astype(np.float32)
            garbage.view(np.uint32)[...] &= np.uint32(0xFFFF0000)      # BF16 values
            self.mem[key] = garbage
        return self.mem[key], part.base_row

    # -- storing ----------------------------------------------------------------------------
    def _per_channel(self, region: Region, where: dict, keep):
        """(memory, base row, addresses) per channel of the addresses ``keep`` selects."""
        if keep is not None:
            sel = keep(where)
            where = {k: v[sel] for k, v in where.items()}
        for c in np.unique(where["ch"]).tolist():
            s = where["ch"] == c
            arr, base = self._arr(region, c)
            yield arr, base, {k: v[s] for k, v in where.items()}

    def store(self, region: Region, flat: np.ndarray, keep=None) -> None:
        """Store ``flat`` (the tensor in the element index space of ``Placement.elements``)."""
        for arr, base, e in self._per_channel(region, self.pl.elements(region), keep):
            arr[e["bank"], e["row"] - base, e["col"], e["lane"]] = flat[e["index"]]

    def store_columns(self, region: Region, table: np.ndarray, keep=None) -> None:
        """Store whole columns: ``table[out, sub, kcol]`` is the (values,) block of input
        columns ``kcol`` of output ``out`` (sub-output ``sub``), zero-padded."""
        for arr, base, c in self._per_channel(region, self.pl.columns(region), keep):
            arr[c["bank"], c["row"] - base, c["col"], :] = table[c["out"], c["sub"], c["kcol"]]

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
        """Yield (outputs (banks, reads), sub (reads,), repeat r, values (banks, reads)) per
        repeat, one column per RDMAC16 of the repeat.

        ``inputs(inp, r)`` returns the input vector (padded to whole columns) that input
        ``inp`` means in repeat ``r``."""
        from pimsim.standard import CMD_ID

        arr, base = self._arr(k.region, k.channel)
        v = self.g.values_per_column
        st = k.commands()
        per = st.cmd.size // k.repeats if k.repeats else 0
        w_inp, w_kc = k.gb_writes()
        regs_of_mac = k.mac_registers()
        ro = k.readouts()
        outs = k.part.slot_out[:, ro["slot"]]
        gb = self.rng.uniform(-100, 100, (self.g.gb_slots, v)).astype(np.float32)
        for r in range(k.repeats):
            sl = slice(r * per, (r + 1) * per)
            cmd, row, col = st.cmd[sl], st.row[sl], st.col[sl]
            _check_modes(cmd, k.name)
            pos = np.arange(cmd.size)
            wr = cmd == CMD_ID["WRGB"]
            mac = cmd == CMD_ID["MAC16"]
            rd = cmd == CMD_ID["RDMAC16"]
            if int(wr.sum()) != w_inp.size or int(mac.sum()) != regs_of_mac.size or \
                    int(rd.sum()) != ro["slot"].size:
                raise ValueError(f"{k.name}: stream and kernel plan disagree")
            # global buffer seen by each MAC16: the latest WRGB of its slot, else what the
            # buffer held before the repeat
            data = np.zeros((w_inp.size, v), dtype=np.float32)
            for i in np.unique(w_inp).tolist():
                sel = w_inp == i
                data[sel] = inputs(i, r).reshape(-1, v)[w_kc[sel]]
            m_pos, m_slot = pos[mac], col[mac]
            w_pos, w_slot = pos[wr], col[wr]
            last = _latest_before(w_slot, w_pos, m_slot, m_pos)
            gbv = gb[m_slot]
            if w_inp.size:
                gbv = np.where((last >= 0)[:, None], data[np.maximum(last, 0)], gbv)
            prod = (arr[:, row[mac] - base, m_slot, :] * gbv).sum(axis=-1)    # (banks, macs)
            # each MAC16 lands in the first later read of its register
            rd_pos = pos[rd]
            start_of = np.maximum.accumulate(np.where(rd & ~np.r_[False, rd[:-1]], pos, 0))
            rd_reg = (pos - start_of)[rd]                        # place in its run of RDMAC16
            which = _first_after(rd_reg, rd_pos, regs_of_mac, m_pos)
            if (which < 0).any():
                raise ValueError(f"{k.name}: a result register is never read out")
            acc = np.zeros((arr.shape[0], rd_pos.size), dtype=np.float32)
            np.add.at(acc.T, which, prod.T)
            if w_slot.size:                                     # what the buffer keeps
                _, back = np.unique(w_slot[::-1], return_index=True)
                keep = w_slot.size - 1 - back
                gb[w_slot[keep]] = data[keep]
            yield outs, ro["sub"], r, acc


def _check_modes(cmd: np.ndarray, name: str) -> None:
    """TMOD toggles bank mode (ACT16, MAC16, PREA) and buffer mode (WRGB, RDMAC16); a
    kernel starts and ends in bank mode."""
    from pimsim.standard import CMD_ID

    tm = cmd == CMD_ID["TMOD"]
    buffer_mode = (np.cumsum(tm) - tm) % 2 == 1      # mode in effect at each command
    buf_cmds = np.isin(cmd, [CMD_ID["WRGB"], CMD_ID["RDMAC16"]])
    bank_cmds = np.isin(cmd, [CMD_ID["ACT16"], CMD_ID["MAC16"], CMD_ID["PREA"]])
    if (~buffer_mode[buf_cmds]).any() or buffer_mode[bank_cmds].any() or int(tm.sum()) % 2:
        raise ValueError(f"{name}: a command issues in the wrong mode")


def _latest_before(ev_key, ev_pos, q_key, q_pos) -> np.ndarray:
    """Per query: index of the latest event with the same key and a smaller position, -1 if none."""
    if ev_key.size == 0:
        return np.full(q_key.size, -1, dtype=np.int64)
    big = int(max(ev_pos.max(initial=0), q_pos.max(initial=0))) + 1
    ek = ev_key.astype(np.int64) * big + ev_pos
    order = np.argsort(ek, kind="stable")
    i = np.searchsorted(ek[order], q_key.astype(np.int64) * big + q_pos) - 1
    ok = i >= 0
    hit = np.full(q_key.size, -1, dtype=np.int64)
    cand = order[np.maximum(i, 0)]
    ok &= ev_key[cand] == q_key
    hit[ok] = cand[ok]
    return hit


def _first_after(ev_key, ev_pos, q_key, q_pos) -> np.ndarray:
    """Per query: index of the first event with the same key and a larger position, -1 if none."""
    if ev_key.size == 0:
        return np.full(q_key.size, -1, dtype=np.int64)
    big = int(max(ev_pos.max(initial=0), q_pos.max(initial=0))) + 1
    ek = ev_key.astype(np.int64) * big + ev_pos
    order = np.argsort(ek, kind="stable")
    i = np.searchsorted(ek[order], q_key.astype(np.int64) * big + q_pos, side="right")
    hit = np.full(q_key.size, -1, dtype=np.int64)
    ok = i < ek.size
    cand = order[np.minimum(i, ek.size - 1)]
    ok &= ev_key[cand] == q_key
    hit[ok] = cand[ok]
    return hit


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
