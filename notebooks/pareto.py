# %% [markdown]
# # Pareto front: tokens/s against energy per token
#
# A few hundred random configurations (channels, MAC lanes, PIM and ASIC clocks, pin data
# rate, mapping strategy) of GPT-2 small decoding, the Pareto front of throughput against
# energy, and the paper's configuration (the `pim-gpt` preset as it is) marked. The same
# sweep as a file: `examples/sweeps/pareto.yaml`.
#
# `PIMSIM_NOTEBOOK_SMALL=1` runs a reduced sweep (the test suite does);
# `PIMSIM_NOTEBOOK_FIGURES=DIR` saves the figures as PNG files.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt

from pimsim.sweep import pareto_front, sweep

SMALL = os.environ.get("PIMSIM_NOTEBOOK_SMALL") == "1"
FIGURES = os.environ.get("PIMSIM_NOTEBOOK_FIGURES")

# %%
result = sweep({
    "name": "pareto", "preset": "pim-gpt", "models": ["gpt2-small"],
    "prompt": 4 if SMALL else 32, "tokens": 1,
    "sampling": "random", "samples": 8 if SMALL else 300, "seed": 7,
    "axes": {
        "organization.channels": [4, 8, 16, 32],
        "pim.mac_lanes": [4, 8, 16],
        "pim.clock_MHz": {"low": 250, "high": 2000, "scale": "log"},
        "asic.clock_MHz": {"low": 100, "high": 2000, "scale": "log"},
        "clock.data_rate_Gbps": [12, 14, 16],
        "strategy": ["pim-gpt", "naive", "column"],
    },
    "points": [{}],  # the paper's configuration: the preset as it is
}, workers=1 if SMALL else None)
print(f"{len(result.ok)} of {result.total} points ok")
paper = result.rows[-1]
front = pareto_front(result.ok, x="tokens_per_s", y="energy_per_token_J.nominal")

# %%
fig, ax = plt.subplots(figsize=(7, 5))
ax.scatter(result.column("tokens_per_s"), [e * 1e3 for e in result.column("energy_per_token_J.nominal")],
           s=10, alpha=0.5, label="configurations")
ax.plot(result.column("tokens_per_s", front), [e * 1e3 for e in result.column("energy_per_token_J.nominal", front)],
        color="tab:red", marker="o", ms=4, label="Pareto front")
ax.scatter([paper["tokens_per_s"]], [paper["energy_per_token_J.nominal"] * 1e3], marker="*", s=250,
           color="gold", edgecolor="black", zorder=5, label="paper's configuration (pim-gpt)")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("tokens/s")
ax.set_ylabel("mJ per token (nominal)")
ax.set_title(f"GPT-2 small: {len(result.ok)} configurations")
ax.legend()
fig.tight_layout()
if FIGURES:
    Path(FIGURES).mkdir(parents=True, exist_ok=True)
    fig.savefig(Path(FIGURES) / "pareto.png", dpi=100)
