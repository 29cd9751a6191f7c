"""The hardware emulation reference: the PyTorch model with PIM-GPT's arithmetic.

BF16 rounding of the operands makes logits depend on the exact FP32 bits before each
rounding: any two FP32 summation orders round a few values differently, and a transformer
spreads those one-ulp differences (any reordering of PyTorch's own sums moves GPT-2 small's
logits by about 0.5 % of their largest value). A comparison that is to prove the mapped
program computes the model therefore needs a reference that sums in the hardware's order.

:func:`hardware_logits` runs the Hugging Face model code (its modules, attention wiring,
RoPE and KV cache) with BF16 weights, and substitutes the arithmetic where the hardware's
differs from PyTorch's:

* every linear layer (and the LM head) multiplies the BF16-rounded input with the original
  weight tensor at matrix level (no bank arrays, no command streams): 16-lane products, the
  MAC unit's adder tree, FP32 accumulation over the input chunks of each read-out in the
  order the kernel plan lists them (:meth:`mappings.MacKernel.segments` and
  :meth:`~mappings.MacKernel.readouts`), then the partial sums added in arrival order;
* attention does the same with the BF16-rounded query, K, probabilities and V held by the
  model's own cache, then the ASIC's softmax;
* LayerNorm, RMSNorm and the activation use the ASIC's operators
  (:class:`pimsim.functional.asic.Asic`) with the same exact/approximate choice.

What it shares with the functional run is the plan's grouping and order of each reduction
and the ASIC's operator definitions; what it does not share is where values come from: the
functional run executes the command streams on bank arrays filled through the placement, so
a misplaced, missing or corrupted tile, a wrong global-buffer load or register schedule, a
dropped partial sum, or a wiring error in the trace interpreter shows up as a difference.
"""

from __future__ import annotations

import numpy as np

from pimsim.functional import asic as A

#: Name of the hardware attention function in transformers' AttentionInterface.
ATTENTION_NAME = "pimsim_hardware"


def readout_chunks(kernel) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """Per read-out of one repeat, in order: (slot, sub, inputs, input columns), the
    columns (16-lane chunks) accumulated into it in issue order, from the kernel plan."""
    seg = kernel.segments()
    ro = kernel.readouts()
    cols = [seg["k0"][i] + np.arange(seg["n"][i]) for i in range(seg["n"].size)]
    if not kernel.plan.accumulate:
        return [(int(seg["slot"][i]), int(seg["sub"][i]), np.full(cols[i].size, seg["inp"][i]),
                 cols[i]) for i in range(seg["n"].size)]
    out = []
    for slot, sub in zip(ro["slot"].tolist(), ro["sub"].tolist()):
        idx = np.flatnonzero((seg["slot"] == slot) & (seg["sub"] == sub))
        out.append((slot, sub, np.concatenate([np.full(seg["n"][i], seg["inp"][i]) for i in idx]),
                    np.concatenate([cols[i] for i in idx])))
    return out


def _tree16(p):
    """The MAC adder tree over the last axis (16 lanes), FP32."""
    while p.shape[-1] > 1:
        p = p[..., 0::2] + p[..., 1::2]
    return p[..., 0]


def _partials(w_chunks, x_chunks, valid):
    """Sequential FP32 accumulation of tree16(w * x) over axis 1 where ``valid``
    (``valid=None``: every chunk), starting from +0.

    ``numpy.add.accumulate`` adds in order (each running sum is an output), so it gives the
    left-to-right sums exactly. A skipped chunk adds +0 instead, which leaves every running
    sum unchanged: a sum that starts at +0 never becomes -0 under round-to-nearest."""
    import torch

    t = _tree16(w_chunks * x_chunks).detach()              # (P, L)
    if valid is not None:
        t = torch.where(valid, t, torch.zeros((), dtype=torch.float32))
    steps = np.empty((t.shape[1] + 1, t.shape[0]), dtype=np.float32)
    steps[0] = 0.0
    steps[1:] = t.numpy().T
    return torch.from_numpy(np.add.accumulate(steps, axis=0)[-1].copy())


def _ordered(n, index, vals):
    """y[i] = +0 + the values with index i, one by one in arrival order (FP32)."""
    import torch

    y = torch.zeros(n, dtype=torch.float32)
    if index.size == 0:
        return y
    order, idx, rank = A.arrival_ranks(index)
    v = vals[torch.from_numpy(order)]
    for k in range(int(rank.max()) + 1):
        sel = np.flatnonzero(rank == k)
        i = torch.from_numpy(idx[sel])
        y[i] = y[i] + v[torch.from_numpy(sel)]
    return y


class _Rows:
    """Partial-sum rows of MAC kernels in arrival order (kernel, repeat, read-out, bank)."""

    def __init__(self):
        self.parts = []             # (out, sub, rep, inp (rows, L), col (rows, L), valid)

    def add(self, kernel, keep=None):
        chunks = readout_chunks(kernel)
        if not chunks:
            return
        length = max(c.size for *_, c in chunks)
        inp = np.zeros((len(chunks), length), dtype=np.int64)
        col = np.zeros((len(chunks), length), dtype=np.int64)
        valid = np.zeros((len(chunks), length), dtype=bool)
        for i, (_, _, a, c) in enumerate(chunks):
            inp[i, :c.size], col[i, :c.size], valid[i, :c.size] = a, c, True
        slot = np.array([c[0] for c in chunks])
        sub = np.array([c[1] for c in chunks])
        outs = kernel.part.slot_out[:, slot].T                    # (read-outs, banks)
        ok = outs >= 0
        if keep is not None:
            ok &= keep(outs)
        ro = np.nonzero(ok)[0]                                  # read-out of each row
        for r in range(kernel.repeats):
            self.parts.append((outs[ok], sub[ro], np.full(ro.size, r), inp[ro], col[ro], valid[ro]))

    def arrays(self):
        """out, sub, rep (rows,) and inp, col, valid (rows, longest)."""
        length = max((p[3].shape[1] for p in self.parts), default=0)
        pad = lambda a: np.pad(a, ((0, 0), (0, length - a.shape[1])))  # noqa: E731
        cat = lambda i: np.concatenate([p[i] for p in self.parts])   # noqa: E731
        return (cat(0), cat(1), cat(2), np.concatenate([pad(p[3]) for p in self.parts]),
                np.concatenate([pad(p[4]) for p in self.parts]),
                np.concatenate([pad(p[5]) for p in self.parts]))


def _chunked(t, values: int, length: int):
    """(..., n) tensor zero-padded to ``length`` (a multiple of ``values``) -> (..., c, values)."""
    import torch

    pad = length - t.shape[-1]
    if pad:
        t = torch.nn.functional.pad(t, (0, pad))
    return t.reshape(*t.shape[:-1], length // values, values)


class _Hardware:
    """The substituted arithmetic of one model on one mapping (see the module docstring)."""

    def __init__(self, trace, mapping, exact):
        self.trace = trace
        self.mapping = mapping
        self.asic = A.Asic(exact)
        self.v = mapping.placement.geometry.values_per_column
        self.kv_len = 0
        self.by_op: dict[int, list] = {}
        self._linear_rows = {}

    def step(self, kv_len: int, token: int) -> None:
        from mappings import MacKernel

        self.kv_len = kv_len
        self.by_op = {}
        for k in self.mapping.program(kv_len, token).kernels():
            if isinstance(k, MacKernel):
                self.by_op.setdefault(k.op_index, []).append(k)

    def kernels(self, op_index):
        return self.by_op.get(op_index, [])

    # -- linear layers ------------------------------------------------------------------
    def linear(self, op, weight, bias, x):
        import torch

        a = op.attrs
        xb = _bf16(x.reshape(-1))
        if op.index not in self._linear_rows:          # weights are fixed: gather once
            w = weight if a["weight_layout"] == "out_in" else weight.t()      # (out, in)
            rows = []
            for k in self.kernels(op.index):
                r = _Rows()
                r.add(k)
                if not r.parts:
                    continue
                m = k.region.meta
                length = -(-m["in_len"] // self.v) * self.v
                wm = _chunked(w[m["out_offset"]:m["out_offset"] + m["n_out"],
                                m["in_offset"]:m["in_offset"] + m["in_len"]], self.v, length)
                out, _, _, _, col, valid = r.arrays()
                col_t = torch.from_numpy(col)
                wc = wm[torch.from_numpy(out)[:, None], col_t]
                if valid.all() and (col == col[:1]).all():      # one chunk order for all rows
                    col_t, valid = col_t[:1], None
                rows.append((m, length, wc, col_t,
                             None if valid is None else torch.from_numpy(valid),
                             out + m["out_offset"]))
            self._linear_rows[op.index] = rows
        idx, vals = [], []
        for m, length, wc, col, valid, out in self._linear_rows[op.index]:
            xm = _chunked(xb[m["in_offset"]:m["in_offset"] + m["in_len"]], self.v, length)
            vals.append(_partials(wc, xm[col], valid))
            idx.append(out)
        y = _ordered(a["out_features"], np.concatenate(idx), torch.cat(vals))
        if bias is not None:
            y = y + bias
        return y.reshape(*x.shape[:-1], -1)

    # -- attention ----------------------------------------------------------------------
    def attention(self, layer, query, key, value, scaling):
        """query (1, q_heads, 1, hd), key/value (1, kv_heads, n, hd) -> (1, 1, q_heads, hd)."""
        import torch

        att = self.mapping.placement.attention[layer]
        ops = self.trace.decode.layer_ops(layer)
        score_op = next(o for o in ops if o.op == "attn_score")
        ctx_op = next(o for o in ops if o.op == "attn_context")
        n = key.shape[2]
        if n != self.kv_len or query.shape[2] != 1 or n > att.reserve:
            raise ValueError(f"hardware attention: layer {layer}: expected one query over "
                             f"{self.kv_len} positions, got {tuple(query.shape)} over {n}")
        group = att.q_heads // att.kv_heads
        v = self.v
        q = _chunked(_bf16(query[0, :, 0]), v, -(-att.head_dim // v) * v)      # (qh, c, v)
        k = _chunked(_bf16(key[0]), v, -(-att.head_dim // v) * v)              # (kvh, n, c, v)
        rows = _Rows()
        for kern in self.kernels(score_op.index):
            rows.add(kern, keep=lambda o: o < n)
        out, sub, rep, inp, col, valid = rows.arrays()
        pos, sub_t = torch.from_numpy(out), torch.from_numpy(sub)
        head = torch.from_numpy(inp * group + rep[:, None])
        s = _partials(k[sub_t[:, None], pos[:, None], torch.from_numpy(col)],
                      q[head, torch.from_numpy(col)], torch.from_numpy(valid))
        s = _ordered(att.q_heads * n, (sub * group + rep) * n + out, s).reshape(att.q_heads, n)
        s = s * torch.tensor(score_op.attrs["scale"], dtype=torch.float32)
        p = A.values(self.asic.softmax(A.bits(s.numpy())))
        length = -(-att.reserve // v) * v
        pc = _chunked(_bf16(torch.from_numpy(p)), v, length)                   # (qh, c, v)
        vv = _chunked(_bf16(value[0].transpose(1, 2)), v, length)            # (kvh, hd, c, v)
        rows = _Rows()
        for kern in self.kernels(ctx_op.index):
            rows.add(kern)
        out, _, rep, inp, col, valid = rows.arrays()
        kvh, d = torch.from_numpy(out // att.head_dim), torch.from_numpy(out % att.head_dim)
        head = torch.from_numpy(inp * group + rep[:, None])
        o = _partials(vv[kvh[:, None], d[:, None], torch.from_numpy(col)],
                      pc[head, torch.from_numpy(col)], torch.from_numpy(valid))
        h = (out // att.head_dim) * group + rep
        o = _ordered(att.q_heads * att.head_dim, h * att.head_dim + out % att.head_dim, o)
        return o.reshape(1, 1, att.q_heads, att.head_dim)

    # -- ASIC operators -----------------------------------------------------------------
    def asic_op(self, op, weights, x):
        import torch

        a = op.attrs
        xb = A.bits(x.detach().reshape(-1, x.shape[-1]).numpy())
        if op.op == "layernorm":
            y = self.asic.layernorm(xb, A.bits(weights[a["weight"]]),
                                    A.bits(weights[a["bias"]]) if a["bias"] else None, a["eps"])
        elif op.op == "rmsnorm":
            y = self.asic.rmsnorm(xb, A.bits(weights[a["weight"]]), a["eps"])
        else:
            y = self.asic.activation(a["kind"], xb)
        return torch.from_numpy(A.values(y).copy()).reshape(x.shape)


def _bf16(t):
    """``t`` rounded to BF16 values, float32."""
    import torch

    return t.to(torch.bfloat16).to(torch.float32)


def hardware_logits(model, tokens: list[int], trace, mapping, exact=()) -> np.ndarray:
    """Logits (len(tokens), vocab) float32: teacher-forced incremental decoding of
    ``tokens`` by ``model`` (a transformers model; not modified) with BF16 weights and the
    hardware's arithmetic on ``mapping`` (see the module docstring). ``exact``: ASIC
    approximations replaced by exact functions, as in the functional run."""
    import torch
    from transformers import AttentionInterface, DynamicCache
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    from pimsim.functional.reference import _quiet, prepared_model

    hw = _Hardware(trace, mapping, exact)
    run = prepared_model(model, "bf16-weights")
    weights = {k: t.detach().numpy() for k, t in run.state_dict().items()}
    modules = dict(run.named_modules())
    for op in trace.decode.ops:
        if op.op in ("linear", "lm_head"):
            mod = modules[op.module]
            b = mod.bias if getattr(mod, "bias", None) is not None else None
            mod.forward = (lambda x, op=op, mod=mod, b=b: hw.linear(op, mod.weight, b, x))
        elif op.op in ("layernorm", "rmsnorm", "activation"):
            modules[op.module].forward = (lambda x, op=op: hw.asic_op(op, weights, x))

    def attention(module, query, key, value, attention_mask, scaling=None, **_kw):
        return hw.attention(module.layer_idx, query, key, value, scaling), None

    AttentionInterface.register(ATTENTION_NAME, attention)
    AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)
    with _quiet():
        run.set_attn_implementation(ATTENTION_NAME)
    cache = DynamicCache(config=run.config)
    rows = []
    with torch.no_grad(), _quiet():
        for pos, tok in enumerate(tokens):
            hw.step(pos + 1, int(tok))
            out = run(input_ids=torch.tensor([[int(tok)]]), cache=cache, use_cache=True)
            rows.append(out.logits[0, -1].to(torch.float32))
    return torch.stack(rows).numpy()
