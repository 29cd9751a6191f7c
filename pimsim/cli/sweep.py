"""``pimsim sweep``: a design-space sweep, locally or on a Dask cluster."""

from __future__ import annotations

from pathlib import Path

from pimsim.cli._common import check_out, progress_bar, write_files

#: axes drawn beside the Pareto panel (the first ones of the sweep file)
MAX_AXIS_PANELS = 8


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sweep", help="run a design-space sweep (grid or random) into a results table",
        description="Expand SWEEP.yaml (a base preset, models, and axes over preset keys, mapping "
                    "strategy, prompt and tokens) into points, simulate each, and write one row per "
                    "point to DIR/results.csv and DIR/results.jsonl (sorted by point index). "
                    "Finished points are appended to DIR/journal.jsonl as they arrive; --resume "
                    "skips them. See docs/sweeps.md.")
    p.add_argument("file", metavar="SWEEP.yaml", help="sweep file")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="local worker processes (default: one per core; 1 runs in this process)")
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help="run the points on this Dask distributed scheduler instead")
    p.add_argument("--out", metavar="DIR",
                   help="output folder (default results/<sweep file name>)")
    p.add_argument("--resume", action="store_true",
                   help="finish the sweep in DIR, skipping the points it already holds")
    p.set_defaults(func=run)


def run(args) -> int:
    from pimsim.errors import PimsimError
    from pimsim.sweep import sweep

    if args.workers is not None and args.workers < 1:
        raise PimsimError(f"--workers must be at least 1, got {args.workers}")
    if args.scheduler and args.workers is not None:
        raise PimsimError("--workers applies to the local pool; a --scheduler cluster has its own workers")
    # an empty --out is an error (as in the other subcommands), not the default folder
    out = args.out if args.out is not None else str(Path("results") / Path(args.file).stem)
    check_out(out, folder=True)
    result = sweep(args.file, workers=args.workers, scheduler=args.scheduler, out=out,
                   resume=args.resume, progress=progress_bar("sweeping", "points"))
    ran = len(result.rows) - result.skipped
    lines = [f"{result.name}: {len(result.rows)} of {result.total} points "
             f"({ran} run, {result.skipped} already finished), "
             f"{len(result.ok)} ok, {len(result.failed)} failed"]
    for row in result.failed[:5]:
        lines.append(f"  point {row['index']} failed: {row['error']}")
    if len(result.failed) > 5:
        lines.append(f"  ... and {len(result.failed) - 5} more (see the error column)")
    written = ["results.csv", "results.jsonl"]
    if result.ok:
        write_files(out, {"results.png": _png(results_figure(result))})
        written.append("results.png")
    lines.append(f"  wrote {', '.join(written)} in {out}")
    print("\n".join(lines))
    return 0


def _png(fig) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _axis_positions(values: list) -> tuple[list[float], list | None]:
    """x positions of an axis' values: the numbers themselves, or for text (and
    true/false) values their index in order of first appearance, with those labels."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return [float(v) for v in values], None
    labels = list(dict.fromkeys(str(v) for v in values))
    return [float(labels.index(str(v))) for v in values], labels


def results_figure(result):
    """A sweep's finished points: tokens/s against energy per token with each model's
    Pareto front (ringed), then latency per token against each axis (the preset axes, then
    strategy, prompt and tokens where they vary; one panel per axis, one colour per
    model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pimsim.sweep import RUN_AXES, pareto_front

    rows = result.ok
    models = list(dict.fromkeys(r["model"] for r in rows))
    colours = {m: f"C{i % 10}" for i, m in enumerate(models)}
    varied_runs = [k for k in RUN_AXES[1:] if len({str(r.get(k)) for r in rows}) > 1]
    axes_keys = (list(result.axes) + varied_runs)[:MAX_AXIS_PANELS]
    n = 1 + len(axes_keys)
    ncols = min(n, 3)
    nrows = -(-n // ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    panels = [ax for line in grid for ax in line]
    for ax in panels[n:]:
        ax.remove()

    ax = panels[0]
    for m in models:
        mine = [r for r in rows if r["model"] == m]
        ax.scatter([r["tokens_per_s"] for r in mine],
                   [r["energy_per_token_J.nominal"] * 1e3 for r in mine],
                   s=12, alpha=0.6, color=colours[m], label=m)
        front = pareto_front(mine)
        fx = [r["tokens_per_s"] for r in front]
        fy = [r["energy_per_token_J.nominal"] * 1e3 for r in front]
        ax.plot(fx, fy, color=colours[m], lw=1.2, drawstyle="steps-post")
        ax.scatter(fx, fy, s=40, facecolors="none", edgecolors="black", lw=0.8)
    ax.set_xlabel("tokens/s")
    ax.set_ylabel("energy per token (mJ, nominal)")
    ax.set_title("points and Pareto front", fontsize=9)
    ax.legend(fontsize=7)

    for ax, key in zip(panels[1:], axes_keys):
        values = [r.get(key) for r in rows]
        xs, labels = _axis_positions(values)
        for m in models:
            sel = [i for i, r in enumerate(rows) if r["model"] == m]
            ax.scatter([xs[i] for i in sel], [rows[i]["latency_per_token_s"] * 1e6 for i in sel],
                       s=12, alpha=0.6, color=colours[m])
        if labels is not None:
            ax.set_xticks(range(len(labels)), labels, fontsize=7)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        elif min(xs) > 0 and max(xs) / min(xs) >= 8:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel("latency per token (us)")
        ax.set_title(key, fontsize=9)
    fig.suptitle(f"sweep {result.name}: {len(rows)} of {result.total} points", fontsize=10)
    fig.tight_layout()
    return fig
