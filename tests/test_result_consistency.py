"""``pimsim simulate``'s numbers against each other: result.json, steps.csv, the printed
summary, the timeline and the plots of one run agree; totals, breakdowns, energies,
command counts, transfers, bandwidths and bounds relate as docs/simulate.md says, on the
default preset and under overrides. Every check compares quantities computed
independently (the engine's counts, the mapper's counts, the program's transfers, the
nodes' times, the preset's values); none compares with a recorded output."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import struct
from collections import Counter

import pytest

import pimsim
import workloads
from pimsim.cli import main
from pimsim.cli.map import summarize
from pimsim.config import load_preset

pytestmark = pytest.mark.e2e

PROMPT, TOKENS = 8, 3
CONFIGS = {
    "default": ("gpt2-small", ()),
    "refresh-off": ("gpt2-small", ("refresh.policy=off",)),
    "16-channels": ("gpt2-small", ("organization.channels=16",)),
    "asic-500MHz": ("gpt2-small", ("asic.clock_MHz=500",)),
    "1-result-register": ("gpt2-small", ("pim.result_registers=1",)),
    "per-bank-refresh": ("gpt2-small", ("refresh.policy=pb",)),
    "smollm2-135m": ("smollm2-135m", ()),
}
ALL = list(CONFIGS)
#: test_simulate.py checks these relations on the default preset already
OVERRIDDEN = [n for n in ALL if n != "default"]
#: all-bank refresh postponed to kernel boundaries (the preset's), or none
POSTPONED = ["default", "16-channels", "asic-500MHz", "1-result-register", "smollm2-135m"]
KERNEL_CATEGORIES = {"linear", "score", "context", "read", "write"}
PLOTS = ("latency_breakdown.png", "latency_by_position.png", "latency_by_op.png",
         "energy_breakdown.png")


class Run:
    """One ``pimsim simulate --out DIR --timeline`` run and what it wrote."""

    def __init__(self, name, tmp_path_factory):
        self.name = name
        self.model, self.overrides = CONFIGS[name]
        self.out = tmp_path_factory.mktemp(name)
        argv = ["simulate", self.model, "--prompt", str(PROMPT), "--tokens", str(TOKENS),
                "--out", str(self.out), "--timeline"]
        for o in self.overrides:
            argv += ["--set", o]
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert main(argv) == 0
        self.stdout = buf.getvalue()
        self.d = json.loads((self.out / "result.json").read_text())
        self.spec = load_preset("pim-gpt", list(self.overrides))
        self._trace = None

    @property
    def trace(self):
        """(track names by tid, complete events with integer ps ``start``/``end``)."""
        if self._trace is None:
            doc = json.loads((self.out / "timeline.json").read_text())
            tracks = {e["tid"]: e["args"]["name"] for e in doc["traceEvents"] if e["ph"] == "M"}
            events = [e for e in doc["traceEvents"] if e["ph"] == "X"]
            for e in events:
                e["start"] = round(e["ts"] * 1e6)
                e["end"] = e["start"] + round(e["dur"] * 1e6)
            self._trace = tracks, events
        return self._trace

    def per_token(self, *commands) -> float:
        return sum(self.d["command_counts"].get(c, 0) for c in commands) / TOKENS


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cache: dict[str, Run] = {}

    def get(name: str) -> Run:
        if name not in cache:
            cache[name] = Run(name, tmp_path_factory)
        return cache[name]

    return get


# ---------------------------------------------------------------- steps, files, summary

@pytest.mark.parametrize("name", ALL)
def test_steps_follow_each_other_and_make_the_totals(runs, name):
    d = runs(name).d
    steps = d["steps"]
    assert [s["kv_len"] for s in steps] == list(range(PROMPT + 1, PROMPT + TOKENS + 1))
    assert steps[0]["start_s"] == 0
    for a, b in zip(steps, steps[1:]):
        assert b["start_s"] == pytest.approx(a["start_s"] + a["latency_s"], rel=1e-12)
    # the simulator's clock at the end of the run is the sum of the step latencies
    assert d["total_time_s"] == pytest.approx(steps[-1]["start_s"] + steps[-1]["latency_s"],
                                              rel=1e-12)
    assert d["total_time_s"] == pytest.approx(sum(s["latency_s"] for s in steps), rel=1e-12)
    assert d["tokens_per_s"] * d["latency_per_token_s"] == pytest.approx(1, rel=1e-12)


@pytest.mark.parametrize("name", ["default", "16-channels"])
def test_steps_csv_holds_the_json_steps(runs, name):
    r = runs(name)
    with (r.out / "steps.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == TOKENS
    for i, (row, step) in enumerate(zip(rows, r.d["steps"])):
        assert int(row["step"]) == i and int(row["kv_len"]) == step["kv_len"]
        assert float(row["start_s"]) == step["start_s"]
        assert float(row["latency_s"]) == step["latency_s"]


@pytest.mark.parametrize("name", ["default", "refresh-off", "smollm2-135m"])
def test_summary_prints_the_json_numbers(runs, name):
    r = runs(name)
    s, d = r.stdout, r.d
    lines = {l.split("  ", 2)[1].strip(): l for l in s.splitlines() if l.startswith("  ")}
    assert s.splitlines()[0].startswith(f"{r.model} on {d['preset']} ({d['strategy']} mapping), "
                                        f"{TOKENS} tokens after a {PROMPT}-token context")
    assert (f"{d['latency_per_token_s'] * 1e6:,.1f} us  ({d['tokens_per_s']:,.0f} tokens/s)"
            in lines["latency per token"])
    for k, v in d["breakdown_s"].items():
        assert f"{k} {v * 1e6:,.1f} us" in lines["breakdown"]
    top = sorted(d["breakdown_by_op_s"].items(), key=lambda kv: (-kv[1], kv[0]))[:4]
    assert lines["critical path ops"].count(" us") == 4
    for k, v in top:
        assert f"{k} {v * 1e6:,.1f} us" in lines["critical path ops"]
    assert f"{d['refresh_stall_s'] * 1e6:,.1f} us per channel" in lines["refresh stalls"]
    for k, v in d["channel_time_s"].items():
        assert (f"{k} {v * 1e6:,.1f} us" in lines["channel time"]) == (v * 1e6 >= 0.05)
    e = d["energy_per_token_J"]
    assert (f"{e['nominal'] * 1e3:,.3f} mJ (range {e['low'] * 1e3:,.3f} - {e['high'] * 1e3:,.3f})"
            in lines["energy per token"])
    assert f"{d['row_hit_rate']:.4f}" in lines["row-hit rate"]
    assert f"{d['asic_buffer_bytes']:,} B" in lines["ASIC buffer"]
    bw = d["bandwidth"]
    assert (f"internal {bw['internal_Bps'] / 1e12:,.2f} of {bw['internal_peak_Bps'] / 1e12:,.2f}"
            f" TB/s, pins {bw['pin_Bps'] / 1e9:,.1f} of {bw['pin_peak_Bps'] / 1e9:,.0f} GB/s"
            in lines["bandwidth"])


def test_the_api_gives_the_cli_result_and_timeline(runs):
    r = runs("default")
    api = pimsim.simulate("gpt2-small", prompt=PROMPT, tokens=TOKENS, timeline=True)
    assert api.to_json() == (r.out / "result.json").read_text()
    # every node of the API's timeline is one event of timeline.json, at its times
    _, events = r.trace
    assert (Counter((e["name"], e["cat"], e["start"], e["end"]) for e in events)
            == Counter((n, c, s, e) for n, c, _, s, e in api.timeline))
    # overrides as a mapping or as KEY=VALUE texts are the same --set
    r16 = runs("16-channels")
    api16 = pimsim.simulate("gpt2-small", prompt=PROMPT, tokens=TOKENS,
                            overrides={"organization.channels": 16})
    assert api16.to_json() == (r16.out / "result.json").read_text()


def test_schedulers_and_replay_give_one_result():
    ref = pimsim.simulate("gpt2-small", prompt=PROMPT, tokens=2).to_json()
    for kw in ({"scheduler": "listed"}, {"scheduler": "simpy"}, {"replay": False}):
        assert pimsim.simulate("gpt2-small", prompt=PROMPT, tokens=2, **kw).to_json() == ref, kw


def test_every_output_file_is_reproducible(runs, tmp_path):
    r = runs("default")
    argv = ["simulate", "gpt2-small", "--prompt", str(PROMPT), "--tokens", str(TOKENS),
            "--out", str(tmp_path / "again"), "--timeline"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0
    names = sorted(p.name for p in r.out.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "again").iterdir())
    for n in names:
        assert (r.out / n).read_bytes() == (tmp_path / "again" / n).read_bytes(), n


@pytest.mark.parametrize("name", ["default", "refresh-off"])
def test_plots_are_distinct_non_empty_pngs(runs, name):
    r = runs(name)
    blobs = [(r.out / p).read_bytes() for p in PLOTS]
    for b in blobs:
        assert b[:8] == b"\x89PNG\r\n\x1a\n" and b[12:16] == b"IHDR"
        width, height = struct.unpack(">II", b[16:24])
        assert width > 200 and height > 100
        assert b.rstrip().endswith(b"IEND\xaeB`\x82")
    assert len(set(blobs)) == len(blobs)


# ---------------------------------------------------------------- time

@pytest.mark.parametrize("name", OVERRIDDEN)
def test_breakdowns_add_up_to_the_latency_under_overrides(runs, name):
    d = runs(name).d
    lat = d["latency_per_token_s"]
    assert all(v >= 0 for v in d["breakdown_s"].values())
    assert sum(d["breakdown_s"].values()) == pytest.approx(lat, rel=1e-9)
    assert (sum(d["breakdown_by_op_s"].values()) + d["breakdown_s"]["waiting"]
            + d["breakdown_s"].get("transfers", 0)) == pytest.approx(lat, rel=1e-9)
    ct = d["channel_time_s"]
    assert all(v >= 0 for v in ct.values()) and ct["mac"] > 0
    assert sum(ct.values()) == pytest.approx(lat, rel=1e-9)


@pytest.mark.parametrize("name", ALL)
def test_refresh_accounting(runs, name):
    r = runs(name)
    d, dram = r.d, r.spec.dram
    ct = d["channel_time_s"]
    refreshes = r.per_token("REFab", "REFpb")
    if name == "refresh-off":
        assert refreshes == 0 and d["refresh_stall_s"] == 0
        assert ct.get("refresh", 0) == 0 and d["energy_breakdown_J"]["refresh"] == 0
        return
    # refresh cannot hold a channel back longer than the time that passed
    assert refreshes > 0 and 0 < d["refresh_stall_s"] <= d["latency_per_token_s"]
    if name in POSTPONED:
        # each all-bank refresh holds its channel for nRFCab, no more, no less
        assert ct["refresh"] == pytest.approx(
            r.per_token("REFab") * dram.timing["nRFCab"] * dram.tCK_ps * 1e-12 / dram.channels,
            rel=1e-9)


def test_a_refresh_when_due_holds_its_channel_for_nrfcab():
    ov = ["refresh.postpone=0", "refresh.pull_in=0"]
    d = pimsim.simulate("gpt2-small", prompt=PROMPT, tokens=TOKENS, overrides=ov).to_dict()
    dram = load_preset("pim-gpt", ov).dram
    assert d["channel_time_s"]["refresh"] == pytest.approx(
        d["command_counts"]["REFab"] / TOKENS * dram.timing["nRFCab"] * dram.tCK_ps * 1e-12
        / dram.channels, rel=1e-9)


def test_later_tokens_do_not_change_earlier_ones(runs):
    """A shorter run is the longer run's beginning: same step latencies and less of every
    command, operation and energy."""
    long = runs("default").d
    short = pimsim.simulate("gpt2-small", prompt=PROMPT, tokens=2).to_dict()
    assert short["steps"] == long["steps"][:2]
    for k, v in short["command_counts"].items():
        assert v <= long["command_counts"][k]
    assert long["command_counts"]["MAC16"] > short["command_counts"]["MAC16"]
    for corner in ("low", "nominal", "high"):
        assert (long["energy_per_token_J"][corner] * TOKENS
                > short["energy_per_token_J"][corner] * 2)
    assert long["bounds"] == short["bounds"]


# ---------------------------------------------------------------- energy

@pytest.mark.parametrize("name", ALL)
def test_energy_corners_bound_every_category(runs, name):
    d = runs(name).d
    nominal, ranges = d["energy_breakdown_J"], d["energy_breakdown_range_J"]
    assert set(ranges) == {"low", "high"}
    for corner in ("low", "high"):
        assert set(ranges[corner]) == set(nominal)
        assert sum(ranges[corner].values()) == pytest.approx(d["energy_per_token_J"][corner],
                                                             rel=1e-12)
    for k, v in nominal.items():
        assert 0 <= ranges["low"][k] <= v <= ranges["high"][k], k


def test_energy_charges_counts_and_time_at_fixed_rates(runs):
    """Each category is its own commands (or the channels' time) times one rate, the same
    in every configuration."""
    rates: dict[str, list] = {}
    for name in ALL:
        r = runs(name)
        d, dram = r.d, r.spec.dram
        e = d["energy_breakdown_J"]
        drivers = {
            "pim_mac": r.per_token("MAC16"),
            "dram_activate": r.per_token("ACT") + dram.banks * r.per_token("ACT16"),
            "refresh": r.per_token("REFab") + r.per_token("REFpb") / dram.banks,
            "controller": r.per_token(*d["command_counts"]),
            "background": dram.channels * d["latency_per_token_s"],
        }
        for k, x in drivers.items():
            if x:
                rates.setdefault(k, []).append(e[k] / x)
            else:
                assert e[k] == 0, (name, k)
    for k, v in rates.items():
        assert len(v) >= 5 and v == pytest.approx([v[0]] * len(v), rel=1e-9), k


# ---------------------------------------------------------------- counts and transfers

def _mapper_counts(r: Run) -> tuple[Counter, Counter]:
    """The mapper's command counts and transfer bytes over the run's decode steps."""
    trace = workloads.load_bundled(r.model)
    counts, transfers = Counter(), Counter()
    for kv in range(PROMPT + 1, PROMPT + TOKENS + 1):
        s = summarize(trace, r.spec, "pim-gpt", kv, PROMPT + TOKENS)
        counts.update(s["counts"])
        transfers.update(s["transfer_bytes"])
    return counts, transfers


def test_without_refresh_the_commands_are_the_mappers(runs):
    r = runs("refresh-off")
    counts, transfers = _mapper_counts(r)
    assert r.d["command_counts"] == dict(counts)
    assert r.d["transfer_bytes"] == dict(transfers)
    cols = sum(counts[c] for c in ("MAC16", "RD", "WR"))
    assert r.d["row_hit_rate"] == pytest.approx((cols - counts["ACT"] - counts["ACT16"]) / cols,
                                                rel=1e-12)


@pytest.mark.parametrize("name", POSTPONED)
def test_refresh_adds_only_refreshes_precharges_and_reopenings(runs, name):
    r = runs(name)
    counts, transfers = _mapper_counts(r)
    sim = r.d["command_counts"]
    assert r.d["transfer_bytes"] == dict(transfers)
    for c in set(sim) | set(counts):
        if c not in ("REFab", "PREA", "ACT16"):
            assert sim.get(c, 0) == counts[c], c
    # a row re-opened after a refresh was closed for it
    reopened, closed = sim["ACT16"] - counts["ACT16"], sim["PREA"] - counts["PREA"]
    assert 0 <= reopened <= closed <= sim["REFab"]
    cols = sum(counts[c] for c in ("MAC16", "RD", "WR"))
    assert 0 < r.d["row_hit_rate"] <= (cols - counts["ACT"] - counts["ACT16"]) / cols


@pytest.mark.parametrize("name", ALL)
def test_transfers_cross_the_pins_as_bursts(runs, name):
    r = runs(name)
    d, col = r.d, r.spec.dram.column_bytes
    cc = d["command_counts"]
    assert d["transfer_bytes"]["to_pim"] == (cc.get("WRGB", 0) + cc.get("WR", 0)) * col
    assert d["transfer_bytes"]["to_asic"] == (cc.get("RD", 0) + cc.get("RDMAC16", 0)) * col
    assert d["bandwidth"]["pin_Bps"] * d["total_time_s"] == pytest.approx(
        sum(d["transfer_bytes"].values()), rel=1e-9)


# ---------------------------------------------------------------- bandwidth and bounds

@pytest.mark.parametrize("name", ALL)
def test_bandwidth_and_bounds(runs, name):
    r = runs(name)
    d = r.d
    bw, b, lat = d["bandwidth"], d["bounds"], d["latency_per_token_s"]
    if name != "default":
        assert 0 < bw["internal_Bps"] <= bw["internal_peak_Bps"]
        assert 0 < bw["pin_Bps"] <= bw["pin_peak_Bps"]
        assert b["bandwidth_bound_s"] <= b["dram_timing_bound_s"] <= lat
    # every weight passes the MAC units at least once a token: the bytes they read per
    # token are at least the bytes the bandwidth bound streams at the peak
    assert bw["internal_Bps"] * lat >= b["bandwidth_bound_s"] * bw["internal_peak_Bps"]
    assert 0 < d["asic_buffer_bytes"] <= r.spec.asic.sram_bytes


def test_bounds_depend_only_on_the_weights_and_the_organisation(runs):
    ref = runs("default").d["bounds"]
    for name in ("refresh-off", "asic-500MHz", "1-result-register", "per-bank-refresh"):
        assert runs(name).d["bounds"] == ref, name
    wide = runs("16-channels").d["bounds"]
    for k, v in ref.items():
        assert wide[k] == pytest.approx(v / 2, rel=1e-12), k
    assert runs("16-channels").d["latency_per_token_s"] < runs("default").d["latency_per_token_s"]


# ---------------------------------------------------------------- timeline

def _by_track(events):
    out: dict[int, list] = {}
    for e in events:
        out.setdefault(e["tid"], []).append(e)
    return out


@pytest.mark.parametrize("name", ALL)
def test_timeline_tracks_hold_one_event_at_a_time(runs, name):
    """Perfetto takes only nested complete events on a track: no two events of a track
    overlap, events come in time order, and each is on its resource's track."""
    tracks, events = runs(name).trace
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    for tid, evs in _by_track(events).items():
        evs.sort(key=lambda e: (e["start"], e["end"]))
        for a, b in zip(evs, evs[1:]):
            assert b["start"] >= a["end"], (tracks[tid], a["name"], b["name"])
    for e in events:
        track = tracks[e["tid"]]
        if e["cat"] == "asic":
            assert track == "ASIC"
        else:
            kind, ch = track.split(" ")[:2]
            assert kind == ("channel" if e["cat"] in KERNEL_CATEGORIES else "link")
            assert f":ch{ch}:" in e["name"]


@pytest.mark.parametrize("name", ALL)
def test_timeline_spans_the_run_and_holds_the_busy_time(runs, name):
    r = runs(name)
    d, dram = r.d, r.spec.dram
    _, events = r.trace
    assert min(e["start"] for e in events) == 0
    assert max(e["end"] for e in events) * 1e-12 == pytest.approx(d["total_time_s"], rel=1e-12)
    # the ASIC's events are its operations' cycles, each rounded up to a picosecond
    asic = [e["end"] - e["start"] for e in events if e["cat"] == "asic"]
    cycles_ps = d["asic_operations"]["cycles"] * 1e6 / r.spec.asic.clock_MHz
    assert cycles_ps - 1e-6 * cycles_ps <= sum(asic) < cycles_ps + len(asic)
    # the critical path's nodes are some of the nodes
    assert d["breakdown_s"]["asic_ops"] * TOKENS <= sum(asic) * 1e-12 * (1 + 1e-12)
    kernels = sum(e["end"] - e["start"] for e in events if e["cat"] in KERNEL_CATEGORIES) * 1e-12
    bd = d["breakdown_s"]
    assert (bd["pim_vmm"] + bd["attention"] + bd["dram_access"]) * TOKENS <= kernels
    # every command interval of a kernel lies inside the kernel's node (refreshes issued
    # before a kernel may lie outside it)
    ct = d["channel_time_s"]
    inside = d["latency_per_token_s"] - ct["idle"] - ct.get("refresh", 0)
    assert inside * dram.channels * TOKENS <= kernels * (1 + 1e-9)


def test_a_slower_asic_takes_longer_for_the_same_work(runs):
    base, slow = runs("default"), runs("asic-500MHz")
    assert slow.spec.asic.clock_MHz < base.spec.asic.clock_MHz
    assert slow.d["asic_operations"] == base.d["asic_operations"]
    for c in ("MAC16", "WRGB", "RDMAC16", "RD", "WR", "TMOD"):
        assert slow.d["command_counts"][c] == base.d["command_counts"][c], c

    def asic_ps(r):
        return sum(e["end"] - e["start"] for e in r.trace[1] if e["cat"] == "asic")

    assert asic_ps(slow) / asic_ps(base) == pytest.approx(
        base.spec.asic.clock_MHz / slow.spec.asic.clock_MHz, rel=1e-3)
    assert slow.d["latency_per_token_s"] > base.d["latency_per_token_s"]
    assert slow.d["breakdown_s"]["asic_ops"] > base.d["breakdown_s"]["asic_ops"]
