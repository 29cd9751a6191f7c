# %% [markdown]
# # Channel scaling: 1 to 32 GDDR6-PIM channels
#
# Tokens per second and the latency breakdown as the number of PIM channels grows. Every
# point is one `pimsim.simulate` run on the `pim-gpt` preset with
# `organization.channels` overridden; a model that does not fit in few channels shows up
# as a failed row (its error is in the table) and is left out of the plots.
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
channels = [4, 8, 16] if SMALL else [1, 2, 4, 8, 16, 32]
models = ["gpt2-small"] if SMALL else ["gpt2-small", "gpt2-medium"]
result = sweep({
    "name": "channel-scaling", "preset": "pim-gpt", "models": models,
    "prompt": 4 if SMALL else 32, "tokens": 1 if SMALL else 4,
    "axes": {"organization.channels": channels},
}, workers=1 if SMALL else None)
print(f"{len(result.ok)} of {result.total} points ok")
for row in result.failed:
    print(f"  {row['model']}, {row['organization.channels']} channels: {row['error']}")

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
for model in models:
    rows = result.where(model=model)
    ax1.plot(result.column("organization.channels", rows), result.column("tokens_per_s", rows),
             marker="o", label=model)
ax1.set_xscale("log", base=2)
ax1.set_xlabel("PIM channels")
ax1.set_ylabel("tokens/s")
ax1.set_title("Decode throughput")
ax1.legend()

rows = result.where(model=models[-1])
parts = sorted(c for c in result.columns if c.startswith("breakdown_s."))
x = [str(ch) for ch in result.column("organization.channels", rows)]
bottom = [0.0] * len(rows)
for part in parts:
    us = [v * 1e6 for v in result.column(part, rows)]
    ax2.bar(x, us, bottom=bottom, label=part.split(".", 1)[1])
    bottom = [b + v for b, v in zip(bottom, us)]
ax2.set_xlabel("PIM channels")
ax2.set_ylabel("us per token (critical path)")
ax2.set_title(f"{models[-1]}: latency breakdown")
ax2.legend(fontsize=7)
fig.tight_layout()
if FIGURES:
    Path(FIGURES).mkdir(parents=True, exist_ok=True)
    fig.savefig(Path(FIGURES) / "channel_scaling.png", dpi=100)
