"""The compiled scheduler's parts on their own: graph preparation against the Python
scheduler's (networkx) preparation, stream pieces, and exactness when its arena and run
store overflow and are cleared."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest

import mappings
import workloads
from mappings.program import FlatGraph
from pimsim import stepkernel as sk
from pimsim.config import load_preset
from pimsim.engine.compile import compile_timing
from pimsim.standard import CMD_ID
from pimsim.system import _CLASSES, SystemSimulator


@dataclass(eq=False)
class _Kernel:
    channel: int
    op_index: int = 0
    what: str = "linear"

    def commands(self, spec=None):
        raise AssertionError("not issued here")


@dataclass(eq=False)
class _Asic:
    kind: str
    elements: int
    op_index: int = 0


@dataclass(eq=False)
class _Transfer:
    direction: str
    channel: int
    bytes: int = 32


def _random_program(rng: random.Random, n: int):
    """A random DAG of kernels, ASIC operators and transfers (transfer chains, transfers
    without inputs, producers reached twice), built in insertion order."""
    flat = FlatGraph()
    names = []
    for i in range(n):
        r = rng.random()
        if r < 0.4:
            item = _Transfer(rng.choice(["to_pim", "to_asic"]), rng.randrange(4))
        elif r < 0.75:
            item = _Kernel(rng.randrange(4), rng.randrange(5))
        else:
            item = _Asic("vmm_epilogue", rng.randrange(1, 100), rng.randrange(5))
        name = f"n{rng.randrange(10**6):06d}_{i}"
        preds = rng.sample(names, k=min(len(names), rng.choice([0, 0, 1, 1, 2, 3])))
        flat.add_node(name, item)
        for p in preds:
            flat.add_edge(p, name)
        names.append(name)
    # some edges added later, between existing nodes (forward in insertion order)
    for _ in range(n // 5):
        a, b = sorted(rng.sample(range(n), 2))
        flat.add_edge(names[a], names[b])
    return SimpleNamespace(flat=flat, graph=flat.to_networkx(), model="random")


@pytest.mark.parametrize("seed", range(12))
def test_prepare_equals_the_networkx_preparation(seed):
    """Topological order (networkx's), inputs behind transfers with their accumulated link
    latency, link latency of inputs from outside, distinct producers and users: as
    SystemSimulator._prepare derives them from the networkx graph."""
    rng = random.Random(seed)
    prog = _random_program(rng, rng.randrange(5, 120))
    sim = SystemSimulator(load_preset("pim-gpt"), scheduler="listed")
    nodes, _, _ = sim._prepare(prog)
    flat = prog.flat
    is_transfer = np.array([isinstance(it, _Transfer) for it in flat.items], dtype=np.uint8)
    (order, in_ptr, in_src, in_lat, start_delay, pr_ptr, prod, user_ptr,
     users) = sk.prepare(is_transfer, np.asarray(flat.src, dtype=np.int64),
                         np.asarray(flat.dst, dtype=np.int64), sim.link_latency_ps)
    assert [flat.names[v] for v in order] == [nd.name for nd in nodes]
    pos = {nd.name: nd.index for nd in nodes}
    expect_users: list[list[int]] = [[] for _ in nodes]
    for i, nd in enumerate(nodes):
        got = [(int(in_src[q]), int(in_lat[q])) for q in range(in_ptr[i], in_ptr[i + 1])]
        assert got == [(pos[p], lat) for p, lat in nd.inputs]
        assert int(start_delay[i]) == nd.start_delay
        assert prod[pr_ptr[i]:pr_ptr[i + 1]].tolist() == list(nd.producers)
        for p in nd.producers:
            expect_users[p].append(i)
    for i in range(len(nodes)):
        assert users[user_ptr[i]:user_ptr[i + 1]].tolist() == expect_users[i]


def test_prepare_reports_a_cycle():
    flat = FlatGraph()
    flat.add_node("a", _Kernel(0))
    flat.add_node("b", _Kernel(1))
    flat.add_edge("a", "b")
    flat.add_edge("b", "a")
    out = sk.prepare(np.zeros(2, dtype=np.uint8), np.asarray(flat.src, dtype=np.int64),
                     np.asarray(flat.dst, dtype=np.int64), 1000)
    assert out[0].size == 0


def test_streams_are_cut_into_pieces_that_never_end_with_tmod():
    """A long stream: the whole stream, then pieces of at least CHUNK commands that never
    end with a TMOD and together are the stream, each cut the same way into sub-pieces of
    at least SUB commands; a short one is one piece."""
    spec = load_preset("pim-gpt").dram
    ct = compile_timing(spec)
    arena = sk.Arena(ct.win_to, ct.win_from, CMD_ID["TMOD"], ct.addr_all, ct.n_bankgroups,
                     ct.banks_per_bankgroup)
    rng = np.random.default_rng(3)
    n = 5 * sk.CHUNK + 77
    cmd = rng.choice([CMD_ID["MAC16"], CMD_ID["TMOD"], CMD_ID["ACT16"]], size=n)
    cmd[sk.CHUNK - 3:sk.CHUNK + 2] = CMD_ID["TMOD"]       # a TMOD run across a cut
    zero = np.zeros(n, dtype=np.int64)
    stream = SimpleNamespace(cmd=cmd.astype(np.int64), bg=zero, ba=zero, row=zero)
    sid = arena.sid_of(stream)
    assert arena.sid_of(stream) == sid                    # registered once
    tabs = arena.tables()
    a_cmd, p_ptr, p_off, p_len, whole = tabs[0], tabs[4], tabs[5], tabs[6], tabs[12]
    top_end, sub_lo, sub_n = tabs[13], tabs[14], tabs[15]

    def part(p):
        return a_cmd[p_off[p]:p_off[p] + p_len[p]]

    # first the whole stream (its runs are stored too), then the pieces
    assert whole[sid] == 1 and sub_n[p_ptr[sid]] == 0
    assert np.array_equal(part(p_ptr[sid]), stream.cmd)
    pieces = range(p_ptr[sid] + 1, top_end[sid])
    assert len(pieces) > 3
    assert np.array_equal(np.concatenate([part(p) for p in pieces]), stream.cmd)
    subs_seen = []
    for p in pieces:
        assert p_len[p] >= sk.CHUNK
        if p != pieces[-1]:
            assert part(p)[-1] != CMD_ID["TMOD"]
        subs = range(sub_lo[p], sub_lo[p] + sub_n[p])
        assert len(subs) >= sk.CHUNK // sk.SUB - 1
        assert np.array_equal(np.concatenate([part(q) for q in subs]), part(p))
        for q in subs:
            assert p_len[q] >= sk.SUB and sub_n[q] == 0
            if q != subs[-1]:
                assert part(q)[-1] != CMD_ID["TMOD"]
        subs_seen += list(subs)
    # the sub-pieces follow the pieces, and the stream's table ends with them
    assert sorted(subs_seen) == list(range(top_end[sid], p_ptr[sid + 1]))
    short = SimpleNamespace(cmd=stream.cmd[:sk.CHUNK], bg=zero[:sk.CHUNK], ba=zero[:sk.CHUNK],
                            row=zero[:sk.CHUNK])
    s2 = arena.sid_of(short)
    tabs = arena.tables()
    p_ptr, top_end, sub_n = tabs[4], tabs[13], tabs[15]
    assert tabs[12][s2] == 0 and p_ptr[s2 + 1] - p_ptr[s2] == 1 and top_end[s2] == p_ptr[s2 + 1]
    assert sub_n[p_ptr[s2]] == 0


def test_cleared_arena_and_store_give_the_same_schedule():
    """The arena and the run store are bounded; when they fill up they are cleared, and
    the schedule stays that of the Python event list."""
    spec = load_preset("pim-gpt")
    trace = workloads.load_bundled("gpt2-small")
    mapping = mappings.map(trace, spec, max_context=64)
    steps = range(33, 37)
    ref = SystemSimulator(spec, scheduler="listed")
    ref_stats = [ref.run_step(mapping.program(k)) for k in steps]
    out = SystemSimulator(spec)
    cs = out._compiled_state()
    cs.store = sk.RunStore(spec.dram.banks, len(_CLASSES), capacity=300, pool=1 << 14)
    gens = [cs.arena.generation]
    out_stats = []
    for k in steps:
        # the arena is full: the step's first new stream clears it
        cs.arena.limit = max(cs.arena.cmd.n, 1000)
        out_stats.append(out.run_step(mapping.program(k)))
        gens.append(cs.arena.generation)
    assert gens[-1] >= gens[0] + len(steps) - 1 and out.memo_hits > 0
    assert [dataclasses.asdict(s) for s in out_stats] == [dataclasses.asdict(s) for s in ref_stats]
