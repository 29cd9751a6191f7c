"""``pimsim sweep``: a design-space sweep, locally or on a Dask cluster."""

from __future__ import annotations

from pathlib import Path

from pimsim.cli._common import check_out, progress_bar


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
    out = args.out or str(Path("results") / Path(args.file).stem)
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
    lines.append(f"  wrote results.csv, results.jsonl in {out}")
    print("\n".join(lines))
    return 0
