"""The event-driven system simulator on a small model: every command protocol-checked,
and the configuration knobs move the latency in the expected direction."""

from __future__ import annotations

import pytest

import mappings
import workloads
from pimsim.config import load_preset
from pimsim.errors import PimsimError
from pimsim.system import SystemSimulator

pytestmark = pytest.mark.e2e

TRACE = workloads.load_bundled("gpt2-small")


def _run(overrides=(), steps=(33, 34), trace=TRACE, **kw):
    spec = load_preset("pim-gpt", list(overrides))
    sim = SystemSimulator(spec, **kw)
    mapping = mappings.map(trace, spec, max_context=64)
    return sim, [sim.run_step(mapping.program(kv_len=k)) for k in steps]


@pytest.fixture(scope="module")
def base():
    return _run(keep_logs=True, keep_timeline=True)


def test_every_issued_command_passes_the_checker(base):
    sim, stats = base
    assert sum(sum(len(p[0]) for p in log) for log in sim.logs) > 100_000
    assert sim.check_logs() == []


def test_steps_follow_each_other_and_account_their_work(base):
    _, (a, b) = base
    assert a.start_ps == 0 and b.start_ps == a.end_ps and b.latency_ps > 0
    assert a.counts["MAC16"] > 0 and a.counts["REFab"] > 0 and a.refresh_stall_cycles > 0
    assert a.transfer_bytes["to_pim"] > 0 and a.asic["cycles"] > 0
    # every node of the step is on the timeline, inside the step
    assert all(a.start_ps <= s <= e <= a.end_ps for _, _, _, s, e in a.timeline)


@pytest.mark.slow
def test_knobs_move_latency_the_expected_way(base):
    _, (ref, _) = base
    slow_asic = _run(["asic.clock_MHz=100"], steps=(33,))[1][0]
    no_refresh = _run(["refresh.policy=off"], steps=(33,))[1][0]
    more_channels = _run(["organization.channels=16"], steps=(33,))[1][0]
    assert slow_asic.latency_ps > ref.latency_ps
    assert no_refresh.latency_ps < ref.latency_ps and no_refresh.counts.get("REFab", 0) == 0
    assert more_channels.latency_ps < ref.latency_ps


def test_needs_an_asic_section():
    with pytest.raises(PimsimError, match="has no 'asic' section"):
        SystemSimulator(load_preset("gddr6-aim"))


@pytest.mark.parametrize("overrides", [(), ("refresh.postpone=0", "refresh.pull_in=0"),
                                       ("refresh.policy=off",)],
                         ids=["postponed-refresh", "refresh-when-due", "no-refresh"])
def test_replayed_kernel_runs_equal_the_full_run(overrides):
    """Kernel runs replayed from the store give the same command log, cycle for cycle, and
    the same step statistics as issuing every kernel; the store is really used."""
    import dataclasses

    import numpy as np

    steps = tuple(range(33, 37))
    full, full_stats = _run(overrides, steps=steps, keep_logs=True, memo=False)
    fast, fast_stats = _run(overrides, steps=steps, keep_logs=True, memo=True)
    assert full.memo_hits == 0 and fast.memo_hits > 100
    assert [dataclasses.asdict(s) for s in fast_stats] == [dataclasses.asdict(s) for s in full_stats]
    for a, b in zip(full.logs, fast.logs):
        assert len(a) == len(b)
        for (ca, sa), (cb, sb) in zip(a, b):
            assert np.array_equal(ca, cb)
            for f in ("cmd", "bg", "ba", "row", "col"):
                assert np.array_equal(getattr(sa, f), getattr(sb, f))
    assert fast.check_logs() == []


@pytest.mark.parametrize("model,overrides", [
    ("gpt2-small", ()), ("gpt2-small", ("refresh.policy=off",)),
    ("gpt2-small", ("refresh.postpone=0", "refresh.pull_in=0", "asic.clock_MHz=100")),
    ("smollm2-135m", ("organization.channels=4",)),
], ids=["postponed-refresh", "no-refresh", "refresh-when-due-slow-asic", "gqa-4-channels"])
def test_listed_schedule_equals_the_simpy_processes(model, overrides):
    """The default scheduler (a time-ordered event list) gives the SimPy processes' schedule
    exactly: step statistics, timelines and every channel's command log."""
    import dataclasses

    import numpy as np

    trace = workloads.load_bundled(model)
    steps = (33, 34, 35)
    ref, ref_stats = _run(overrides, steps=steps, trace=trace, keep_logs=True,
                          keep_timeline=True, scheduler="simpy")
    out, out_stats = _run(overrides, steps=steps, trace=trace, keep_logs=True,
                          keep_timeline=True, scheduler="listed")
    assert [dataclasses.asdict(s) for s in out_stats] == [dataclasses.asdict(s) for s in ref_stats]
    assert len({s.latency_ps for s in ref_stats}) > 1 or "refresh.policy=off" in overrides
    for a, b in zip(ref.logs, out.logs):
        assert len(a) == len(b) > 0
        for (ca, sa), (cb, sb) in zip(a, b):
            assert np.array_equal(ca, cb) and np.array_equal(sa.cmd, sb.cmd)
            assert np.array_equal(sa.row, sb.row)


@pytest.mark.parametrize("model,overrides", [
    ("gpt2-small", ()), ("gpt2-small", ("refresh.policy=off",)),
    ("gpt2-small", ("refresh.postpone=0", "refresh.pull_in=0", "asic.clock_MHz=100")),
    ("gpt2-small", ("refresh.policy=pb",)),
    ("smollm2-135m", ("organization.channels=4",)),
], ids=["postponed-refresh", "no-refresh", "refresh-when-due-slow-asic", "per-bank-refresh",
        "gqa-4-channels"])
def test_compiled_schedule_equals_the_listed_one(model, overrides):
    """The compiled scheduler (the default) gives the Python event list's schedule exactly
    over enough steps for stored runs to be replayed: step statistics, timelines (every
    node's start and end), and every channel's final engine state."""
    import dataclasses

    import numpy as np

    trace = workloads.load_bundled(model)
    steps = tuple(range(33, 39))
    ref, ref_stats = _run(overrides, steps=steps, trace=trace, keep_timeline=True,
                          scheduler="listed")
    out, out_stats = _run(overrides, steps=steps, trace=trace, keep_timeline=True)
    assert out.scheduler == "compiled"
    assert [dataclasses.asdict(s) for s in out_stats] == [dataclasses.asdict(s) for s in ref_stats]
    assert len({s.latency_ps for s in ref_stats}) > 1 or "refresh.policy=off" in overrides
    for a, b in zip(ref.channels, out.channels):
        for x, y in zip(a.arrays, b.arrays):
            assert np.array_equal(x, y)
    # both issue and replay ran
    assert out.issued_runs > 100
    assert out.memo_hits > 100 or "refresh.policy=pb" in overrides


def test_compiled_scheduler_without_the_store_equals_it_with():
    import dataclasses

    steps = tuple(range(33, 37))
    full, full_stats = _run(steps=steps, keep_timeline=True, memo=False)
    fast, fast_stats = _run(steps=steps, keep_timeline=True)
    assert full.memo_hits == 0 and fast.memo_hits > 100
    assert [dataclasses.asdict(s) for s in fast_stats] == [dataclasses.asdict(s) for s in full_stats]


def test_unknown_scheduler_is_refused():
    with pytest.raises(PimsimError, match="unknown scheduler 'fast'"):
        SystemSimulator(load_preset("pim-gpt"), scheduler="fast")


def test_postponed_and_pulled_in_refresh_stay_in_the_jedec_window(base):
    """With postponing (pim-gpt: 8) and pulling in (8), the refreshes issued on a channel
    are never more than 8 ahead of the refreshes due, and fall behind by 9 only while the
    one forced at that moment is being issued (as a refresh due without postponing is
    issued when the row in flight closes); two REFab are at most 9 x nREFI apart. Both
    really happen."""
    import numpy as np

    from pimsim.standard import CMD_ID

    sim, _ = base
    spec = sim.spec.dram
    assert (spec.refresh_postpone, spec.refresh_pull_in) == (8, 8)
    interval = spec.timing["nREFI"]
    first_due = interval - spec.refresh_phase_cycles % interval
    ahead = behind = 0
    for parts in sim.logs:
        cycles = np.concatenate([p[0] for p in parts])
        cmd = np.concatenate([p[1].cmd for p in parts])
        ref = np.sort(cycles[cmd == CMD_ID["REFab"]])
        assert ref.size > 20
        # due(t): refreshes due at or before t; issued(t): REFab at or before t
        due_at_ref = (ref - first_due) // interval + 1
        issued_at_ref = np.arange(1, ref.size + 1)
        assert (issued_at_ref - due_at_ref <= 8).all()
        dues = first_due + interval * np.arange((int(cycles.max()) - first_due) // interval + 1)
        issued_at_due = np.searchsorted(ref, dues, side="right")
        assert (np.arange(1, dues.size + 1) - issued_at_due <= 9).all()
        ahead = max(ahead, int((issued_at_ref - due_at_ref).max()))
        behind = max(behind, int((np.arange(1, dues.size + 1) - issued_at_due).max()))
        assert np.diff(ref).max() <= 9 * interval
    assert ahead >= 1 and behind >= 8


def test_postponing_refresh_to_kernel_boundaries_is_faster():
    """Refreshes held back to kernel boundaries cost no precharge and re-activation inside
    the MAC stream: the step is faster than refreshing as soon as one falls due, and slower
    than no refresh at all."""
    when_due = _run(["refresh.postpone=0", "refresh.pull_in=0"], steps=(33,))[1][0]
    postponed = _run([], steps=(33,))[1][0]
    off = _run(["refresh.policy=off"], steps=(33,))[1][0]
    assert off.latency_ps < postponed.latency_ps < when_due.latency_ps
    assert postponed.refresh_stall_cycles < when_due.refresh_stall_cycles


@pytest.mark.slow
def test_doubling_channels_on_gpt2_xl_scales_near_linearly():
    """The paper reports near-linear channel scaling: 8 -> 16 channels on GPT2-XL gives at
    least 1.8x on one decode step."""
    trace = workloads.load_bundled("gpt2-xl")
    lat = {}
    for ch in (8, 16):
        spec = load_preset("pim-gpt", [f"organization.channels={ch}"])
        sim = SystemSimulator(spec)
        mapping = mappings.map(trace, spec, max_context=64)
        sim.run_step(mapping.program(kv_len=32))
        lat[ch] = sim.run_step(mapping.program(kv_len=33)).latency_ps
    assert lat[8] / lat[16] >= 1.8, lat


def test_step_items_that_give_the_same_node_are_recognised():
    """Consecutive steps share a layout; at its step-dependent positions the items that
    give the scheduler the same node (same stream, ASIC work or transfer) are recognised
    as such, and the others are not: the K append writes another position, the softmax
    has one more element. When the V token column moves on, the context kernels change."""
    spec = load_preset("pim-gpt")
    m = mappings.map(workloads.load_bundled("gpt2-small"), spec, max_context=128)
    a, b = m.program(41), m.program(42)
    assert a.layout is b.layout
    same: dict = {}
    for v in a.layout.dyn_pos:
        x, y = a.flat.items[v], b.flat.items[v]
        kind = getattr(x, "what", getattr(x, "kind", type(x).__name__))
        s = x is y or x.same_node(y)
        if s and hasattr(x, "commands"):
            sx, sy = x.commands(spec), y.commands(spec)
            assert all((getattr(sx, f) == getattr(sy, f)).all()
                       for f in ("cmd", "bg", "ba", "row", "col"))
        same.setdefault(kind, set()).add(s)
    assert same["softmax"] == {False}
    assert False in same["write"]           # the K append
    assert same["score"] == {True} and same["context"] == {True}
    ctx = [{k.name: k for k in m.program(n).kernels() if k.what == "context"} for n in (48, 49)]
    assert ctx[0].keys() == ctx[1].keys()
    assert not any(k.same_node(ctx[1][name]) for name, k in ctx[0].items())
