"""Program building: the flat graph mirrors networkx, the per-mapping caches of the
builder never change a program, and a step holds the nodes the placement calls for."""

from __future__ import annotations

import dataclasses
import functools
import random
from collections import Counter

import networkx as nx
import numpy as np
import pytest

import mappings
import workloads
from mappings.program import NO_ITEM, AccessKernel, AsicOp, FlatGraph, MacKernel, Transfer
from pimsim.config import load_preset
from pimsim.standard import CMD_ID

pytestmark = pytest.mark.unit

CONTEXT = 160


@functools.lru_cache(maxsize=None)
def trace(name):
    return workloads.load_bundled(name)


def fresh(name, *overrides):
    """A new mapping (its caches empty)."""
    return mappings.map(trace(name), load_preset("pim-gpt", list(overrides)), "pim-gpt",
                        max_context=CONTEXT)


# --------------------------------------------------------------------------- FlatGraph


def _orders(g: nx.DiGraph):
    return (list(g.nodes), list(g.edges), {n: list(g.succ[n]) for n in g},
            {n: list(g.pred[n]) for n in g}, {n: dict(g.nodes[n]) for n in g})


def _random_ops(rng: random.Random, n: int):
    """Random node and edge additions over a small name pool (repeats are likely)."""
    ops = []
    for _ in range(n):
        r = rng.random()
        if r < 0.3:
            ops.append(("node", f"n{rng.randrange(30)}", rng.choice([NO_ITEM, rng.random()])))
        elif r < 0.6:
            ops.append(("edge", f"n{rng.randrange(30)}", f"n{rng.randrange(30)}"))
        elif r < 0.8:
            k = rng.randrange(0, 6)
            ops.append(("nodes", [f"n{rng.randrange(40)}" for _ in range(k)],
                        [rng.random() for _ in range(k)]))
        else:
            k = rng.randrange(0, 6)
            ops.append(("edges", [rng.randrange(10_000) for _ in range(k)],
                        [rng.randrange(10_000) for _ in range(k)]))
    return ops


def _apply(ops):
    """The same additions on a FlatGraph and on a networkx graph."""
    f, g = FlatGraph(), nx.DiGraph()
    for op in ops:
        if op[0] == "node":
            _, name, item = op
            pos = f.add_node(name, item)
            if item is NO_ITEM:
                g.add_node(name)
            else:
                g.add_node(name, item=item)
            assert list(g.nodes).index(name) == pos
        elif op[0] == "edge":
            f.add_edge(op[1], op[2])
            g.add_edge(op[1], op[2])
        elif op[0] == "nodes":
            _, names, items = op
            pos = list(f.add_nodes(names, items))
            for n, it in zip(names, items):
                g.add_node(n, item=it)
            assert pos == [list(g.nodes).index(n) for n in names]
        elif f.names:                        # edges between existing nodes, by position
            src = [a % len(f.names) for a in op[1]]
            dst = [b % len(f.names) for b in op[2]]
            f.add_edges_at(src, dst)
            for a, b in zip(src, dst):
                g.add_edge(f.names[a], f.names[b])
    return f, g


@pytest.mark.parametrize("seed", range(40))
def test_flat_graph_follows_networkx(seed):
    rng = random.Random(seed)
    f, g = _apply(_random_ops(rng, rng.randrange(1, 120)))
    assert f.names == list(g.nodes)
    assert f.index == {n: i for i, n in enumerate(g.nodes)}
    assert f.items == [g.nodes[n].get("item", NO_ITEM) for n in g.nodes]
    assert len(set(zip(f.src, f.dst))) == len(f.src) == g.number_of_edges()
    assert _orders(f.to_networkx()) == _orders(g)
    # to_networkx is what add_node / add_edge in flat order give
    h = nx.DiGraph()
    for n, it in zip(f.names, f.items):
        h.add_node(n) if it is NO_ITEM else h.add_node(n, item=it)
    for a, b in zip(f.src, f.dst):
        h.add_edge(f.names[a], f.names[b])
    assert _orders(f.to_networkx()) == _orders(h)


def test_flat_graph_edges_keep_first_insertion_order():
    f = FlatGraph()
    for n in "abcd":
        f.add_node(n, n.upper())
    f.add_edge("c", "d")
    f.add_edge("a", "d")
    f.add_edge("c", "d")                     # repeat: no-op
    f.add_edges_at([1, 0], [3, 3])           # (b, d) new, (a, d) a repeat
    f.add_edge("d", "e")                     # adds e (no item)
    assert list(zip(f.src, f.dst)) == [(2, 3), (0, 3), (1, 3), (3, 4)]
    assert f.items[4] is NO_ITEM and "item" not in f.to_networkx().nodes["e"]
    f.add_node("a", "A2")                    # replaces the item, keeps the position
    assert f.index["a"] == 0 and f.items[0] == "A2"
    g = f.to_networkx()
    assert list(g.pred["d"]) == ["c", "a", "b"]


def test_flat_graph_copy_is_independent():
    rng = random.Random(7)
    f, g = _apply(_random_ops(rng, 80))
    c = f.copy()
    before = _orders(f.to_networkx())
    c.add_node("new", 1)
    if c.names:
        c.add_edge(c.names[0], "new")
        c.add_edge_at(c.index[c.names[0]], c.index["new"])   # a repeat in the copy
    c.add_edges_at(list(f.src), list(f.dst))                 # all repeats
    assert c.number_of_edges() == f.number_of_edges() + (1 if f.names else 0)
    assert _orders(f.to_networkx()) == before == _orders(g)


# --------------------------------------------------------------------------- programs


def _arr(a):
    return None if a is None else (a.dtype.str, a.shape, a.tobytes())


def _pass(p):
    return (_arr(p.gb_slot), _arr(p.gb_inp), _arr(p.gb_kcol), _arr(p.rows),
            tuple((f, _arr(v)) for f, v in sorted(p.seg.items())))


_PASSES: dict = {}


def _canon(it):
    """Every field of an item, in a form that compares equal for equal items of different
    mappings (regions by name, channel parts by place and contents)."""
    if isinstance(it, (Transfer, AsicOp)):
        return (type(it).__name__, tuple((k, v if k != "detail" else sorted(v.items()))
                                         for k, v in vars(it).items()))
    if isinstance(it, AccessKernel):
        return ("access", it.name, it.channel, it.what, it.banks_per_bankgroup, it.op_index,
                it.target, None if it.region is None else it.region.name,
                *(_arr(getattr(it, f)) for f in ("bank", "row", "col", "lane", "src_out",
                                                 "src_sub", "src_kcol")))
    assert isinstance(it, MacKernel)
    hit = _PASSES.get(id(it.passes))
    if hit is None or hit[0] is not it.passes:
        hit = _PASSES[id(it.passes)] = (it.passes, tuple(_pass(p) for p in it.passes))
    part = it.part
    return ("mac", it.name, it.channel, it.what, it.region.name, part.channel, part.base_row,
            _arr(part.slot_out), hit[1], it.repeats, it.op_index, it.out_limit, it.registers,
            it.gb_reuse)


def test_canonical_form_covers_every_field():
    """The comparison below sees every field of every kind of item."""
    seen = {"Transfer": {"name", "direction", "channel", "bytes", "op_index"},
            "AsicOp": {"name", "kind", "elements", "op_index", "detail"},
            "AccessKernel": {"name", "channel", "what", "bank", "row", "col", "lane",
                             "banks_per_bankgroup", "op_index", "target", "region", "src_out",
                             "src_sub", "src_kcol"},
            "MacKernel": {"name", "channel", "what", "region", "part", "passes", "repeats",
                          "op_index", "out_limit", "registers", "gb_reuse"}}
    for cls in (Transfer, AsicOp, AccessKernel, MacKernel):
        assert {f.name for f in dataclasses.fields(cls)} == seen[cls.__name__]


def _consistent(f: FlatGraph):
    """The flat graph's own records agree: index, and the edge set that finds repeats."""
    assert f.index == {n: i for i, n in enumerate(f.names)} and len(f.items) == len(f.names)
    keys = {i << 32 | j for i, j in zip(f.src, f.dst)}
    assert len(keys) == len(f.src)
    assert f._edges is None or f._edges == keys          # None: made when first needed


def _program_key(prog):
    _consistent(prog.flat)
    g = prog.graph
    return (_orders_no_items(g), [_canon(it) for it in prog.items()], prog.kv_len)


def _orders_no_items(g):
    return (list(g.nodes), list(g.edges), [list(g.succ[n]) for n in g],
            [list(g.pred[n]) for n in g])


@pytest.mark.parametrize("model,steps", [
    ("gpt2-small", [1, 2, 3, 16, 17, 33, 129, 130, CONTEXT]),
    ("smollm2-135m", [1, 2, 17, 130, CONTEXT])])      # grouped-query attention
def test_programs_do_not_depend_on_what_was_built_before(model, steps):
    """Consecutive and repeated steps, in different orders and on fresh mappings, give
    equal programs: nothing cached on the mapping leaks from one step into another."""
    want = {}
    for L in steps:                               # every step on a mapping of its own
        want[L] = _program_key(fresh(model).program(L))
    m = fresh(model)
    for L in steps + steps[::-1] + [17, 1, 130]:  # one warm mapping: up, down, again
        assert _program_key(m.program(L)) == want[L], L
    assert _program_key(m.program(5, token=11)) == _program_key(fresh(model).program(5, token=11))
    assert _program_key(m.program(5)) == _program_key(fresh(model).program(5))


def test_program_views_agree_and_programs_are_independent():
    m = fresh("gpt2-small")
    a = m.program(40)
    assert a.graph is a.graph                     # built once
    assert a.flat.names == list(a.graph.nodes)
    assert list(a.items()) == [d["item"] for _, d in a.graph.nodes(data=True)]
    assert nx.is_directed_acyclic_graph(a.graph)
    key = _program_key(a)
    a.flat.add_node("extra", AsicOp("extra", "extra", 0))
    a.flat.add_edge_at(0, a.flat.index["extra"])
    b = m.program(40)                             # the same step again: its own graph
    assert "extra" not in b.flat.index and _program_key(b) == key
    assert b.flat is not a.flat and b.flat.items is not a.flat.items


# --------------------------------------------------------------------------- counts


@functools.lru_cache(maxsize=None)
def _kv_channels(model):
    """Per layer: (K position -> channels, V token -> channels) from the stored elements."""
    m = fresh(model)
    pl = m.placement
    out = {}
    for layer, (ks, vs) in pl.kv.items():
        per = []
        for regions, key in ((ks, "out"), (vs, None)):
            where: dict[int, set] = {}
            for r in regions:
                e = pl.elements(r)
                pos = e["out"] if key else e["index"] % r.meta["reserve"]
                pairs = np.unique(pos * 1024 + e["ch"])
                for p, ch in zip((pairs // 1024).tolist(), (pairs % 1024).tolist()):
                    where.setdefault(p, set()).add(ch)
            per.append(where)
        out[layer] = per
    return out


def _chunks(pl, name, first, count):
    return sum(1 for d in pl.dense[name]
               if max(first, d.first) < min(first + count, d.first + d.elements))


def _expected(m, L, token):
    """Nodes and kernels (kind, what) of step ``L`` from the placement alone: every
    kernel has a transfer; a weight or attention kernel per channel part of its operand
    (attention: parts holding valid positions), one write per channel storing the new
    position, one read per dense chunk or tied-weight part touched."""
    pl = m.placement
    kv = _kv_channels(m.trace.model)
    nodes, kernels = 0, Counter()

    def read(name, first, count):
        c = _chunks(pl, name, first, count)
        kernels["AccessKernel", "read"] += c
        return 2 * c

    for op in m.trace.decode.ops:
        if op.op in ("linear", "lm_head"):
            parts = sum(len(r.parts) for r in pl.by_weight[op["weight"]])
            kernels["MacKernel", "linear"] += parts
            nodes += 3 * parts + 1
            if op["bias"] in pl.dense:
                nodes += read(op["bias"], 0, pl.dense_size(op["bias"]))
        elif op.op == "embedding":
            idx = token if op["role"] == "token" else (L - 1) % op["rows"]
            if op["weight"] in pl.dense:
                nodes += read(op["weight"], idx * op["dim"], op["dim"]) + 1
            else:
                parts = sum(1 for r in pl.by_weight[op["weight"]] for p in r.parts
                            if (p.slot_out == idx - r.meta["out_offset"]).any())
                kernels["AccessKernel", "read"] += parts
                nodes += 2 * parts + 1
        elif op.op == "kv_append":
            att = pl.attention[op.layer]
            pos = (L - 1) % att.reserve
            k_at, v_at = kv[op.layer]
            chans = (k_at if op["target"] == "k" else v_at).get(pos, set())
            kernels["AccessKernel", "write"] += len(chans)
            nodes += 2 * len(chans)
        elif op.op in ("attn_score", "attn_context"):
            att = pl.attention[op.layer]
            n_valid = min(L, att.reserve)
            at = kv[op.layer][0 if op.op == "attn_score" else 1]
            chans = set().union(*(at.get(p, set()) for p in range(n_valid)))
            what = "score" if op.op == "attn_score" else "context"
            kernels["MacKernel", what] += len(chans)
            nodes += 3 * len(chans) + 1
        else:
            nodes += 1
            if op.op in ("layernorm", "rmsnorm"):
                for nm in (op.get("weight"), op.get("bias")):
                    if nm is not None and nm in pl.dense:
                        nodes += read(nm, 0, pl.dense_size(nm))
    return nodes, kernels


@pytest.mark.parametrize("model", ["gpt2-small", "smollm2-135m"])
def test_step_holds_the_nodes_the_placement_calls_for(model):
    m = fresh(model)
    for L, token in ((1, 0), (2, 0), (17, 3), (100, 0), (129, 0), (CONTEXT, 5)):
        prog = m.program(L, token=token)
        nodes, kernels = _expected(m, L, token)
        got = Counter((type(k).__name__, k.what) for k in prog.kernels())
        assert got == kernels, L
        assert len(prog.flat) == nodes == prog.graph.number_of_nodes(), L
        # a MAC kernel's input and output, a read's output, a write's input
        macs = sum(v for (kind, _), v in kernels.items() if kind == "MacKernel")
        assert len(list(prog.items(Transfer))) == sum(kernels.values()) + macs
        # one ASIC op (an epilogue where PIM kernels run) per op, but the K/V appends
        assert len(list(prog.items(AsicOp))) == sum(1 for o in m.trace.decode.ops
                                                    if o.op != "kv_append")
        # every kernel is fed (or read out) by a transfer of its own channel
        g = prog.graph
        for n in g:
            it = g.nodes[n]["item"]
            if isinstance(it, (MacKernel, AccessKernel)):
                near = [g.nodes[x]["item"] for x in (*g.pred[n], *g.succ[n])]
                assert any(isinstance(t, Transfer) and t.channel == it.channel for t in near)


def test_kernels_at_another_base_row_are_the_shifted_arrays():
    """Layers share templates: a kernel's commands at base row b are those at base row 0
    with b added to every row (ACT16, MAC16) and -1 kept where a command has no row; the
    pass-level generator itself obeys that rule."""
    from mappings.program import _pass_commands, kernel_plan

    spec = load_preset("pim-gpt")
    m = mappings.map(workloads.load_bundled("gpt2-small"), spec, max_context=128)
    ks = [k for k in m.program(70).kernels() if isinstance(k, MacKernel)]
    shifted = [k for k in ks if k.part.base_row != 0]
    assert {k.what for k in shifted} == {"linear", "score", "context"}
    for k in shifted:
        b = k.part.base_row
        plan = kernel_plan(k.passes, k.registers, k.gb_reuse)
        rows = []
        for i, p in enumerate(k.passes):
            cmd_b, row_b, col_b = _pass_commands(p, b, plan, i)
            cmd_0, row_0, col_0 = _pass_commands(p, 0, plan, i)
            assert np.array_equal(cmd_b, cmd_0) and np.array_equal(col_b, col_0)
            assert np.array_equal(row_b, np.where(row_0 >= 0, row_0 + b, -1))
            rows.append(row_b)
        s = k.commands(spec)
        has_row = np.isin(s.cmd, [CMD_ID["ACT16"], CMD_ID["MAC16"]])
        assert (s.row[has_row] >= b).all() and (s.row[~has_row] == -1).all()
        # the kernel's rows are its passes' rows (read-outs and hoisting add none)
        per_repeat = np.sort(np.concatenate(rows)[np.concatenate(rows) >= 0])
        assert np.array_equal(np.sort(s.row[has_row]), np.sort(np.tile(per_repeat, k.repeats)))


def test_timing_streams_carry_the_commands_banks_and_rows():
    """An access kernel's timing stream has its commands, banks and rows; the V appends of
    the next token column (other columns, the same banks and rows) share one."""
    spec = load_preset("pim-gpt")
    m = mappings.map(workloads.load_bundled("gpt2-small"), spec, max_context=128)
    by_step = [{k.name: k for k in m.program(n).kernels() if isinstance(k, AccessKernel)}
               for n in (48, 49)]
    shared = 0
    for name, a in by_step[0].items():
        b = by_step[1].get(name)
        ta = a.timing_stream(spec)
        tb = b.timing_stream(spec) if b is not None else None
        if b is not None and "v_cache" in name:
            assert not np.array_equal(a.col, b.col)
            if np.array_equal(a.bank, b.bank) and np.array_equal(a.row, b.row):
                assert tb is ta
                shared += 1
        for k, t in ((a, ta), (b, tb)):
            if k is not None:
                c = k.commands(spec)
                assert all(np.array_equal(getattr(t, f), getattr(c, f))
                           for f in ("cmd", "bg", "ba", "row"))
    assert shared > 0
