# %% [markdown]
# # The gap to the DRAM-timing bound, and what closes it
#
# The DRAM-timing bound is the time the banks need to stream the weight matrices with
# all-bank MACs (rows per bank x (nRCDRDMAC + (columns - 1) x nCCDL + nRTP + nRP)). The
# simulated latency is above it by refresh, global-buffer loads and their mode changes,
# result read-outs, parameter reads, K/V appends and attention, and the latency of the
# ASIC and the links between the matrix products. This notebook takes the removable parts
# away one at a time and together, on the two largest models of the paper:
#
# * `refresh.policy=off`: no refresh at all (not buildable; it shows what refresh costs);
# * `link.latency_ps=0`: no controller, PHY or board latency between ASIC and channels;
# * `asic.lanes=100000`: an ASIC so wide that every operator takes its pipeline depth only.
#
# What remains with all three gone is the global-buffer loads, mode changes and read-outs
# inside the kernels, and the attention chain of each layer.
#
# `PIMSIM_NOTEBOOK_SMALL=1` runs a reduced sweep (the test suite does);
# `PIMSIM_NOTEBOOK_FIGURES=DIR` saves the figures as PNG files.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt

from pimsim.sweep import sweep

SMALL = os.environ.get("PIMSIM_NOTEBOOK_SMALL") == "1"
FIGURES = os.environ.get("PIMSIM_NOTEBOOK_FIGURES")
MODELS = ["gpt2-small"] if SMALL else ["gpt2-xl", "gpt3-xl"]

# %%
result = sweep({
    "name": "gap-to-bound", "preset": "pim-gpt", "models": MODELS,
    "prompt": 4 if SMALL else 32, "tokens": 1 if SMALL else 2,
    "axes": {"refresh.policy": ["ab", "off"], "link.latency_ps": [5000, 0],
             "asic.lanes": [64, 100000]},
}, workers=1 if SMALL else None)
print(f"{len(result.ok)} of {result.total} points ok")


# %%
def label(refresh, link, lanes):
    changed = [name for name, on in (("refresh off", refresh == "off"), ("link latency 0", link == 0),
                                     (f"ASIC {lanes:,} lanes", lanes > 64)) if on]
    return " + ".join(changed) or "default"


rows = list(zip(result.column("model"), result.column("refresh.policy"),
                result.column("link.latency_ps"), result.column("asic.lanes"),
                result.column("latency_per_token_s"), result.column("bounds.dram_timing_bound_s")))
gap = {}
for model, refresh, link, lanes, latency, bound in rows:
    gap.setdefault(model, {})[label(refresh, link, lanes)] = 100 * (latency / bound - 1)
for model, by in gap.items():
    print(model)
    for name, pct in sorted(by.items(), key=lambda kv: -kv[1]):
        print(f"  {name:52s} {pct:+6.1f} % above the bound")

# %%
fig, ax = plt.subplots(figsize=(10, 4.5))
names = sorted(next(iter(gap.values())), key=lambda n: -next(iter(gap.values()))[n])
width = 0.8 / len(gap)
for i, (model, by) in enumerate(gap.items()):
    ax.barh([j + i * width for j in range(len(names))], [by[n] for n in names], height=width,
            label=model)
ax.set_yticks([j + width * (len(gap) - 1) / 2 for j in range(len(names))], names)
ax.invert_yaxis()
ax.axvline(10, color="grey", linestyle="--", linewidth=1)
ax.set_xlabel("latency above the DRAM-timing bound (%)")
ax.set_title("What each removable part of the system costs")
ax.legend()
fig.tight_layout()
if FIGURES:
    Path(FIGURES).mkdir(parents=True, exist_ok=True)
    fig.savefig(Path(FIGURES) / "gap_to_bound.png", dpi=100)
