"""Wall time of a 200-point GPT-2 medium sweep on a local process pool.

    python benchmarks/bench_sweep.py [--workers 2] [--points 200] [--sweep FILE]

Runs examples/sweeps/bench-medium.yaml (200 points: ASIC clock x PIM clock x channels x
refresh policy, one decode token after a 32-token context) on --workers local processes,
the first --points of them (the rest are left out of the plan), into a temporary folder.
Prints the wall time (worker start-up included), points per second and wall seconds per
point per worker.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import yaml

from pimsim.sweep import plan, sweep

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--points", type=int, default=200, help="run only the first N points")
    ap.add_argument("--sweep", default=str(ROOT / "examples" / "sweeps" / "bench-medium.yaml"))
    args = ap.parse_args()
    doc = yaml.safe_load(Path(args.sweep).read_text())
    full = plan(doc)
    if args.points < len(full.points):
        # keep the first N points: list them as explicit points of an axis-free sweep
        doc = {k: v for k, v in doc.items() if k not in ("axes", "sampling", "samples", "seed")}
        doc["points"] = [dict(p.values) for p in full.points[:args.points]]
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        result = sweep(doc, workers=args.workers, out=os.path.join(tmp, "out"))
        dt = time.perf_counter() - t
    n = len(result.rows)
    print(f"{doc.get('name', 'sweep')}: {n} points ({len(result.ok)} ok, {len(result.failed)} failed) "
          f"on {args.workers} workers: wall {dt:.1f} s = {n / dt:.2f} points/s, "
          f"{dt * args.workers / n:.2f} s per point per worker")


if __name__ == "__main__":
    main()
