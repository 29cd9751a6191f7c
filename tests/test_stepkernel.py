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


def _arena():
    ct = compile_timing(load_preset("pim-gpt").dram)
    return sk.Arena(ct.win_to, ct.win_from, CMD_ID["TMOD"], ct.addr_all, ct.n_bankgroups,
                    ct.banks_per_bankgroup)


def _random_stream(n: int, seed: int) -> SimpleNamespace:
    rng = np.random.default_rng(seed)
    cmd = rng.choice([CMD_ID["MAC16"], CMD_ID["TMOD"], CMD_ID["ACT16"]], size=n)
    cmd[sk.CHUNK - 3:sk.CHUNK + 2] = CMD_ID["TMOD"]       # a TMOD run across a cut
    zero = np.zeros(n, dtype=np.int64)
    return SimpleNamespace(cmd=cmd.astype(np.int64), bg=zero, ba=zero.copy(),
                           row=rng.integers(0, 50, size=n))


def _stream_pieces(arena, sid):
    tabs = arena.tables()
    ptr, plist, ppos = tabs[4], tabs[13], tabs[16]
    return plist[ptr[sid]:ptr[sid + 1]].tolist(), ppos[ptr[sid]:ptr[sid + 1]].tolist()


def test_streams_are_cut_into_pieces_that_never_end_with_tmod():
    """A long stream: the whole stream, then pieces of at least CHUNK commands that never
    end with a TMOD and together are the stream, each cut the same way into sub-pieces of
    at least SUB commands; a short one is one piece."""
    arena = _arena()
    stream = _random_stream(5 * sk.CHUNK + 77, 3)
    sid = arena.sid_of(stream)
    assert arena.sid_of(stream) == sid                    # registered once
    tabs = arena.tables()
    a_cmd, p_off, p_len, whole = tabs[0], tabs[5], tabs[6], tabs[12]
    sub_lo, sub_n = tabs[14], tabs[15]

    def part(p):
        return a_cmd[p_off[p]:p_off[p] + p_len[p]]

    # first the whole stream (its runs are stored too), then the pieces
    ids, pos = _stream_pieces(arena, sid)
    assert whole[sid] == 1 and sub_n[ids[0]] == 0 and pos[0] == 0
    assert np.array_equal(part(ids[0]), stream.cmd)
    pieces = ids[1:]
    assert len(pieces) > 3
    assert np.array_equal(np.concatenate([part(p) for p in pieces]), stream.cmd)
    assert pos[1:] == np.cumsum([0] + [p_len[p] for p in pieces[:-1]]).tolist()
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
    short = SimpleNamespace(cmd=stream.cmd[:sk.CHUNK], bg=stream.bg[:sk.CHUNK],
                            ba=stream.ba[:sk.CHUNK], row=stream.row[:sk.CHUNK])
    s2 = arena.sid_of(short)
    ids, _ = _stream_pieces(arena, s2)
    tabs = arena.tables()
    assert tabs[12][s2] == 0 and len(ids) == 1 and tabs[15][ids[0]] == 0


def test_equal_streams_and_pieces_are_registered_once():
    """A stream equal to an earlier one, command by command, is that stream; a stream that
    differs only in its last part shares the earlier stream's pieces before it; any other
    difference gives new pieces."""
    arena = _arena()
    a = _random_stream(5 * sk.CHUNK + 77, 4)
    sa = arena.sid_of(a)
    copy = SimpleNamespace(**{k: v.copy() for k, v in vars(a).items()})
    assert arena.sid_of(copy) == sa
    n_pieces = arena.n_pieces
    grown = SimpleNamespace(**{k: np.concatenate([v, v[-40:]]) for k, v in vars(a).items()})
    sg = arena.sid_of(grown)
    assert sg != sa
    ids_a, _ = _stream_pieces(arena, sa)
    ids_g, pos_g = _stream_pieces(arena, sg)
    # the whole stream is new, and so is the last piece; the pieces before are shared
    assert ids_g[1:-1] == ids_a[1:-1] and ids_g[-1] not in ids_a and ids_g[0] not in ids_a
    tabs = arena.tables()
    back = np.concatenate([tabs[0][tabs[5][p]:tabs[5][p] + tabs[6][p]] for p in ids_g[1:]])
    assert np.array_equal(back, grown.cmd) and arena.n_pieces > n_pieces
    # one row changed in the first piece: the whole stream and that piece are new, the
    # pieces after it (cut at the same commands) are shared
    other = SimpleNamespace(**{k: v.copy() for k, v in vars(a).items()})
    other.row[5] += 1
    ids_o, _ = _stream_pieces(arena, arena.sid_of(other))
    assert ids_o[0] not in ids_a and ids_o[1] not in ids_a and ids_o[2:] == ids_a[2:]


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


def test_small_pieces_shared_between_streams_give_the_same_schedule():
    """With small pieces and sub-pieces, streams that grow from step to step (the context
    kernels, as the V token column moves on) share their unchanged pieces with the
    streams before them, runs are stored in sub-pieces around forced refreshes, and the
    schedule and channel states stay those of the Python event list."""
    spec = load_preset("pim-gpt")
    trace = workloads.load_bundled("gpt2-small")
    mapping = mappings.map(trace, spec, max_context=128)
    steps = range(45, 58)               # the V token column moves on at 49
    ref = SystemSimulator(spec, scheduler="listed")
    ref_stats = [ref.run_step(mapping.program(k)) for k in steps]
    out = SystemSimulator(spec)
    cs = out._compiled_state()
    old = cs.arena
    cs.arena = sk.Arena(old.w_to, old.w_from, old.tmod, old.addr_all, old.n_bg, old.bpg,
                        chunk=10, sub=4)
    cs.generation = cs.arena.generation
    out_stats = [out.run_step(mapping.program(k)) for k in steps]
    assert [dataclasses.asdict(s) for s in out_stats] == [dataclasses.asdict(s) for s in ref_stats]
    for a, b in zip(ref.channels, out.channels):
        assert all(np.array_equal(u, v) for u, v in zip(a.arrays, b.arrays))
    # pieces were shared by streams, and replayed
    tabs = cs.arena.tables()
    ptr, plist = tabs[4], tabs[13]
    owners: dict = {}
    for s in range(cs.arena.n_streams):
        for p in set(plist[ptr[s]:ptr[s + 1]].tolist()):
            owners[p] = owners.get(p, 0) + 1
    assert sum(1 for v in owners.values() if v > 1) > 0
    assert out.memo_hits > 0 and int(tabs[15].sum()) > 0
