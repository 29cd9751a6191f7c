# %% [markdown]
# # Mapping strategies: row hits and latency
#
# The weight and KV-cache layouts of the mapping strategies (`pim-gpt`, `naive`,
# `column`, `sliced`) compared on row-hit rate and latency per token.
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
strategies = ["pim-gpt", "naive", "column", "sliced"]
models = ["gpt2-small"] if SMALL else ["gpt2-small", "gpt2-medium", "gpt3-xl"]
result = sweep({
    "name": "mapping-strategies", "preset": "pim-gpt", "models": models,
    "prompt": 4 if SMALL else 128, "tokens": 1 if SMALL else 4,
    "axes": {"strategy": strategies},
}, workers=1 if SMALL else None)
print(f"{len(result.ok)} of {result.total} points ok")

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
width = 0.8 / len(strategies)
for i, strategy in enumerate(strategies):
    rows = [r for m in models for r in result.where(model=m, strategy=strategy)]
    x = [models.index(r["model"]) + (i - (len(strategies) - 1) / 2) * width for r in rows]
    ax1.bar(x, result.column("row_hit_rate", rows), width, label=strategy)
    ax2.bar(x, [v * 1e6 for v in result.column("latency_per_token_s", rows)], width, label=strategy)
for ax in (ax1, ax2):
    ax.set_xticks(range(len(models)), models)
    ax.legend(title="mapping", loc="lower right")
ax1.set_ylabel("row-hit rate")
ax1.set_title("Row hits")
ax2.set_ylabel("us per token")
ax2.set_title("Latency per token")
fig.tight_layout()
if FIGURES:
    Path(FIGURES).mkdir(parents=True, exist_ok=True)
    fig.savefig(Path(FIGURES) / "mapping_strategies.png", dpi=100)
