# %% [markdown]
# # Energy per token: breakdown and uncertainty
#
# Where the energy of a decode token goes (PIM MACs, activations, background, refresh,
# pins, ASIC, ...) and the low-high range the energy model's uncertain parameters give.
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

# %%
models = ["gpt2-small"] if SMALL else ["gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl"]
result = sweep({
    "name": "energy-breakdown", "preset": "pim-gpt", "models": models,
    "prompt": 4 if SMALL else 128, "tokens": 1 if SMALL else 4,
    "axes": {"organization.channels": [8, 16]},
}, workers=1 if SMALL else None)
print(f"{len(result.ok)} of {result.total} points ok")

# %%
rows = result.ok
labels = [f"{r['model']}\n{r['organization.channels']} ch" for r in rows]
parts = sorted(c for c in result.columns if c.startswith("energy_breakdown_J."))
fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(rows)), 4.5))
bottom = [0.0] * len(rows)
for part in parts:
    mj = [v * 1e3 for v in result.column(part, rows)]
    ax.bar(labels, mj, bottom=bottom, label=part.split(".", 1)[1])
    bottom = [b + v for b, v in zip(bottom, mj)]
nominal = [v * 1e3 for v in result.column("energy_per_token_J.nominal", rows)]
low = [v * 1e3 for v in result.column("energy_per_token_J.low", rows)]
high = [v * 1e3 for v in result.column("energy_per_token_J.high", rows)]
ax.errorbar(labels, nominal, yerr=[[n - lo for n, lo in zip(nominal, low)],
                                   [hi - n for n, hi in zip(nominal, high)]],
            fmt="none", ecolor="black", capsize=4, label="low-high range")
ax.set_ylabel("mJ per token (stacked: nominal)")
ax.set_title("Energy per decode token")
ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
fig.tight_layout()
if FIGURES:
    Path(FIGURES).mkdir(parents=True, exist_ok=True)
    fig.savefig(Path(FIGURES) / "energy_breakdown.png", dpi=100)
