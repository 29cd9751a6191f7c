"""Mappers: exact placement, capacity, programs, command counts, functional proof."""

from __future__ import annotations

import functools
import re
from collections import Counter

import networkx as nx
import numpy as np
import pytest

import mappings
import workloads
from mappings.functional import Functional, column_table, context, linear_output, scores
from mappings.program import AccessKernel, MacKernel, row_hit
from pimsim.config import load_preset
from pimsim.engine import check, issue, merge_log
from pimsim.standard import COMMANDS

pytestmark = pytest.mark.unit

STRATEGIES = sorted(mappings.STRATEGIES)
#: a die four times deeper (same channels and banks): room for the wasteful naive layout
BIG = ["organization.rows=65536"]


@functools.lru_cache(maxsize=None)
def trace(name):
    return workloads.load_bundled(name)


@functools.lru_cache(maxsize=None)
def spec(*overrides):
    return load_preset("pim-gpt", list(overrides))


@functools.lru_cache(maxsize=None)
def mapped(name, strategy="pim-gpt", max_context=None, overrides=()):
    return mappings.map(trace(name), spec(*overrides), strategy, max_context=max_context)


# --------------------------------------------------------------------------- placement


def _is_permutation(keys, n):
    """keys hold every integer 0..n-1 exactly once (O(n), no hashing)."""
    return keys.size == n and keys.min() >= 0 and keys.max() < n and \
        bool((np.bincount(keys, minlength=n) == 1).all())


def _cells(pl, ch, bank, row, col):
    g = pl.geometry
    assert ((0 <= ch) & (ch < g.channels)).all()
    assert ((0 <= bank) & (bank < g.banks)).all()
    assert ((0 <= row) & (row < g.rows)).all()
    assert ((0 <= col) & (col < g.columns)).all()
    return ((ch * g.banks + bank) * g.rows + row) * g.columns + col


@pytest.mark.parametrize("model,max_context,strategy,over",
                         [("gpt2-small", None, s, ()) for s in STRATEGIES] +
                         [("qwen2.5-0.5b", 512, "pim-gpt", ()),
                          ("qwen2.5-0.5b", 512, "pim-gpt", ("organization.channels=16",)),
                          ("gpt2-small", None, "pim-gpt", ("organization.channels=16",))])
def test_every_element_placed_once_no_overlap_in_range(model, max_context, strategy, over):
    m = mapped(model, strategy, max_context, tuple(BIG) if strategy == "naive" else over)
    pl = m.placement
    g = pl.geometry
    v = g.values_per_column
    cells = []
    # weight matrices: every (output, input column) exactly once over the weight's regions
    for w, regions in pl.by_weight.items():
        lin = pl.linears[w]
        kc = -(-lin.in_features // v)
        keys = []
        for r in regions:
            c = pl.columns(r)
            cells.append(_cells(pl, c["ch"], c["bank"], c["row"], c["col"]))
            first_col = r.meta["in_offset"] // v
            assert r.meta["in_offset"] % v == 0
            keys.append((c["out"] + r.meta["out_offset"]) * kc + c["kcol"] + first_col)
        assert _is_permutation(np.concatenate(keys), lin.out_features * kc), w
    # KV cache: every reserved (position, head, column) of K and (head, d, token column) of V
    for layer, (ks, vs) in pl.kv.items():
        att = pl.attention[layer]
        reserve = att.reserve
        assert reserve == (max_context or mappings.model_context(trace(model)))
        w = -(-att.head_dim // v)
        kk = np.concatenate([(lambda c: (c["out"] * att.kv_heads + c["sub"]) * w + c["kcol"])(
            pl.columns(r)) for r in ks])
        assert _is_permutation(kk, reserve * att.kv_heads * w)
        tc = -(-reserve // v)
        vv = np.concatenate([(lambda c: c["out"] * tc + c["kcol"])(pl.columns(r)) for r in vs])
        assert _is_permutation(vv, att.kv_heads * att.head_dim * tc)
        for r in ks + vs:
            c = pl.columns(r)
            cells.append(_cells(pl, c["ch"], c["bank"], c["row"], c["col"]))
    # dense tensors: every element once, columns of different tensors never shared
    for name in pl.dense:
        e = pl.dense_elements(name)
        n = int(np.prod(trace(model).weights[name]["shape"]))
        assert _is_permutation(e["index"], n), name
        cells.append(_cells(pl, e["ch"], e["bank"], e["row"], e["col"])[e["lane"] == 0])
    cells = np.sort(np.concatenate(cells))
    assert (np.diff(cells) > 0).all(), "two things share a column"
    # every parameter of the model is somewhere
    placed = sum(pl.linears[w].in_features * pl.linears[w].out_features for w in pl.by_weight)
    placed += sum(pl.dense_size(n) for n in pl.dense)
    assert placed == trace(model).parameters


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_element_lanes_are_exact(strategy):
    """Element level on one matrix and the K and V caches: the flat index of every stored
    element, once."""
    m = mapped("gpt2-small", strategy, None, tuple(BIG) if strategy == "naive" else ())
    pl = m.placement
    w = "transformer.h.0.attn.c_attn.weight"
    idx = np.concatenate([pl.elements(r)["index"] for r in pl.by_weight[w]])
    assert _is_permutation(idx, int(np.prod(trace("gpt2-small").weights[w]["shape"])))
    ks, vs = pl.kv[0]
    att = pl.attention[0]
    k = np.concatenate([pl.elements(r)["index"] for r in ks])
    assert _is_permutation(k, att.reserve * att.kv_heads * att.head_dim)
    vv = np.concatenate([pl.elements(r)["index"] for r in vs])
    assert _is_permutation(vv, att.reserve * att.kv_heads * att.head_dim)


def test_kv_reserve_follows_context_and_window():
    assert mapped("gpt2-small").placement.attention[0].reserve == trace("gpt2-small").config["n_positions"]
    assert mapped("gpt3-small").placement.attention[0].reserve == trace("gpt3-small").config["n_positions"]
    mis = mapped("mistral-7b", overrides=("organization.channels=32",))
    window = next(o["window"] for o in trace("mistral-7b").decode.ops if o.op == "attn_score")
    assert all(a.reserve == window for a in mis.placement.attention.values())
    # beyond the window the cache is a ring: every reserved key slot is live
    prog = mis.program(window + 100)
    ep = [a for a in prog.items(mappings.AsicOp) if a.kind == "score_epilogue"]
    assert ep and all(a.detail["kv_len"] == window for a in ep)


# --------------------------------------------------------------------------- capacity


def test_capacity_error_names_bytes_and_more_channels_fit():
    s = spec()
    d = s.dram
    per_channel = d.banks * d.rows * d.row_bytes
    with pytest.raises(mappings.CapacityError) as exc:
        mappings.map(trace("mistral-7b"), s)
    msg = str(exc.value)
    assert "\n" not in msg and "mistral-7b" in msg
    assert f"{per_channel} B available per channel" in msg
    need = int(re.search(r"needs (\d+) B", msg).group(1))
    total = int(re.search(r"all channels need (\d+) B", msg).group(1))
    assert need > per_channel
    assert total >= trace("mistral-7b").parameters * 2  # BF16 weights alone
    channels = -(-total // per_channel)                  # enough channels for the total
    assert msg.endswith(f"so at least {channels} channels of this size (organization.channels)")
    with pytest.raises(mappings.CapacityError):          # and no fewer
        mappings.map(trace("mistral-7b"), spec(f"organization.channels={channels - 1}"))
    channels = 1 << (channels - 1).bit_length()         # ... as a power of two
    m = mappings.map(trace("mistral-7b"), spec(f"organization.channels={channels}"))
    assert m.placement.rows_used.max() <= d.rows


def test_bad_requests():
    with pytest.raises(mappings.MappingError, match="unknown mapping strategy"):
        mappings.map(trace("gpt2-small"), spec(), "diagonal")
    with pytest.raises(mappings.MappingError, match="no PIM units"):
        mappings.map(trace("gpt2-small"), load_preset("gddr6-14000"))
    with pytest.raises(mappings.MappingError, match="exceeds the KV reserve"):
        mapped("gpt2-small").program(1025)


# --------------------------------------------------------------------------- programs


def test_program_is_a_dag_with_data_dependencies():
    m = mapped("gpt2-small")
    prog = m.program(50)
    G = prog.graph
    assert nx.is_directed_acyclic_graph(G)
    ops = {it.op_index for it in prog.items()}
    assert ops == {o.index for o in trace("gpt2-small").decode.ops}
    layer0 = trace("gpt2-small").decode.layer_ops(0)
    append_k = next(o.index for o in layer0 if o.op == "kv_append" and o["target"] == "k")
    score = next(o.index for o in layer0 if o.op == "attn_score")
    proj = next(o.index for o in layer0 if o.op == "linear")
    nodes = {n: d["item"] for n, d in G.nodes(data=True)}
    writes = {it.channel: n for n, it in nodes.items()
              if isinstance(it, AccessKernel) and it.op_index == append_k}
    assert len(writes) == 1                      # one key vector, written into one channel
    qkv = [n for n, it in nodes.items() if isinstance(it, MacKernel) and it.op_index == proj]
    score_kernels = {it.channel: n for n, it in nodes.items()
                     if isinstance(it, MacKernel) and it.op_index == score}
    assert set(writes) <= set(score_kernels)
    for ch, n in score_kernels.items():
        assert all(nx.has_path(G, q, n) for q in qkv)
        # a channel's score kernel waits for the key written into that channel only
        assert nx.has_path(G, writes[ch], n) if ch in writes else \
            not any(nx.has_path(G, w, n) for w in writes.values())
    # ASIC element counts follow the trace's shapes
    heads = next(o["heads"] for o in layer0 if o.op == "softmax")
    sm = [it for it in prog.items(mappings.AsicOp) if it.kind == "softmax"]
    assert len(sm) == trace("gpt2-small").num_layers and all(a.elements == heads * 50 for a in sm)
    # every byte a kernel moves is a transfer
    tb = prog.transfer_bytes()
    c = prog.counts()
    col = spec().dram.column_bytes
    assert tb["to_pim"] == (c["WRGB"] + c["WR"]) * col
    assert tb["to_asic"] == (c["RDMAC16"] + c["RD"]) * col
    assert [p.kv_len for p in m.prefill(3)] == [1, 2, 3]


def _sample_kernels(prog):
    picked, seen = [], set()
    for k in prog.kernels():
        acc = isinstance(k, MacKernel) and 1 < k.registers and len(_outputs_of(k)) <= k.registers
        key = (k.what, getattr(k, "target", "")[-7:], getattr(k, "repeats", 1), acc)
        if key not in seen:
            seen.add(key)
            picked.append(k)
    return picked


#: the AiM-like kernel (one result register, every load writes all its slots)
AIM_LIKE = ("pim.result_registers=1", "pim.gb_reuse=false")


@pytest.mark.parametrize("model,strategy,over", [
    ("gpt2-small", "pim-gpt", ()), ("qwen2.5-0.5b", "pim-gpt", ()), ("gpt2-small", "naive", ()),
    ("gpt2-small", "column", ()), ("gpt2-small", "pim-gpt", AIM_LIKE),
    ("gpt2-small", "pim-gpt", ("pim.result_registers=3",)),
    ("qwen2.5-0.5b", "pim-gpt", ("pim.result_registers=5", "pim.gb_reuse=false")),
    ("gpt2-small", "pim-gpt", ("organization.channels=16",)),
    ("gpt2-small", "pim-gpt", ("organization.channels=16",) + AIM_LIKE)])
def test_expanded_kernels_pass_the_engine_and_match_counts(model, strategy, over):
    over = tuple(over) + (tuple(BIG) if strategy == "naive" else ())
    m = mapped(model, strategy, 256, over)
    s = spec(*over)
    prog = m.program(100)
    kernels = _sample_kernels(prog)
    head = next(o.index for o in trace(model).decode.ops if o.op == "lm_head")
    kernels.append(next(k for k in prog.kernels() if k.op_index == head and k.what == "linear"))
    kinds = {(k.what, getattr(k, "target", "")) for k in kernels}
    assert {"linear", "score", "context", "read", "write"} <= {w for w, _ in kinds}
    refreshed = 0
    for k in kernels:
        stream = k.commands(s)
        counts = Counter(COMMANDS[c] for c in stream.cmd.tolist())
        assert dict(counts) == k.counts, k.name
        res = issue(s.dram, stream)                  # all-bank refresh on, as the preset says
        refreshed += res.counts["REFab"]
        cycles, log = merge_log(stream, res)
        assert check(s.dram, cycles, log) == [], k.name
    assert refreshed > 0                             # the lm_head kernel runs through refreshes


def test_row_hit_rate_definition():
    prog = mapped("gpt2-small").program(64)
    c = prog.counts()
    cols = c["MAC16"] + c.get("RD", 0) + c.get("WR", 0)
    acts = c["ACT16"] + c.get("ACT", 0)
    assert row_hit(c) == (cols, cols - acts)
    assert prog.row_hit_rate() == pytest.approx((cols - acts) / cols)


@pytest.mark.parametrize("model", ["gpt2-xl", "gpt3-xl"])
def test_pim_gpt_row_hit_rate_on_paper_models(model):
    ctx = mappings.model_context(trace(model))
    rates = {}
    for strategy in STRATEGIES:
        m = mapped(model, strategy, None, tuple(BIG) if strategy == "naive" else ())
        rates[strategy] = m.program(ctx).row_hit_rate()
    assert rates["pim-gpt"] >= 0.95
    # concatenated heads and filled rows beat per-head matrices padded to rows
    assert rates["naive"] < rates["pim-gpt"]


def _step_counts(prog, op_index):
    c = Counter()
    for k in prog.kernels():
        if k.op_index == op_index and k.what == "linear":
            c.update(k.counts)
    return c


def test_sliced_strategy_gives_each_channel_group_one_load_of_the_input():
    """GPT-2 medium, 8 channels, 64-slot buffer: the MLP's down projection (4096 inputs =
    256 columns = 4 loads) is cut into 4 slices, one per pair of channels, each holding its
    slice of all 1024 outputs; the 1024-wide inputs (one load) keep pim-gpt's layout. The
    sliced channels load a quarter of the input: 4x fewer WRGB for the same MAC16."""
    tr = trace("gpt2-medium")
    base, sliced = mapped("gpt2-medium"), mapped("gpt2-medium", "sliced")
    fc2 = next(o for o in tr.decode.layer_ops(0) if o.op == "linear" and o["in_features"] == 4096)
    fc1 = next(o for o in tr.decode.layer_ops(0) if o.op == "linear" and o["in_features"] == 1024
               and o["out_features"] == 4096)
    (region,) = sliced.placement.by_weight[fc2["weight"]]
    assert [p.channel for p in region.parts] == list(range(8))
    for p in region.parts:
        t = p.template
        assert int(t.k0.min()) == (p.channel // 2) * 64 and int((t.k0 + t.n).max()) == (p.channel // 2 + 1) * 64
        outs = p.slot_out[p.slot_out >= 0]
        assert outs.size == 1024 // 2 and (outs % 2 == p.channel % 2).all()   # half the outputs
    b, s = base.program(8), sliced.program(8)
    cb, cs = _step_counts(b, fc2.index), _step_counts(s, fc2.index)
    assert cs["MAC16"] == cb["MAC16"] and cs["WRGB"] * 4 == cb["WRGB"]
    assert _step_counts(s, fc1.index) == _step_counts(b, fc1.index)


@pytest.mark.parametrize("n_out", [1, 3, 2048])
def test_sliced_strategy_covers_every_output_input_column_once(n_out):
    """A 2048-wide input (2 loads) on 8 channels: 2 groups of 4 channels; with fewer
    outputs than a group's channels, the channels without one hold nothing."""
    from mappings.strategies import Geometry, Linear, SlicedStrategy

    g = Geometry(channels=8, banks=16, banks_per_bankgroup=4, rows=16384, columns=64,
                 column_bytes=32, values_per_column=16, gb_slots=64)
    (region,) = SlicedStrategy().linear_regions(g, Linear("w", 2048, n_out, "out_in", 0, "other", None))
    assert len(region.parts) == 2 * min(n_out, 4)
    seen = np.zeros((n_out, 128), dtype=np.int64)
    for p in region.parts:
        t = p.template
        for slot, k0, n in zip(t.slot.tolist(), t.k0.tolist(), t.n.tolist()):
            for o in p.slot_out[:, slot][p.slot_out[:, slot] >= 0].tolist():
                seen[o, k0:k0 + n] += 1
        assert t.k0.min() == (p.channel // 4) * 64 and (t.k0 + t.n).max() == (p.channel // 4 + 1) * 64
    assert (seen == 1).all()


# --------------------------------------------------------------------------- functional


FUNCTIONAL = [("gpt2-small", 7, 64), ("gpt2-medium", 20, 64), ("gpt3-small", 1030, 1100),
              ("qwen2.5-0.5b", 9, 64)]


def _by_op(prog):
    by_op = {}
    for k in prog.kernels():
        by_op.setdefault(k.op_index, []).append(k)
    return by_op


def _check_linear(f, tr, pl, by_op, op, rng):
    v = pl.geometry.values_per_column
    wt = rng.standard_normal(tr.weights[op["weight"]]["shape"]).astype(np.float32)
    for r in pl.by_weight[op["weight"]]:
        f.store_columns(r, column_table(r, wt, v))
    w = wt if op["weight_layout"] == "in_out" else wt.T
    x = rng.standard_normal(op["in_features"]).astype(np.float32)
    y = linear_output(f, by_op[op.index], x, op["out_features"])
    np.testing.assert_allclose(y, x.astype(np.float64) @ w, rtol=1e-4, atol=1e-4)


def _check_attention(f, tr, pl, by_op, kv_len, rng):
    v = pl.geometry.values_per_column
    ops = tr.decode.layer_ops(0)
    att = pl.attention[0]
    ks, vs = pl.kv[0]
    n = min(kv_len, att.reserve)
    new = (kv_len - 1) % att.reserve        # this step's position slot (a ring past the window)
    kc = rng.standard_normal((att.reserve, att.kv_heads, att.head_dim)).astype(np.float32)
    vc = rng.standard_normal((att.kv_heads, att.head_dim, att.reserve)).astype(np.float32)
    # earlier positions through the placement; this step's K and V through the program
    for r in ks:
        f.store_columns(r, column_table(r, kc, v),
                        keep=lambda c: (c["out"] < n) & (c["out"] != new))
    garbage = vc.copy()
    garbage[:, :, n:] = 1e3
    garbage[:, :, new] = 1e3
    for r in vs:
        f.store_columns(r, column_table(r, garbage, v))
    for op in ops:
        if op.op == "kv_append":
            for k in by_op[op.index]:
                if op["target"] == "k":
                    f.write(k, lambda o, s, c, lane: np.stack(
                        [kc[oi, si, v * ci:v * ci + v] for oi, si, ci in zip(o, s, c)]))
                else:
                    f.write(k, lambda o, s, c, lane: vc[o // att.head_dim, o % att.head_dim,
                                                        v * c + lane])
    q = rng.standard_normal((att.q_heads, att.head_dim)).astype(np.float32)
    score_op = next(o for o in ops if o.op == "attn_score")
    ctx_op = next(o for o in ops if o.op == "attn_context")
    s = scores(f, by_op[score_op.index], q, att.kv_heads, n)
    group = att.q_heads // att.kv_heads
    kx = kc[:n][:, np.arange(att.q_heads) // group, :].astype(np.float64)
    np.testing.assert_allclose(s, np.einsum("hd,jhd->hj", q.astype(np.float64), kx),
                               rtol=1e-4, atol=1e-4)
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p = (p / p.sum(axis=1, keepdims=True)).astype(np.float32)
    o = context(f, by_op[ctx_op.index], p, att.kv_heads, att.head_dim, att.reserve)
    vx = vc[np.arange(att.q_heads) // group][:, :, :n].astype(np.float64)
    np.testing.assert_allclose(o, np.einsum("hj,hdj->hd", p.astype(np.float64), vx),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("model,kv_len,reserve", FUNCTIONAL)
def test_functional_proof(model, kv_len, reserve, strategy):
    """Layer 0 of the program on random fp32 data reproduces x @ W and attention."""
    tr = trace(model)
    m = mapped(model, strategy, reserve, tuple(BIG) if strategy == "naive" else ())
    prog = m.program(kv_len)
    f = Functional(m, seed=1)
    rng = np.random.default_rng(2)
    by_op = _by_op(prog)
    for op in tr.decode.layer_ops(0):
        if op.op == "linear":
            _check_linear(f, tr, m.placement, by_op, op, rng)
    _check_attention(f, tr, m.placement, by_op, kv_len, rng)


def _v_rows(part, pl):
    """Per (row, piece start) of a V template: the slot and the token columns it holds."""
    t = part.template
    return {(int(r), int(c)): (int(s), int(k), int(n), int(h))
            for r, c, s, k, n, h in zip(t.row, t.c0, t.slot, t.k0, t.n, t.inp)}


def test_v_rows_shared_by_k_outputs_on_the_same_tokens():
    """R = 64: GPT-2 small (12 heads x 64 = 48 blocks of 16 outputs, 6 slots per channel:
    4 of one head, 2 of the next) with 600 positions (38 token columns). k = 4 outputs share
    a row, 16 columns (256 positions) each: 3 row blocks (16 + 16 + 6 columns), 2 rows per
    block for the 6 slots (8 sections of 16 columns); every piece of a row holds the same
    token columns, and a head keeps its sections in every row of the channel, so each block
    is one global-buffer load."""
    m = mapped("gpt2-small", "pim-gpt", 600)
    pl = m.placement
    for r in pl.kv[0][1]:
        assert r.meta["per_row"] == 4
        for part in r.parts:
            t = part.template
            assert t.n_slots == 6 and t.n_rows == 2 * 3
            rows = _v_rows(part, pl)
            assert sorted({c for _, c in rows}) == [0, 16, 32, 48]      # 4 sections of 16
            by_row = {}
            for (row, c0), (slot, k0, n, head) in rows.items():
                by_row.setdefault(row, []).append((c0, slot, k0, n, head))
            assert len(by_row) == 6
            sections = {}
            per_block = Counter()
            for row, pieces in by_row.items():
                assert len(pieces) <= 4
                assert len({(k0, n) for _, _, k0, n, _ in pieces}) == 1  # the same tokens
                k0, n = pieces[0][2], pieces[0][3]
                assert (k0, n) in {(0, 16), (16, 16), (32, 6)}
                per_block[k0] += len(pieces)
                for c0, _, _, _, head in pieces:
                    assert sections.setdefault(c0, head) == head         # one head each
            assert per_block == {0: 6, 16: 6, 32: 6}
            assert list(sections.values()).count(sections[0]) in (2, 3)  # 4 + 2 slots
            # every slot holds all 38 token columns once
            cover = Counter()
            for slot, k0, n, _ in rows.values():
                cover.update((slot, k) for k in range(k0, k0 + n))
            assert set(cover.values()) == {1} and len(cover) == 6 * 38
    for L, blocks in ((7, 1), (257, 2), (600, 3)):
        ks = [k for k in m.program(L).items(MacKernel)
              if k.what == "context" and k.region.layer == 0]
        for k in ks:
            assert len(k.passes) == blocks and k.counts["ACT16"] == 2 * blocks, (L, k.name)
            assert k.counts["MAC16"] == 6 * -(-L // 16)                 # 6 outputs' tokens


def test_v_rows_one_output_per_row_with_one_register():
    """R = 1 (override and the gddr6-aim preset): one output per row, 64 token columns
    (1024 positions) per row; 1100 positions are 69 columns, tiles of 64 and 5, and slot s
    holds tile i in row 2 s + i."""
    for m in (mapped("gpt3-small", "pim-gpt", 1100, AIM_LIKE),
              mappings.map(trace("gpt3-small"), load_preset("gddr6-aim"), max_context=1100)):
        for r in m.placement.kv[0][1]:
            assert r.meta["per_row"] == 1
            for part in r.parts:
                t = part.template
                tiles = [(0, 64), (64, 5)]
                want = {(s * 2 + i, 0): (s, k0, n) for s in range(t.n_slots)
                        for i, (k0, n) in enumerate(tiles)}
                assert {k: v[:3] for k, v in _v_rows(part, m.placement).items()} == want


def test_v_append_writes_k_outputs_per_activation():
    """The new V element of every (head, d) output is one lane (position mod 16) of one
    column; with R = 64 the outputs of one row block share a row: GPT-2 small's 6 slots per
    bank in 2 rows, so one ACT per 3 masked writes (R = 1: one per write)."""
    for over, per_act in (((), 3), (AIM_LIKE, 1)):
        m = mapped("gpt2-small", "pim-gpt", 600, over)
        for L in (1, 300, 600):
            prog = m.program(L)
            append = next(o.index for o in trace("gpt2-small").decode.layer_ops(0)
                          if o.op == "kv_append" and o["target"] == "v")
            ws = [k for k in prog.items(AccessKernel) if k.op_index == append]
            assert len(ws) == 8
            for k in ws:
                assert k.counts["WR"] == 16 * 6 and k.counts["ACT"] == 16 * 6 // per_act
                assert set(k.lane.tolist()) == {(L - 1) % 16}
                assert set(k.src_kcol.tolist()) == {(L - 1) // 16}


@pytest.mark.parametrize("registers", [64, 1])
@pytest.mark.parametrize("model,kv_len,reserve", [
    ("gpt2-small", 257, 600), ("gpt2-small", 513, 600), ("gpt3-small", 1030, 1100),
    ("qwen2.5-0.5b", 300, 320), ("llama-3.2-1b", 260, 300)])
def test_functional_proof_v_rows(model, kv_len, reserve, registers):
    """Attention of layer 0 with V rows shared by k = 4 outputs (R = 64) and one output per
    row (R = 1), at KV lengths whose new position opens a row block (256, 512), lies in a
    narrow last block (1029 of 1100) or in a GQA layout (Qwen2.5: one V slot per channel;
    LLaMA-3.2: four slots of one K/V head per channel)."""
    over = (f"pim.result_registers={registers}",)
    m = mapped(model, "pim-gpt", reserve, over)
    assert all(r.meta["per_row"] == (4 if registers > 1 else 1) for r in m.placement.kv[0][1])
    _check_attention(Functional(m, seed=21), trace(model), m.placement,
                     _by_op(m.program(kv_len)), kv_len, np.random.default_rng(22))


def test_functional_proof_sliding_window_ring():
    """Mistral-7B (window 4096, GQA 32/8) past its window: position L-1 goes to slot
    (L-1) mod 4096 in the middle of a V row block; every slot is live."""
    mis = mapped("mistral-7b", overrides=("organization.channels=32",))
    window = mis.placement.attention[0].reserve
    assert all(r.meta["per_row"] == 4 for r in mis.placement.kv[0][1])
    L = window + 300
    _check_attention(Functional(mis, seed=23), trace("mistral-7b"), mis.placement,
                     _by_op(mis.program(L)), L, np.random.default_rng(24))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_functional_proof_uneven_shapes(strategy):
    """Shapes that do not divide evenly: GPT2-XL's 25 heads (K tiles of 16 + 9 heads, 36
    columns wrapped) at a KV length that leaves banks with empty key slots, and GPT-2
    small's lm_head (50257 outputs: empty slots in some banks; on 16 channels its last 81
    outputs are cut into two slices)."""
    over = tuple(BIG) if strategy == "naive" else ()
    m = mapped("gpt2-xl", strategy, 256, over)
    _check_attention(Functional(m, seed=3), trace("gpt2-xl"), m.placement,
                     _by_op(m.program(150)), 150, np.random.default_rng(4))
    if strategy == "naive":
        return  # the naive lm_head is the pim-gpt one padded; its memory image is 4x larger
    op = next(o for o in trace("gpt2-small").decode.ops if o.op == "lm_head")
    for o in [over] + ([("organization.channels=16",)] if strategy == "pim-gpt" else []):
        m = mapped("gpt2-small", strategy, 64, o)
        _check_linear(Functional(m, seed=5), trace("gpt2-small"), m.placement,
                      _by_op(m.program(3)), op, np.random.default_rng(6))


@pytest.mark.parametrize("strategy,over,token", [(s, (), 12345) for s in STRATEGIES] + [
    # 16 channels: 50257 = 196 x 256 + 81; token 50256 is in the last round, cut in slices
    ("pim-gpt", ("organization.channels=16",), 50256)])
def test_embedding_read_returns_the_tied_rows(strategy, over, token):
    """The token lookup of a tied embedding reads exactly the lm_head output's columns."""
    m = mapped("gpt2-small", strategy, None, tuple(BIG) if strategy == "naive" else over)
    pl = m.placement
    prog = m.program(5, token=token)
    emb = next(o for o in trace("gpt2-small").decode.ops if o.op == "embedding" and o["role"] == "token")
    reads = [k for k in prog.kernels() if isinstance(k, AccessKernel) and k.op_index == emb.index]
    got = set()
    for k in reads:
        got |= {(k.channel, int(b), int(r), int(c)) for b, r, c in zip(k.bank, k.row, k.col)}
    want = set()
    for r in pl.by_weight[emb["weight"]]:
        c = pl.columns(r)
        s = c["out"] + r.meta["out_offset"] == token
        want |= set(zip(c["ch"][s].tolist(), c["bank"][s].tolist(), c["row"][s].tolist(),
                        c["col"][s].tolist()))
    assert got == want and len(want) == -(-emb["dim"] // pl.geometry.values_per_column)
    if over:   # 81 outputs need 6 channels per slice: 2 slices (of tiles 32 | 16), 2 channels
        assert len({ch for ch, *_ in want}) == 2


# --------------------------------------------------------------------------- last slot round


def _last_slot_columns(part, q):
    """{(input column, width)} of the pieces of slot q in a part's template."""
    t = part.template
    sel = t.slot == q
    return set(zip(t.k0[sel].tolist(), t.n[sel].tolist()))


#: GPT2-XL's 1600-output matrices: (channels, weight) -> (slot rounds q, tile widths, rows per
#: channel with a whole last round, rows of the fullest channel with the round cut).
#: Rows of a tile of width w holding k pieces: ceil(k w / 64).
#: attn.c_proj, K = 1600 (100 columns: 64 + 32 + 4); mlp.c_proj, K = 6400 (6 x 64 + 16).
#: 8 channels (U = 128): 1600 = 12 x 128 + 64; 64 outputs need 4 channels per slice: 2
#: slices. attn: 13 + 7 + 1 = 21 -> {64} | {32, 4}: 13 + 6 + 1 = 20 (and 12 + 7 + 1).
#: mlp: 13 x 6 + 4 = 82 -> {64 x 3, 16} | {64 x 3}: 12 x 6 + 3 + 4 = 79 (and 78).
#: 16 channels (U = 256): 1600 = 6 x 256 + 64, 4 slices fit. attn: 7 + 4 + 1 = 12 ->
#: {64} | {32, 4} (more slices cannot beat the 64-wide tile): 7 + 3 + 1 = 11.
#: mlp: 7 x 6 + 2 = 44 -> {64, 64} x 2 | {64, 16} | {64}: 6 x 6 + 2 + 2 = 40.
XL_LAST_ROUND = {
    (8, "attn"): (12, [64, 32, 4], 21, 20), (8, "mlp"): (12, [64] * 6 + [16], 82, 79),
    (16, "attn"): (6, [64, 32, 4], 12, 11), (16, "mlp"): (6, [64] * 6 + [16], 44, 40),
}


@pytest.mark.parametrize("channels", [8, 16])
def test_last_round_cut_into_balanced_slices_gpt2_xl(channels):
    """A partly filled last slot round is cut along the input into slices of whole tiles:
    every bank of a channel holds the same slice, the slices' column counts differ by at
    most one tile, every (output, input column) is stored once, the slices ride on the
    main outputs' loads, and the fullest channel needs fewer rows than with whole outputs."""
    from mappings.program import build_passes

    m = mapped("gpt2-xl", "pim-gpt", None, (f"organization.channels={channels}",))
    pl = m.placement
    g = pl.geometry
    U = g.channels * g.banks
    for kind in ("attn", "mlp"):
        q, widths, old_rows, new_rows = XL_LAST_ROUND[channels, kind]
        (region,) = pl.by_weight[f"transformer.h.0.{kind}.c_proj.weight"]
        n_out = region.meta["n_out"]
        r = n_out - q * U
        assert n_out == 1600 and 0 < r < U
        rows = region.rows_per_channel(g.channels)
        assert rows.max() == new_rows < old_rows, kind
        # tiles of a whole output, as (input column, width)
        starts = np.cumsum([0] + widths[:-1]).tolist()
        tiles = set(zip(starts, widths))
        held, extra_cols = {}, []
        for part in region.parts:
            so = part.slot_out
            assert so.shape[1] in (q, q + 1)
            for s in range(q):
                assert _last_slot_columns(part, s) == tiles
            if so.shape[1] == q:
                continue
            last = _last_slot_columns(part, q)
            assert last < tiles                      # a proper subset of whole tiles
            extra_cols.append(sum(w for _, w in last))
            outs = so[:, q][so[:, q] >= 0]
            assert (outs >= q * U).all() and np.unique(outs).size == outs.size
            for o in outs.tolist():
                held.setdefault(o, []).append(last)
            # the slot's pieces meet the same global-buffer loads as the main outputs'
            passes = build_passes(part.template, g.columns)
            assert len(passes) == len(widths)
            for p in passes:
                assert 0 in p.seg["slot"]
        assert max(extra_cols) - min(extra_cols) <= max(widths), kind
        # every remaining output: its slices partition its tiles
        assert sorted(held) == list(range(q * U, n_out))
        for o, sl in held.items():
            assert sum(len(a) for a in sl) == len(tiles) and set().union(*sl) == tiles, o
        # column level: every (output, input column) once
        c = pl.columns(region)
        kc = sum(widths)
        assert _is_permutation(c["out"] * kc + c["kcol"], n_out * kc)


@pytest.mark.parametrize("over,per_output", [(("pim.result_registers=64",), None),
                                             (AIM_LIKE, 3)])
def test_sliced_outputs_add_their_partial_sums(over, per_output):
    """Qwen2.5-0.5B on 16 channels (U = 256): q_proj has 896 = 3 x 256 + 128 outputs, K =
    896 (56 columns: tiles 32 + 16 + 8); 128 outputs need 8 channels per slice, so 2
    slices ({32} | {16, 8}). With registers each remaining output is read out once per
    slice: 896 + 128 values; with one register every tile's segment: 896 x 3. The layer's
    linears are exact from the command streams."""
    over = ("organization.channels=16",) + over
    tr = trace("qwen2.5-0.5b")
    m = mapped("qwen2.5-0.5b", "pim-gpt", 64, over)
    prog = m.program(9)
    layer0 = {o.index: o for o in tr.decode.layer_ops(0)}
    q_op = next(o for o in layer0.values() if o.op == "linear" and "q_proj" in o["weight"])
    (region,) = m.placement.by_weight[q_op["weight"]]
    assert [len(a) for a in region.meta["last_slices"]] == [1, 2]
    ep = next(a for a in prog.items(mappings.AsicOp)
              if a.kind == "vmm_epilogue" and a.op_index == q_op.index)
    want = 896 * per_output if per_output else 896 + 128
    assert ep.detail["partial_sums"] == want
    assert ep.elements == want - 896 + 896 * bool(q_op["bias"])
    f, rng, by_op = Functional(m, seed=31), np.random.default_rng(32), _by_op(prog)
    sliced = 0
    for op in layer0.values():
        if op.op == "linear":
            sliced += m.placement.by_weight[op["weight"]][0].meta["last_slices"] is not None
            _check_linear(f, tr, m.placement, by_op, op, rng)
    assert sliced == 5          # q, k, v (128 outputs: slices only), o, down projections
    _check_attention(f, tr, m.placement, by_op, 9, rng)


def _reference_commands(k: MacKernel):
    """Plain-loop twin of the AiM-like MacKernel.commands (one result register, every load
    writes all its slots; docs/mapping.md, 'Kernels')."""
    out = []
    for _ in range(k.repeats):
        for p in k.passes:
            out += [("TMOD", -1, -1)] + [("WRGB", -1, int(s)) for s in p.gb_slot] + [("TMOD", -1, -1)]
            rows = p.seg["row"].tolist()
            for i, r in enumerate(rows):
                r_abs = r + k.part.base_row
                if i == 0 or rows[i - 1] != r:
                    out.append(("ACT16", r_abs, -1))
                c0, n = int(p.seg["c0"][i]), int(p.seg["n"][i])
                out += [("MAC16", r_abs, c) for c in range(c0, c0 + n)]
                if i + 1 == len(rows) or rows[i + 1] != r:
                    out.append(("PREA", -1, -1))
                out += [("TMOD", -1, -1), ("RDMAC16", -1, -1), ("TMOD", -1, -1)]
    return out


def _outputs_of(k: MacKernel) -> list[tuple[int, int]]:
    """The distinct (slot, sub) outputs of one repeat's segments, ascending."""
    return sorted({(int(s), int(b)) for p in k.passes
                   for s, b in zip(p.seg["slot"], p.seg["sub"])})


class _Twin:
    """Command list of a plain-loop twin. With ``hoist`` (R > 1 result registers) an ACT16
    that directly follows a buffer-mode stretch (adjacent TMOD ... TMOD blocks: a load, a
    read-out batch) goes just before the stretch's first TMOD (docs/mapping.md, 'Result
    registers'); a repeat starts a new stretch."""

    def __init__(self, hoist: bool):
        self.out, self.hoist, self.stretch = [], hoist, None

    def repeat(self):
        self.stretch = None

    def block(self, cmds):
        if self.stretch is None:
            self.stretch = len(self.out)
        self.out += cmds

    def bank(self, c):
        if c[0] == "ACT16" and self.hoist and self.stretch is not None:
            self.out.insert(self.stretch, c)
        else:
            self.out.append(c)
        self.stretch = None


def _reference_accumulated(k: MacKernel, reuse: bool, hoist: bool = True):
    """Plain-loop twin of continued accumulation (docs/mapping.md, 'Result registers'):
    output number i (ascending (slot, sub)) owns register i for the whole repeat; loads
    carry no read-out; one read-out of every output ends the repeat. ``hoist=False``: the
    order before activations were moved ahead of buffer mode."""
    rank = {o: i for i, o in enumerate(_outputs_of(k))}
    tw, regs = _Twin(hoist and k.registers > 1), []
    for _ in range(k.repeats):
        tw.repeat()
        held = {}
        for p in k.passes:
            want = {int(s): (int(i), int(c)) for s, i, c in zip(p.gb_slot, p.gb_inp, p.gb_kcol)}
            write = [s for s in p.gb_slot.tolist() if not reuse or held.get(s) != want[s]]
            held.update({s: want[s] for s in write})
            if write or not reuse:
                tw.block([("TMOD", -1, -1)] + [("WRGB", -1, s) for s in write] + [("TMOD", -1, -1)])
            rows = p.seg["row"].tolist()
            for i, r in enumerate(rows):
                r_abs = r + k.part.base_row
                if i == 0 or rows[i - 1] != r:
                    tw.bank(("ACT16", r_abs, -1))
                c0, n = int(p.seg["c0"][i]), int(p.seg["n"][i])
                for c in range(c0, c0 + n):
                    tw.bank(("MAC16", r_abs, c))
                regs += [rank[(int(p.seg["slot"][i]), int(p.seg["sub"][i]))]] * n
                if i + 1 == len(rows) or rows[i + 1] != r:
                    tw.bank(("PREA", -1, -1))
        tw.block([("TMOD", -1, -1)] + [("RDMAC16", -1, -1)] * len(rank) + [("TMOD", -1, -1)])
    return tw.out, regs


def _reference_batched(k: MacKernel, registers: int, reuse: bool, hoist: bool = True):
    """Plain-loop twin with R result registers and optional buffer reuse (docs/mapping.md,
    'Result registers'): returns (commands, register of each MAC16). ``hoist=False``: the
    order before activations were moved ahead of buffer mode."""
    if registers > 1 and len(_outputs_of(k)) <= registers:
        return _reference_accumulated(k, reuse, hoist)
    tw, regs = _Twin(hoist and registers > 1), []
    for _ in range(k.repeats):
        tw.repeat()
        held, pending = {}, 0
        for p in k.passes:
            want = {int(s): (int(i), int(c)) for s, i, c in zip(p.gb_slot, p.gb_inp, p.gb_kcol)}
            write = [s for s in p.gb_slot.tolist() if not reuse or held.get(s) != want[s]]
            held.update({s: want[s] for s in write})
            if write or not reuse:
                tw.block([("TMOD", -1, -1)] + [("RDMAC16", -1, -1)] * pending +
                         [("WRGB", -1, s) for s in write] + [("TMOD", -1, -1)])
                pending = 0
            rows = p.seg["row"].tolist()
            for i, r in enumerate(rows):
                r_abs = r + k.part.base_row
                if i == 0 or rows[i - 1] != r:
                    tw.bank(("ACT16", r_abs, -1))
                c0, n = int(p.seg["c0"][i]), int(p.seg["n"][i])
                for c in range(c0, c0 + n):
                    tw.bank(("MAC16", r_abs, c))
                regs += [pending] * n
                pending += 1
                if i + 1 == len(rows) or rows[i + 1] != r:
                    tw.bank(("PREA", -1, -1))
                if pending == registers:
                    tw.block([("TMOD", -1, -1)] + [("RDMAC16", -1, -1)] * pending +
                             [("TMOD", -1, -1)])
                    pending = 0
        if pending:
            tw.block([("TMOD", -1, -1)] + [("RDMAC16", -1, -1)] * pending + [("TMOD", -1, -1)])
    return tw.out, regs


def _listed(k: MacKernel):
    st = k.commands()
    return [(COMMANDS[c], int(r), int(col)) for c, r, col in zip(st.cmd, st.row, st.col)]


@pytest.mark.parametrize("model,kv_len", [("qwen2.5-0.5b", 70), ("gpt2-small", 100)])
def test_one_register_stream_is_the_aim_stream(model, kv_len):
    """result_registers 1 without buffer reuse (and the gddr6-aim preset) expands to the
    AiM-like stream: read-out after every segment, TMOD = 2 x (passes + segments)."""
    for m in (mapped(model, "pim-gpt", 256, AIM_LIKE),
              mappings.map(trace(model), load_preset("gddr6-aim"), max_context=256)):
        assert (m.placement.geometry.result_registers, m.placement.geometry.gb_reuse) == (1, False)
        macs = [k for k in m.program(kv_len).kernels() if isinstance(k, MacKernel)]
        for k in {(k.what, k.repeats): k for k in macs}.values():
            assert _listed(k) == _reference_commands(k), k.name
        for k in macs:
            segs = sum(p.n_segments for p in k.passes)
            assert k.counts["TMOD"] == 2 * k.repeats * (len(k.passes) + segs), k.name
            assert k.counts["WRGB"] == k.repeats * sum(p.gb_slot.size for p in k.passes)


@pytest.mark.parametrize("registers,reuse", [(64, True), (3, True), (2, False)])
def test_kernel_expansion_equals_plain_loop_twin(registers, reuse):
    over = (f"pim.result_registers={registers}", f"pim.gb_reuse={str(reuse).lower()}")
    prog = mapped("qwen2.5-0.5b", "pim-gpt", 256, over).program(70)
    macs = [k for k in prog.kernels() if isinstance(k, MacKernel)]
    assert {k.repeats for k in macs} > {1}                 # GQA kernels are among them
    # one kernel per kind, per repeat count and per read-out form (accumulated or batched)
    acc = lambda k: len(_outputs_of(k)) <= registers       # noqa: E731
    picked = {(k.what, k.repeats, acc(k)): k for k in macs}
    assert {(w, a) for w, _, a in picked} >= {("linear", True), ("linear", False)}
    assert any(len(k.passes) > 1 for (_, _, a), k in picked.items() if a)
    for k in picked.values():
        want, regs = _reference_batched(k, registers, reuse)
        assert _listed(k) == want, k.name
        assert k.mac_registers().tolist() == regs[:len(regs) // k.repeats], k.name
        assert max(regs) < registers
    # a linear with 896 inputs (56 columns < one 64-slot load): the input is cut into pieces
    # of 32, 16 and 8 columns (widths that divide the row); the pieces of one width sit at
    # multiples of it, so each width is one load of the tile repeated across all 64 slots
    k = next(k for k in macs if k.what == "linear")
    d = spec().dram
    kc = -(-k.region.meta["in_len"] // (d.column_bytes // 2))
    assert kc == 56 and len(k.passes) == 3
    m = k.part.template.n_slots   # outputs per bank: a tile's pieces fill m x width columns
    for p, (first, width) in zip(k.passes, [(0, 32), (32, 16), (48, 8)]):
        used = min(d.gb_slots, m * width)
        assert p.gb_slot.tolist() == list(range(used))
        assert p.gb_kcol.tolist() == [first + s % width for s in range(used)]


def _stream(listed):
    from pimsim.engine import CommandStream

    cmd, row, col = (np.array(a, dtype=np.int64) for a in
                     zip(*[(COMMANDS.index(c), r, x) for c, r, x in listed]))
    neg = np.full(cmd.size, -1, dtype=np.int64)
    return CommandStream(cmd, neg, neg.copy(), row, col)


def test_activation_hides_buffer_mode_with_registers():
    """R > 1: the ACT16 that opens the row after a global-buffer load or a read-out batch
    goes just before the block's opening TMOD, so nRCDRDMAC runs while the buffer is loaded
    or the registers are read (docs/mapping.md, 'Result registers'). Only the order changes
    (counts equal the analytic ones), the stream stays protocol-clean and exact, and the
    engine issues it in fewer cycles than the old order (ACT16 after the closing TMOD)."""
    s = spec("refresh.policy=off").dram
    # (a) the toy linear (2 outputs, 2 registers: accumulated), command by command
    m, region, k = _toy_linear(("pim.result_registers=2", "pim.gb_reuse=false"))
    assert k.part.base_row == 0 and [p.rows.tolist() for p in k.passes] == [[0, 2, 3], [1]]
    T, P, A = ("TMOD", -1, -1), ("PREA", -1, -1), "ACT16"
    W = lambda *cs: [("WRGB", -1, c) for c in cs]                           # noqa: E731
    M = lambda r, *cs: [("MAC16", r, c) for c in cs]                        # noqa: E731
    want = [(A, 0, -1), T, *W(0, 1, 2, 3, 4, 5), T, *M(0, 0, 1, 2, 3), P,   # load 1 + row 0
            (A, 2, -1), *M(2, 2, 3), P, (A, 3, -1), *M(3, 4, 5), P,
            (A, 1, -1), T, *W(0, 1, 2, 3), T, *M(1, 0, 1, 2, 3), P,         # load 2 + row 1
            T, ("RDMAC16", -1, -1), ("RDMAC16", -1, -1), T]
    assert _listed(k) == want
    assert _listed(k) == _reference_batched(k, 2, False)[0]
    old = _reference_batched(k, 2, False, hoist=False)[0]
    # the former order: ACT16 after each load's closing TMOD
    assert old[:9] == want[1:9] + want[:1] and old[22:29] == want[23:29] + want[22:23]
    assert Counter(c for c, _, _ in old) == Counter(c for c, _, _ in want) == \
        Counter({c: v for c, v in k.counts.items() if v})
    # (b) fewer cycles, both orders protocol-clean
    st, st_old = k.commands(), _stream(old)
    res, res_old = issue(s, st), issue(s, st_old)
    assert check(s, *merge_log(st, res)) == [] and check(s, *merge_log(st_old, res_old)) == []
    assert res.last_cycle < res_old.last_cycle
    # a batched kernel (GPT-2 small's lm_head: more outputs than R = 64): the ACT16 after a
    # full batch precedes the batch's TMOD; no ACT16 directly follows a TMOD anywhere
    prog = mapped("gpt2-small").program(100)
    tm, act, rd = (COMMANDS.index(c) for c in ("TMOD", "ACT16", "RDMAC16"))
    batched = 0
    for k in prog.items(MacKernel):
        assert k.registers == 64
        cmd = k.commands().cmd
        a = np.flatnonzero(cmd == act)
        assert (cmd[a[a > 0] - 1] != tm).all(), k.name
        before = a[a + 2 < cmd.size]
        hidden = (cmd[before + 1] == tm) & (cmd[before + 2] == rd)
        if len(_outputs_of(k)) > 64:
            assert hidden.any(), k.name
            if batched == 0:
                want, _ = _reference_batched(k, 64, True)
                assert _listed(k) == want, k.name
                st, st_old = k.commands(), _stream(_reference_batched(k, 64, True, hoist=False)[0])
                res, res_old = issue(s, st), issue(s, st_old)
                assert check(s, *merge_log(st, res)) == [], k.name
                assert res.last_cycle < res_old.last_cycle, k.name
            batched += 1
    assert batched == 8


def test_result_registers_cut_mode_changes_and_read_outs():
    """More registers: the same MAC16, ACT16, WRGB and PREA in the weight and K kernels (the
    V cache shares rows between outputs with R > 1: the same MAC16, fewer ACT16). A kernel
    with more outputs than R reads one value per segment and needs two TMOD per load plus
    two per batch of R (every load reads what is pending, the last pass's remainder is read
    at the end); one with at most R outputs (R > 1) reads one value per output and needs
    two TMOD per load plus two."""
    progs = {r: mapped("gpt2-small", "pim-gpt", None, (f"pim.result_registers={r}",
                                                     "pim.gb_reuse=false")).program(100)
             for r in (1, 3, 64)}
    c = {r: p.counts() for r, p in progs.items()}
    ops = {r: p.by_op() for r, p in progs.items()}
    col = spec().dram.column_bytes
    for r in (3, 64):
        for what in ("linear", "score"):
            for cmd in ("MAC16", "ACT16", "WRGB", "PREA"):
                assert ops[r][what][cmd] == ops[1][what][cmd], (r, what, cmd)
        assert ops[r]["context"]["MAC16"] == ops[1]["context"]["MAC16"]
        assert ops[r]["context"]["ACT16"] < ops[1]["context"]["ACT16"]
        assert ops[r]["write"]["WR"] == ops[1]["write"]["WR"]
        assert ops[r]["write"]["ACT"] < ops[1]["write"]["ACT"]
        assert progs[r].transfer_bytes()["to_pim"] == (c[r]["WRGB"] + c[r]["WR"]) * col
        assert progs[r].transfer_bytes()["to_asic"] == (c[r]["RDMAC16"] + c[r]["RD"]) * col
    assert c[1]["TMOD"] > c[3]["TMOD"] > c[64]["TMOD"]
    assert c[1]["RDMAC16"] == sum(k.repeats * sum(p.n_segments for p in k.passes)
                                  for k in progs[1].items(MacKernel))
    assert c[1]["RDMAC16"] > c[64]["RDMAC16"]
    forms = Counter()
    for r in (3, 64):
        for k in progs[r].items(MacKernel):
            n = [p.n_segments for p in k.passes]
            outputs = len(_outputs_of(k))
            if outputs <= r:
                forms[r, "accumulated"] += 1
                assert k.counts["RDMAC16"] == k.repeats * outputs, k.name
                assert k.counts["TMOD"] == 2 * k.repeats * (len(n) + 1), k.name
            else:
                forms[r, "batched"] += 1
                assert k.counts["RDMAC16"] == k.repeats * sum(n), k.name
                want = len(n) + sum(x // r for x in n) + (n[-1] % r > 0)
                assert k.counts["TMOD"] == 2 * k.repeats * want, k.name
    # GPT-2 small: with 64 registers every kernel but the lm_head's accumulates (the score
    # kernels at kv_len 100: one key slot x 12 heads per bank); with 3 none does
    assert forms[64, "batched"] == 8 and forms[64, "accumulated"] > 0
    assert forms[3, "accumulated"] == 0


def test_accumulated_outputs_leave_no_partial_sums_to_the_asic():
    """With every output in a register of its own, each value read out is a whole output:
    the epilogues add only bias or scale. Useful MACs do not depend on R."""
    progs = {r: mapped("gpt2-small", "pim-gpt", None, (f"pim.result_registers={r}",)).program(100)
             for r in (1, 64)}
    assert progs[1].mac_utilization() == progs[64].mac_utilization()
    kernels = {r: {k.name: k for k in p.items(MacKernel)} for r, p in progs.items()}
    by_op = {}
    for k in progs[64].items(MacKernel):
        by_op.setdefault(k.op_index, []).append(k)
        assert k.useful_macs() == kernels[1][k.name].useful_macs(), k.name
        so = k.part.slot_out
        real = (so >= 0) & (so < (k.out_limit if k.out_limit is not None else so.max() + 1))
        if len(_outputs_of(k)) <= 64:
            # values read out holding a real output: banks whose slot holds one, per output
            want = sum(int(real[:, s].sum()) for s, _ in _outputs_of(k))
        else:
            want = sum(int(real[:, p.seg["slot"]].sum()) for p in k.passes)
        assert k.partial_sums() == k.repeats * want, k.name
    epilogues = [a for a in progs[64].items(mappings.AsicOp) if a.kind.endswith("_epilogue")]
    assert {a.kind for a in epilogues} == {"vmm_epilogue", "score_epilogue", "context_epilogue"}
    for a in epilogues:
        ks = by_op[a.op_index]
        if all(len(_outputs_of(k)) <= 64 for k in ks):
            assert a.detail["partial_sums"] == a.detail["outputs"], a.name
            assert a.elements == (a.detail["outputs"] if a.detail.get("bias") or
                                  a.kind == "score_epilogue" else 0), a.name
        else:                                       # the lm_head: one value per segment
            assert a.detail["partial_sums"] > a.detail["outputs"], a.name


def test_cli_map_summary(capsys):
    import argparse

    from pimsim.cli import map as cli_map

    parser = argparse.ArgumentParser()
    cli_map.add_parser(parser.add_subparsers())
    args = parser.parse_args(["map", "gpt2-small", "--kv-len", "64", "--strategy", "all",
                              "--set", "organization.rows=65536"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert out.count("row-hit rate") == len(STRATEGIES)
    args = parser.parse_args(["map", "mistral-7b"])
    with pytest.raises(mappings.CapacityError):
        args.func(args)


def test_mapping_doc_examples_are_true(capsys):
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "mapping.md").read_text()
    for code in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        exec(compile(code, "docs/mapping.md", "exec"), {})
    assert capsys.readouterr().out.strip()
    with pytest.raises(mappings.CapacityError) as exc:
        mappings.map(trace("mistral-7b"), spec())
    assert str(exc.value) in text


def test_functional_proof_small_global_buffer():
    """A 1 KB global buffer (32 slots) serves only columns 0..31 of a row: layouts use half
    rows, loads never touch a slot that does not exist, results stay exact."""
    over = ("pim.global_buffer_bytes=1024",)
    m = mapped("gpt2-small", "pim-gpt", 64, over)
    prog = m.program(7)
    slots = spec(*over).dram.gb_slots
    macs = list(prog.items(MacKernel))
    assert all(int(p.gb_slot.max()) < slots and int(p.seg["c0"].max() + 1) <= slots
               for k in macs for p in k.passes)
    f, rng, by_op = Functional(m, seed=7), np.random.default_rng(8), _by_op(prog)
    for op in trace("gpt2-small").decode.layer_ops(0):
        if op.op == "linear":
            _check_linear(f, trace("gpt2-small"), m.placement, by_op, op, rng)
    _check_attention(f, trace("gpt2-small"), m.placement, by_op, 7, rng)


@pytest.mark.parametrize("over", [("pim.result_registers=64",), ("pim.result_registers=3",),
                                  ("pim.result_registers=3", "pim.gb_reuse=false"), AIM_LIKE])
def test_functional_proof_result_registers(over):
    """GPT-2 small layer 0 with R result registers (64, and an odd 3), executed from the
    command stream: batched read-outs return every segment's own sum."""
    m = mapped("gpt2-small", "pim-gpt", 64, over)
    assert m.placement.geometry.result_registers == int(over[0].split("=")[1])
    prog = m.program(7)
    f, rng, by_op = Functional(m, seed=11), np.random.default_rng(12), _by_op(prog)
    for op in trace("gpt2-small").decode.layer_ops(0):
        if op.op == "linear":
            _check_linear(f, trace("gpt2-small"), m.placement, by_op, op, rng)
    _check_attention(f, trace("gpt2-small"), m.placement, by_op, 7, rng)


def _toy_linear(over):
    """One channel's linear region of 6 input columns x 2 slots whose second load shares
    slots 0, 1 with the first (slots 2, 3 change)."""
    from mappings.layout import ChannelPart, Region, segments_from_pieces
    from mappings.program import MacKernel as MK
    from mappings.program import build_passes

    m = mapped("gpt2-small", "pim-gpt", 64, over)
    g = m.placement.geometry
    C = g.columns
    #        slot kcol width (row, c0)
    pieces = [(0, 0, 4, 0, 0), (1, 0, 2, 1, 0), (0, 4, 2, 1, 2), (1, 2, 2, 2, 2), (1, 4, 2, 3, 4)]
    slot, k0, w, row, c0 = (np.array(a) for a in zip(*pieces))
    t = segments_from_pieces(C, slot, 0 * slot, 0 * slot, k0, w, row * C + c0, 4, 2)
    n_out = 2 * g.banks
    so = np.arange(n_out).reshape(g.banks, 2)
    region = Region("toy", "linear", 0, [ChannelPart(0, 0, t, so)],
                    dict(out_features=n_out, in_features=6 * g.values_per_column, layout="out_in",
                         out_offset=0, n_out=n_out, in_offset=0, in_len=6 * g.values_per_column))
    passes = build_passes(t, C)
    k = MK("toy", 0, "linear", region, region.parts[0], passes, 1, -1, None,
           g.result_registers, g.gb_reuse)
    return m, region, k


@pytest.mark.parametrize("over", [("pim.result_registers=3",), AIM_LIKE])
def test_buffer_reuse_writes_changed_slots_only_and_stays_exact(over):
    m, region, k = _toy_linear(over)
    reuse = m.placement.geometry.gb_reuse
    assert [p.gb_slot.tolist() for p in k.passes] == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3]]
    assert k.counts["WRGB"] == (6 + 2 if reuse else 6 + 4)
    st = k.commands()
    assert st.col[st.cmd == COMMANDS.index("WRGB")].tolist() == \
        ([0, 1, 2, 3, 4, 5, 2, 3] if reuse else [0, 1, 2, 3, 4, 5, 0, 1, 2, 3])
    v = m.placement.geometry.values_per_column
    rng = np.random.default_rng(13)
    wt = rng.standard_normal((region.meta["n_out"], region.meta["in_len"])).astype(np.float32)
    f = Functional(m, seed=14)                   # the buffer starts with garbage
    f.store_columns(region, column_table(region, wt, v))
    x = rng.standard_normal(region.meta["in_len"]).astype(np.float32)
    y = linear_output(f, [k], x, region.meta["n_out"])
    np.testing.assert_allclose(y, wt.astype(np.float64) @ x, rtol=1e-4, atol=1e-4)
    res = issue(spec(*over).dram, st)
    assert check(spec(*over).dram, *merge_log(st, res)) == []


def _toy_functional(m, region, k, seed):
    """(run, want): functional execution of the toy linear kernel on random weights and
    input, and the exact product it must give."""
    v = m.placement.geometry.values_per_column
    rng = np.random.default_rng(seed)
    wt = rng.standard_normal((region.meta["n_out"], region.meta["in_len"])).astype(np.float32)
    x = rng.standard_normal(region.meta["in_len"]).astype(np.float32)

    def run():
        f = Functional(m, seed=seed + 1)
        f.store_columns(region, column_table(region, wt, v))
        return linear_output(f, [k], x, region.meta["n_out"])

    return run, wt.astype(np.float64) @ x


def test_functional_execution_catches_a_wrong_register_schedule(monkeypatch):
    """The execution really models R registers: two pending segments sharing a register
    (or a read-out before a segment ends) give wrong sums."""
    m, region, k = _toy_linear(("pim.result_registers=3",))
    run, want = _toy_functional(m, region, k, 15)
    np.testing.assert_allclose(run(), want, rtol=1e-4, atol=1e-4)
    real = MacKernel.mac_registers
    for wrong in (lambda regs: 0 * regs, lambda regs: (regs + 1) % 3):
        monkeypatch.setattr(MacKernel, "mac_registers", lambda self, w=wrong: w(real(self)))
        try:
            got = run()
        except ValueError as exc:                 # a register left unread
            assert "never read out" in str(exc)
        else:
            assert not np.allclose(got, want, rtol=1e-4, atol=1e-4)


def test_functional_execution_catches_a_wrong_accumulation(monkeypatch):
    """Continued accumulation (R = 64 > the toy's 2 outputs): each output's segments, in
    two loads, add into one register read once at the end; sharing a register between
    outputs, swapping them or starting a fresh register at the second load gives wrong
    sums or a register never read."""
    m, region, k = _toy_linear(("pim.result_registers=64",))
    assert len(k.passes) == 2 and k.counts["RDMAC16"] == 2
    st = k.commands()
    rd = np.flatnonzero(st.cmd == COMMANDS.index("RDMAC16"))
    wr = np.flatnonzero(st.cmd == COMMANDS.index("WRGB"))
    assert rd.tolist() == [st.cmd.size - 3, st.cmd.size - 2] and wr.max() < rd.min()
    # slot s of the toy owns register s in both loads
    slot_of_mac = np.concatenate([np.repeat(p.seg["slot"], p.seg["n"]) for p in k.passes])
    assert (k.mac_registers() == slot_of_mac).all()
    run, want = _toy_functional(m, region, k, 17)
    np.testing.assert_allclose(run(), want, rtol=1e-4, atol=1e-4)
    second = np.concatenate([np.full(int(p.seg["n"].sum()), i) for i, p in enumerate(k.passes)])
    real = MacKernel.mac_registers
    for wrong in (lambda regs: 0 * regs, lambda regs: 1 - regs,
                  lambda regs: regs + 2 * second):
        monkeypatch.setattr(MacKernel, "mac_registers", lambda self, w=wrong: w(real(self)))
        try:
            got = run()
        except ValueError as exc:                 # a register left unread
            assert "never read out" in str(exc)
        else:
            assert not np.allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model,registers", [("gpt2-small", 64), ("gpt2-medium", 64),
                                             ("qwen2.5-0.5b", 64), ("qwen2.5-0.5b", 3),
                                             ("gpt2-medium", 3)])
def test_functional_proof_continued_accumulation(model, registers):
    """Layer 0 executed from the command stream with R registers: kernels with at most R
    outputs keep each output's register across loads (its tiles' segments add up in
    hardware, one read-out at the end), the others read batches; results stay exact."""
    over = (f"pim.result_registers={registers}",)
    tr = trace(model)
    m = mapped(model, "pim-gpt", 64, over)
    prog = m.program(9)
    layer0 = {o.index for o in tr.decode.layer_ops(0)}
    forms = Counter()
    for k in prog.items(MacKernel):
        if k.op_index not in layer0:
            continue
        outputs = len(_outputs_of(k))
        if outputs > registers:
            forms["batched"] += 1
            continue
        forms["accumulated"] += 1
        st = k.commands()
        per = st.cmd.size // k.repeats
        cmd = st.cmd[:per]
        rd = np.flatnonzero(cmd == COMMANDS.index("RDMAC16"))
        # one read-out, at the very end of the repeat, of every output once
        assert rd.tolist() == list(range(per - 1 - outputs, per - 1)), k.name
        mac = np.flatnonzero(cmd == COMMANDS.index("MAC16"))
        wr = np.flatnonzero(cmd == COMMANDS.index("WRGB"))
        regs = k.mac_registers()
        assert sorted(set(regs.tolist())) == list(range(outputs)), k.name
        passes_of = Counter(o for p in k.passes
                            for o in set(zip(p.seg["slot"].tolist(), p.seg["sub"].tolist())))
        if max(passes_of.values()) > 1:
            # an output's segments lie in several passes: its register takes MAC16s on both
            # sides of a later load
            loads_before = np.searchsorted(wr, mac)
            spread = [np.unique(loads_before[regs == r]).size for r in range(outputs)]
            assert max(spread) > 1, k.name
            forms["across loads"] += 1
    assert forms["accumulated"] + forms["batched"] > 0
    if registers == 64:
        assert forms["across loads"] > 0
    else:
        assert forms["batched"] > 0
    f, rng, by_op = Functional(m, seed=19), np.random.default_rng(20), _by_op(prog)
    for op in tr.decode.layer_ops(0):
        if op.op == "linear":
            _check_linear(f, tr, m.placement, by_op, op, rng)
    _check_attention(f, tr, m.placement, by_op, 9, rng)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_functional_proof_llama_attention_block(strategy):
    """LLaMA-3.2-1B (GQA 32/8): layer 0's q/k/v/o projections and attention (the MLP's
    64M-element image is left to the Qwen2 case, which shares its code paths)."""
    tr = trace("llama-3.2-1b")
    m = mapped("llama-3.2-1b", strategy, 64, tuple(BIG) if strategy == "naive" else ())
    prog = m.program(11)
    f, rng, by_op = Functional(m, seed=9), np.random.default_rng(10), _by_op(prog)
    for op in tr.decode.layer_ops(0):
        if op.op == "linear" and m.placement.linears[op["weight"]].role != "other":
            _check_linear(f, tr, m.placement, by_op, op, rng)
    _check_attention(f, tr, m.placement, by_op, 11, rng)


@pytest.mark.slow
def test_every_kernel_of_a_decode_step_passes_the_checker():
    """All kernels of one GPT-2 small step (about 0.7 M commands), refresh on."""
    s = spec()
    prog = mapped("gpt2-small").program(100)
    total = {}
    for k in prog.kernels():
        stream = k.commands(s)
        res = issue(s.dram, stream)
        cycles, log = merge_log(stream, res)
        assert check(s.dram, cycles, log, limit=3) == [], k.name
        for c, v in Counter(COMMANDS[c] for c in stream.cmd.tolist()).items():
            total[c] = total.get(c, 0) + v
    assert total == prog.counts()


@pytest.mark.e2e
def test_placement_figure_is_drawn(tmp_path):
    """docs/mapping.md's picture comes from this command (it is generated, not committed)."""
    from mappings.figure import main as figure_main

    out = tmp_path / "placement.png"
    assert figure_main([str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
