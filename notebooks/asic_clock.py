# %% [markdown]
# # ASIC clock: 100 MHz to 2 GHz
#
# How much of the decode latency the ASIC (softmax, layer norm, GELU, residuals) costs as
# its clock changes, with the PIM memory held at the `pim-gpt` preset.
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
clock = [100, 1000, 2000] if SMALL else {"low": 100, "high": 2000, "num": 10, "scale": "log"}
result = sweep({
    "name": "asic-clock", "preset": "pim-gpt", "models": ["gpt2-small" if SMALL else "gpt2-medium"],
    "prompt": 4 if SMALL else 128, "tokens": 1 if SMALL else 4,
    "axes": {"asic.clock_MHz": clock},
}, workers=1 if SMALL else None)
print(f"{len(result.ok)} of {result.total} points ok")

# %%
mhz = result.column("asic.clock_MHz")
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
ax1.plot(mhz, [v * 1e6 for v in result.column("latency_per_token_s")], marker="o", label="total")
ax1.plot(mhz, [v * 1e6 for v in result.column("breakdown_s.asic_ops")], marker="s", label="ASIC operations")
ax1.plot(mhz, [v * 1e6 for v in result.column("breakdown_s.pim_vmm")], marker="^", label="PIM VMM")
ax1.set_xscale("log")
ax1.set_xlabel("ASIC clock (MHz)")
ax1.set_ylabel("us per token")
ax1.set_title("Latency per token")
ax1.legend()
ax2.plot(mhz, result.column("tokens_per_s"), marker="o")
ax2.set_xscale("log")
ax2.set_xlabel("ASIC clock (MHz)")
ax2.set_ylabel("tokens/s")
ax2.set_title("Decode throughput")
fig.tight_layout()
if FIGURES:
    Path(FIGURES).mkdir(parents=True, exist_ok=True)
    fig.savefig(Path(FIGURES) / "asic_clock.png", dpi=100)
