"""The numba kernel and its pure-Python twin agree on >= 10,000 random streams, and the
independent checker finds no violation in any kernel output. Breaking one constraint in
the kernel's tables is caught by both."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from pimsim.config import load_preset, load_timing_file
from pimsim.engine import check, compiled, issue, issue_channels, merge_log
from pimsim.engine.streams import mac_rows, random_stream
from pimsim.standard import CMD_ID

pytestmark = pytest.mark.kernel

STREAMS = int(os.environ.get("PIMSIM_RANDOM_STREAMS", "10000"))

# (preset, overrides, refresh policy): short refresh intervals make refresh frequent
CONFIGS = [
    ("pim-gpt", [], "off"),
    ("pim-gpt", ["timing.nREFI=600"], "ab"),
    ("pim-gpt", ["timing.nREFI=4000", "timing.nRFCpb=40"], "pb"),
    ("gddr6-14000", [], "off"),
    ("gddr6-14000", ["timing.nREFI=500"], "ab"),
    ("gddr6-14000", ["timing.nREFI=2000"], "pb"),
    ("gddr6-aim", [], "off"),
    ("gddr6-aim", ["timing.nRFCab=100", "timing.nREFI=700"], "ab"),
]


def _spec(preset, overrides, refresh, phase=0):
    return load_preset(preset, overrides).dram.with_refresh(refresh, phase)


@pytest.mark.parametrize("config", range(len(CONFIGS)))
def test_kernel_equals_twin_on_random_streams(config):
    preset, overrides, refresh = CONFIGS[config]
    rng = np.random.default_rng(1000 + config)
    per_config = -(-STREAMS // len(CONFIGS))
    reopened = refreshed = 0
    base = _spec(preset, overrides, refresh)
    for k in range(per_config):
        spec = base.with_refresh(refresh, int(rng.integers(0, 3000)))
        n = int(rng.integers(1, 120))
        stream = random_stream(rng, n, bankgroups=spec.bankgroups,
                               banks_per_bankgroup=spec.banks_per_bankgroup, rows=8,
                               columns=spec.columns, gb_slots=spec.gb_slots, commands=spec.commands)
        fast = issue(spec, stream, backend="numba")
        slow = issue(spec, stream, backend="python")
        assert np.array_equal(fast.cycles, slow.cycles), f"stream {k}: {stream.records()}"
        for key in fast.inserted:
            assert np.array_equal(fast.inserted[key], slow.inserted[key]), (k, key)
        assert fast.counts == slow.counts and fast.refresh_stall_cycles == slow.refresh_stall_cycles
        cycles, log = merge_log(stream, fast)
        violations = check(spec, cycles, log)
        assert violations == [], f"stream {k}: {violations[0]}"
        ins = fast.inserted["cmd"]
        refreshed += int(np.isin(ins, [CMD_ID["REFab"], CMD_ID["REFpb"]]).sum())
        reopened += int(np.isin(ins, [CMD_ID["ACT"], CMD_ID["ACT16"]]).sum())
    if refresh != "off":
        # the streams exercise refresh insertion and re-activation, not only the easy path
        assert refreshed > 0 and reopened > 0, (refreshed, reopened)


def test_lockstep_and_independent_channels_equal_single_channel_runs():
    spec = _spec("pim-gpt", ["timing.nREFI=900"], "ab")
    stream = mac_rows(12, spec.columns)
    phases = [0, 100, 250, 899]
    lock = issue_channels(spec, stream, channels=4, refresh_phases=phases)
    rng = np.random.default_rng(7)
    streams = [random_stream(rng, 300, rows=8, commands=spec.commands) for _ in range(3)]
    indep = issue_channels(spec, streams, refresh_phases=[0, 500, 1000])
    for res, phase in zip(lock, phases):
        single = issue(spec.with_refresh("ab", phase), stream)
        assert np.array_equal(res.cycles, single.cycles)
        assert all(np.array_equal(res.inserted[f], single.inserted[f]) for f in single.inserted)
    assert not np.array_equal(lock[0].cycles, lock[1].cycles)  # phases really differ
    for res, s, phase in zip(indep, streams, [0, 500, 1000]):
        single = issue(spec.with_refresh("ab", phase), s, backend="python")
        assert np.array_equal(res.cycles, single.cycles) and res.counts == single.counts


def test_breaking_one_constraint_is_caught_by_twin_and_checker():
    """Shorten ACT16 -> MAC16 (nRCDRDMAC) by one cycle in the kernel's tables only."""
    spec = _spec("pim-gpt", [], "off")
    ct = compiled(spec)
    act16, mac16 = CMD_ID["ACT16"], CMD_ID["MAC16"]
    lat = ct.all_lat.copy()
    hit = [k for k in range(ct.all_ptr[act16], ct.all_ptr[act16 + 1]) if ct.all_to[k] == mac16]
    assert len(hit) == 1 and lat[hit[0]] == spec.timing["nRCDRDMAC"]
    lat[hit[0]] -= 1
    broken = dataclasses.replace(ct, all_lat=lat)
    stream = mac_rows(3, spec.columns)
    bad = issue(spec, stream, _ct=broken)
    good = issue(spec, stream, backend="python")
    assert not np.array_equal(bad.cycles, good.cycles)
    violations = check(spec, bad.cycles, stream)
    assert violations and all("nRCDRDMAC" in v.rule for v in violations)
    assert check(spec, good.cycles, stream) == []


def test_checker_reports_rule_commands_cycles_and_gap(refdata):
    spec = load_timing_file(next((refdata / "pim").glob("*.timing.yaml")))
    stream = mac_rows(1, 4)
    cycles = issue(spec, stream).cycles.copy()
    cycles[1] -= 5  # first MAC16 five cycles too early
    (v,) = check(spec, cycles, stream)
    assert v.first.startswith("ACT16") and v.command.startswith("MAC16")
    assert v.required == spec.timing["nRCDRDMAC"] and v.actual == spec.timing["nRCDRDMAC"] - 5
    assert "nRCDRDMAC" in str(v)


def _random_release(rng, n):
    """External release times: mostly none, sometimes a jump ahead."""
    rel = np.zeros(n, dtype=np.int64)
    mask = rng.random(n) < 0.1
    rel[mask] = rng.integers(0, 40 * n, mask.sum())
    return rel


@pytest.mark.parametrize("config", [1, 2, 4, 7])
def test_release_times_kernel_equals_twin(config):
    preset, overrides, refresh = CONFIGS[config]
    base = _spec(preset, overrides, refresh)
    rng = np.random.default_rng(77 + config)
    for k in range(300):
        stream = random_stream(rng, int(rng.integers(1, 80)), rows=8, columns=base.columns,
                               gb_slots=base.gb_slots, commands=base.commands)
        rel = _random_release(rng, len(stream))
        fast = issue(base, stream, release=rel)
        slow = issue(base, stream, release=rel, backend="python")
        assert np.array_equal(fast.cycles, slow.cycles), k
        assert all(np.array_equal(fast.inserted[f], slow.inserted[f]) for f in fast.inserted)
        assert (fast.cycles >= rel).all()
        cycles, log = merge_log(stream, fast)
        assert check(base, cycles, log) == []


@pytest.mark.parametrize("backend", ["numba", "python"])
def test_issuing_in_pieces_equals_issuing_at_once(backend):
    """A channel's state carries everything: split a stream anywhere, issue the pieces one
    after another on the same state, and every cycle and inserted command is the same."""
    from pimsim.engine import EngineState

    rng = np.random.default_rng(5)
    for config in (1, 2, 4):
        preset, overrides, refresh = CONFIGS[config]
        spec = _spec(preset, overrides, refresh, phase=137)
        for _ in range(60 if backend == "numba" else 25):
            stream = random_stream(rng, int(rng.integers(2, 150)), rows=8, columns=spec.columns,
                                   gb_slots=spec.gb_slots, commands=spec.commands)
            rel = _random_release(rng, len(stream))
            whole = issue(spec, stream, release=rel, backend=backend)
            cuts = sorted(set(rng.integers(1, len(stream), int(rng.integers(1, 5))).tolist()))
            # a TMOD is placed by the command after it: a piece must not end with one
            cuts = [c for c in cuts if stream.cmd[c - 1] != CMD_ID["TMOD"]]
            state = EngineState(spec, backend)
            cycles, inserted = [], {f: [] for f in whole.inserted}
            for a, b in zip([0] + cuts, cuts + [len(stream)]):
                part = type(stream)(*(getattr(stream, f)[a:b] for f in ("cmd", "bg", "ba", "row", "col")))
                res = issue(spec, part, release=rel[a:b], state=state, backend=backend)
                cycles.append(res.cycles)
                for f in inserted:
                    inserted[f].append(res.inserted[f] + (a if f == "before" else 0))
            assert np.array_equal(np.concatenate(cycles), whole.cycles)
            for f in inserted:
                assert np.array_equal(np.concatenate(inserted[f]), whole.inserted[f]), f
            assert state.last_cycle == max(whole.last_cycle, int(whole.cycles[-1]))


def test_release_story_and_state_misuse():
    from pimsim.engine import EngineState
    from pimsim.errors import PimsimError

    spec = _spec("pim-gpt", [], "off")
    stream = mac_rows(1, 4)
    free = issue(spec, stream).cycles
    rel = np.zeros(len(stream), dtype=np.int64)
    rel[2] = free[2] + 100  # the second MAC16 waits for its data
    held = issue(spec, stream, release=rel).cycles
    assert held[2] == rel[2] and held[3] == rel[2] + spec.timing["nMAC"]
    with pytest.raises(PimsimError, match="python backend"):
        issue(spec, stream, state=EngineState(spec, "python"))
    with pytest.raises(PimsimError, match="release has shape"):
        issue(spec, stream, release=np.zeros(3, dtype=np.int64))
