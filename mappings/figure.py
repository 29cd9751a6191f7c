"""Draw how a matrix lands in the banks: ``python -m mappings.figure docs/mapping_placement.png``.

Three panels for channel 0 of GPT-2 small on the default preset, pim-gpt strategy:
layer 0's fused q/k/v weight (768 -> 2304), the K cache and the V cache. Each panel shows
rows (down) by the 64 columns of banks 0-3 (across); colour = the slot (output) a column
belongs to, hatched lines = segment ends (accumulator read-outs), white = empty.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def _panel(ax, pl, region, channel, banks, rows, title):
    g = pl.geometry
    part = next(p for p in region.parts if p.channel == channel)
    t = part.template
    img = np.full((rows, banks * g.columns), np.nan)
    ends = []
    for i in range(t.n_segments):
        r = int(t.row[i])
        if r >= rows:
            continue
        for b in range(banks):
            if part.slot_out[b, t.slot[i]] < 0:
                continue
            c0 = b * g.columns + int(t.c0[i])
            img[r, c0:c0 + int(t.n[i])] = (int(t.slot[i]) * 7 + int(t.sub[i]) * 3) % 20
            ends.append((r, c0 + int(t.n[i])))
    ax.imshow(img, cmap="tab20", aspect="auto", interpolation="nearest", vmin=0, vmax=19)
    for r, c in ends:
        ax.plot([c - 0.5, c - 0.5], [r - 0.45, r + 0.45], color="black", lw=0.6)
    for b in range(1, banks):
        ax.axvline(b * g.columns - 0.5, color="black", lw=1.5)
    ax.set_xticks([b * g.columns + g.columns // 2 for b in range(banks)])
    ax.set_xticklabels([f"bank {b}" for b in range(banks)], fontsize=7)
    ax.set_ylabel("row", fontsize=7)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title(title, fontsize=8)


def draw(path: str, model: str = "gpt2-small", strategy: str = "pim-gpt") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import mappings
    import workloads
    from pimsim.config import load_preset
    from pimsim.io import atomic_write

    m = mappings.map(workloads.load_bundled(model), load_preset("pim-gpt"), strategy)
    pl = m.placement
    w = next(n for n in pl.by_weight if ".0." in n)
    lin = pl.linears[w]
    ks, vs = pl.kv[0]
    att = pl.attention[0]
    fig, axes = plt.subplots(3, 1, figsize=(8, 7.5), dpi=90)
    _panel(axes[0], pl, pl.by_weight[w][0], 0, 4, 14,
           f"{w} ({lin.in_features} -> {lin.out_features}): output n in bank (n mod 128) div 8, "
           f"slot n div 128;\n{lin.in_features // 16}-column pieces wrapped through the rows "
           f"(4 outputs per 3 rows), channel 0")
    _panel(axes[1], pl, ks[0], 0, 4, 10,
           f"K cache, layer 0: key j in bank j mod 16; {att.kv_heads} heads x "
           f"{att.head_dim // 16} columns concatenated per key (read-out per head)")
    _panel(axes[2], pl, vs[0], 0, 4, 10,
           f"V cache, layer 0, transposed: one row per (head, d) output holds {pl.geometry.columns * 16} "
           f"tokens; 16 outputs of one head per row index")
    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mappings.figure", description=__doc__.split("\n")[0])
    p.add_argument("out", help="PNG file to write")
    p.add_argument("--model", default="gpt2-small")
    p.add_argument("--strategy", default="pim-gpt")
    a = p.parse_args(argv)
    draw(a.out, a.model, a.strategy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
