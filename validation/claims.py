"""The paper's claims as checks, computed from simulation runs and baseline models.

Every number comes from a run: :func:`collect` simulates the models (and the variants the
claims need) with :func:`pimsim.simulate`, and :func:`evaluate` turns the results, the
fitted/spec baseline models (:mod:`validation.baselines`) and the energy ranges into one
row per claim: the paper's value, ours, the tolerance and the verdict. Baselines for the
paper's T4 and Xeon Gold 6154 are modelled (no such hardware here), so those rows say so.
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER = {
    "speedup_gpu": (41.0, 137.0),
    "speedup_cpu": (631.0, 1074.0),
    "energy_gpu_v1": (339.0, 1085.0),
    "energy_gpu_rev": (123.0, 383.0),
    "energy_cpu_v1": (890.0, 1632.0),
    "energy_cpu_rev": (320.0, 602.0),
    "row_hit": 0.98,
    "transfer_reduction": (110.0, 259.0),
    "non_vmm_share_gpt3_xl": 0.0116,
    "asic_100mhz_slowdown": 0.20,
}
#: Board / package power while decoding (W): T4 loaded 30-70 (shared reference energy.md B4),
#: Xeon Gold 6154 TDP 200 per socket (B5, an upper bound; batch-1 power not published).
T4_POWER_W = (30.0, 70.0)
XEON_POWER_W = (100.0, 200.0)   # low assumed: half the TDP


@dataclass
class Runs:
    models: dict          # model -> SimulationResult dict (base configuration)
    asic_100mhz: dict     # model -> result dict with asic.clock_MHz=100
    channels: dict        # channel count -> result dict (scaling model)
    scaling_model: str
    prompt: int
    tokens: int


def collect(models, *, prompt: int, tokens: int, scaling_model: str, channel_counts=(4, 8, 16),
            progress=None) -> Runs:
    import pimsim

    jobs = [(m, ()) for m in models] + [(m, ("asic.clock_MHz=100",)) for m in models]
    jobs += [(scaling_model, (f"organization.channels={c}",)) for c in channel_counts]
    out = {}
    for i, (m, ov) in enumerate(jobs):
        out[(m, ov)] = pimsim.simulate(m, prompt=prompt, tokens=tokens, overrides=ov).to_dict()
        if progress:
            progress(i + 1, len(jobs))
    return Runs(models={m: out[(m, ())] for m in models},
                asic_100mhz={m: out[(m, ("asic.clock_MHz=100",))] for m in models},
                channels={c: out[(scaling_model, (f"organization.channels={c}",))] for c in channel_counts},
                scaling_model=scaling_model, prompt=prompt, tokens=tokens)


def _span(values):
    return (min(values), max(values))


def _overlap(ours, paper) -> bool:
    return ours[0] <= paper[1] and paper[0] <= ours[1]


def _lanes() -> int:
    from pimsim.config import load_preset

    return load_preset("pim-gpt").asic.lanes


def evaluate(runs: Runs) -> list[dict]:
    """One row per claim: claim, paper, ours, tolerance, verdict, basis."""
    from validation.baselines import estimate

    ctx = runs.prompt + runs.tokens
    rows = []
    sp_gpu, sp_cpu, en_gpu, en_cpu, xfer = [], [], [], [], []
    for m, r in runs.models.items():
        pim_s = r["latency_per_token_s"]
        e = r["energy_per_token_J"]
        t4 = estimate("T4", m, "fp16", ctx)
        xe = estimate("Xeon-6154", m, "fp32", ctx)
        sp_gpu += [t4["low_s"] / pim_s, t4["high_s"] / pim_s]
        sp_cpu += [xe["low_s"] / pim_s, xe["high_s"] / pim_s]
        en_gpu += [t4["low_s"] * T4_POWER_W[0] / e["high"], t4["high_s"] * T4_POWER_W[1] / e["low"]]
        en_cpu += [xe["low_s"] * XEON_POWER_W[0] / e["high"], xe["high_s"] * XEON_POWER_W[1] / e["low"]]
        weight_bytes = 2 * r["parameters"]  # what a GDDR6 baseline moves off-chip per token
        pins = sum(r["transfer_bytes"].values())
        xfer.append(weight_bytes / pins)

    def row(claim, paper, ours, tolerance, ok, basis, why=""):
        rows.append({"claim": claim, "paper": paper, "ours": ours, "tolerance": tolerance,
                     "verdict": "reproduced" if ok else "differs", "basis": basis,
                     "explanation": "" if ok else why})

    first = next(iter(runs.models))
    f = runs.models[first]
    t4_first = estimate("T4", first, "fp16", ctx)
    xe_first = estimate("Xeon-6154", first, "fp32", ctx)

    g, c = _span(sp_gpu), _span(sp_cpu)
    row("speedup over GPU (T4)", PAPER["speedup_gpu"], g, "ranges overlap", _overlap(g, PAPER["speedup_gpu"]),
        "simulated PIM latency vs modelled T4 (spec bandwidth x 60-78 %, HF eager 0.32-0.95 ms/layer, FP16)",
        f"for {first} the T4 model gives {t4_first['low_s'] * 1e3:.1f}-{t4_first['high_s'] * 1e3:.1f} ms "
        f"against {f['latency_per_token_s'] * 1e6:.0f} us simulated")
    row("speedup over CPU (Xeon Gold 6154)", PAPER["speedup_cpu"], c, "ranges overlap",
        _overlap(c, PAPER["speedup_cpu"]),
        "simulated PIM latency vs modelled Xeon 6154 (128 GB/s x 55-70 %, 1-2 ms/layer, FP32)",
        f"for {first} the paper's range implies a CPU at "
        f"{PAPER['speedup_cpu'][0] * f['latency_per_token_s'] * 1e3:.0f}-"
        f"{PAPER['speedup_cpu'][1] * f['latency_per_token_s'] * 1e3:.0f} ms/token given our PIM latency; "
        f"our Xeon model gives {xe_first['low_s'] * 1e3:.0f}-{xe_first['high_s'] * 1e3:.0f} ms "
        f"(measured CPU runs of this project are in the report's latency table), so the paper's CPU baseline was "
        f"slower than a bandwidth-plus-overhead Xeon, or our PIM latency is higher than the paper's")
    eg, ec = _span(en_gpu), _span(en_cpu)
    row("energy efficiency over GPU", (PAPER["energy_gpu_rev"][0], PAPER["energy_gpu_v1"][1]), eg,
        "ranges overlap (revised 123-383, v1 339-1085)",
        _overlap(eg, (PAPER["energy_gpu_rev"][0], PAPER["energy_gpu_v1"][1])),
        "PIM energy range vs modelled T4 time x 30-70 W")
    row("energy efficiency over CPU", (PAPER["energy_cpu_rev"][0], PAPER["energy_cpu_v1"][1]), ec,
        "ranges overlap (revised 320-602, v1 890-1632)",
        _overlap(ec, (PAPER["energy_cpu_rev"][0], PAPER["energy_cpu_v1"][1])),
        "PIM energy range vs modelled Xeon time x 100-200 W")
    hit = _span([r["row_hit_rate"] for r in runs.models.values()])
    row("row-hit rate", PAPER["row_hit"], hit, "within 3 points", abs(hit[0] - PAPER["row_hit"]) <= 0.03
        and abs(hit[1] - PAPER["row_hit"]) <= 0.03, "simulated command counts, pim-gpt mapping")
    x = _span(xfer)
    row("off-chip transfer reduction", PAPER["transfer_reduction"], x, "ranges overlap",
        _overlap(x, PAPER["transfer_reduction"]),
        "BF16 weight bytes a GDDR6 baseline reads per token vs PIM pin bytes per token (simulated)",
        f"{first} moves {sum(f['transfer_bytes'].values()) / 1e6:.2f} MB per token over the pins "
        f"(to PIM {f['transfer_bytes'].get('to_pim', 0) / 1e6:.2f} MB: the input vector is written "
        f"into every channel's global buffer, once per pass); fewer global-buffer reloads or a "
        f"broadcast to all channels would raise the ratio")
    nv_model = "gpt3-xl" if "gpt3-xl" in runs.models else list(runs.models)[-1]
    r = runs.models[nv_model]
    b = r["breakdown_s"]
    share = (b.get("asic_ops", 0) + b.get("transfers", 0)) / r["latency_per_token_s"]
    row(f"share of latency outside VMM ({nv_model})", PAPER["non_vmm_share_gpt3_xl"], share,
        "within 2x", PAPER["non_vmm_share_gpt3_xl"] / 2 <= share <= 2 * PAPER["non_vmm_share_gpt3_xl"],
        "critical-path ASIC operations and transfers over the latency",
        f"ASIC operations take {b.get('asic_ops', 0) * 1e6:.1f} us of {r['latency_per_token_s'] * 1e6:.0f} us "
        f"on the critical path with asic.lanes={_lanes()} (assumed; the paper's unit counts are not public)")
    slow = _span([runs.asic_100mhz[m]["latency_per_token_s"] / runs.models[m]["latency_per_token_s"] - 1
                  for m in runs.models])
    row("ASIC 1 GHz -> 100 MHz slowdown", PAPER["asic_100mhz_slowdown"], slow, "at most 20 %",
        slow[1] <= PAPER["asic_100mhz_slowdown"], "simulated with asic.clock_MHz=100",
        "the ASIC's critical-path share (above) grows 10x at 100 MHz; with more lanes "
        "(asic.lanes) or overlap of ASIC work with the next VMM it would shrink")
    counts = sorted(runs.channels)
    lat = [runs.channels[k]["latency_per_token_s"] for k in counts]
    eff = (lat[0] / lat[-1]) / (counts[-1] / counts[0])
    big = runs.channels[counts[-1]]
    bb = big["breakdown_s"]
    row(f"channel scaling ({runs.scaling_model}, {counts[0]}->{counts[-1]} channels)", "almost linear", eff,
        "efficiency >= 0.85", eff >= 0.85, "latency ratio over channel ratio, simulated",
        f"at {counts[-1]} channels {bb.get('asic_ops', 0) * 1e6:.0f} us of ASIC operations and "
        f"{bb.get('waiting', 0) * 1e6:.0f} us of waiting stay on the critical path of "
        f"{big['latency_per_token_s'] * 1e6:.0f} us; they do not shrink with more channels")
    return rows
