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


def _run(overrides=(), steps=(33, 34), **kw):
    spec = load_preset("pim-gpt", list(overrides))
    sim = SystemSimulator(spec, **kw)
    mapping = mappings.map(TRACE, spec)
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


@pytest.mark.parametrize("overrides", [(), ("refresh.policy=off",)], ids=["refresh", "no-refresh"])
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
