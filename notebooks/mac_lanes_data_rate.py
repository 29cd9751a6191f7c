# %% [markdown]
# # MAC lanes per bank and pin data rate
#
# Throughput and internal bandwidth as the BF16 multipliers per bank MAC unit
# (`pim.mac_lanes`) and the GDDR6 pin data rate (`clock.data_rate_Gbps`) change.
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
lanes = [8, 16] if SMALL else [1, 2, 4, 8, 16]
rates = [12, 16] if SMALL else [12, 14, 16]
result = sweep({
    "name": "mac-lanes-data-rate", "preset": "pim-gpt", "models": ["gpt2-small"],
    "prompt": 4 if SMALL else 32, "tokens": 1 if SMALL else 4,
    "axes": {"pim.mac_lanes": lanes, "clock.data_rate_Gbps": rates},
}, workers=1 if SMALL else None)
print(f"{len(result.ok)} of {result.total} points ok")

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
for rate in rates:
    rows = result.where(clock__data_rate_Gbps=rate)
    x = result.column("pim.mac_lanes", rows)
    ax1.plot(x, result.column("tokens_per_s", rows), marker="o", label=f"{rate} Gb/s")
    used = [b / p for b, p in zip(result.column("bandwidth.internal_Bps", rows),
                                  result.column("bandwidth.internal_peak_Bps", rows))]
    ax2.plot(x, used, marker="o", label=f"{rate} Gb/s")
for ax in (ax1, ax2):
    ax.set_xscale("log", base=2)
    ax.set_xlabel("MAC lanes per bank")
    ax.legend(title="pin data rate")
ax1.set_ylabel("tokens/s")
ax1.set_title("Decode throughput")
ax2.set_ylabel("internal bandwidth / peak")
ax2.set_title("Internal bandwidth used")
fig.tight_layout()
if FIGURES:
    Path(FIGURES).mkdir(parents=True, exist_ok=True)
    fig.savefig(Path(FIGURES) / "mac_lanes_data_rate.png", dpi=100)
