"""Channel-engine throughput.

Prints commands per second for
  (a) 1,048,576 MAC16 commands in 16,384 rows on one channel (ACT16, 64 MAC16, PREA per row),
  (b) the same stream on 8 channels in lock-step,
  (c) 1,048,576 reads in stream order (ACT, 64 RD, PRE per bank and row),
the same stream as repeated row blocks with the exact fast-forward, the numba JIT compile time (cold cache, in a fresh process) and cache-load time, the
pure-Python twin's rate on a slice of (a) (ratio to the kernel), and the wall time of
`pimsim replay` of (a) as a whole process, parsing and printing included.

    python benchmarks/bench_engine.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pimsim.config import load_preset
from pimsim.engine import issue, issue_channels, issue_repeated
from pimsim.engine.cmdfile import format_log
from pimsim.engine.streams import mac_rows, read_rows

ROWS = 16384
READS = 1 << 20


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def compile_time() -> tuple[float, float]:
    """(cold JIT compile of the engine, load from a warm cache), each in a fresh process."""
    code = ("import time; t=time.perf_counter();"
            "from pimsim.config import load_preset; from pimsim.engine import issue, issue_channels, issue_repeated;"
            "from pimsim.engine.streams import mac_rows; s=load_preset('pim-gpt').dram; st=mac_rows(2);"
            "t0=time.perf_counter(); issue(s, st); issue_channels(s, st, channels=2);"
            "print(time.perf_counter()-t0)")
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        cold = float(subprocess.check_output([sys.executable, "-c", code], env=env))
        warm = float(subprocess.check_output([sys.executable, "-c", code], env=env))
    return cold, warm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    cold, warm = compile_time()
    print(f"JIT compile (cold cache, issue + issue_channels): {cold:.2f} s; load from cache: {warm:.2f} s")

    pim = load_preset("pim-gpt").dram
    stream_a = mac_rows(ROWS, pim.columns)
    n_a = len(stream_a)
    issue(pim, mac_rows(4))  # warm up (load the cached kernel)
    for policy in ("off", "ab"):
        spec = pim.with_refresh(policy)
        dt, res = best(lambda: issue(spec, stream_a, validate_stream=False), args.repeat)
        dtv, _ = best(lambda: issue(spec, stream_a), 1)
        print(f"(a) {n_a:,} commands ({res.counts['MAC16']:,} MAC16) in {ROWS:,} rows, 1 channel, "
              f"refresh {policy}: {dt * 1e3:.1f} ms = {n_a / dt / 1e6:.1f} M commands/s "
              f"({n_a / dtv / 1e6:.1f} M/s with input validation); last cycle {res.last_cycle:,}")

    block = type(stream_a)(*(getattr(stream_a, f)[:pim.columns + 2] for f in ("cmd", "bg", "ba", "row", "col")))
    issue_repeated(pim, block, np.arange(4))
    for policy in ("off", "ab"):
        spec = pim.with_refresh(policy)
        dt, rep = best(lambda: issue_repeated(spec, block, np.arange(ROWS), validate_stream=False), args.repeat)
        print(f"(a) as {ROWS:,} repeats of one row block (final PREA included) with exact fast-forward, refresh {policy}: "
              f"{dt * 1e3:.2f} ms ({rep.blocks_in_full:,} blocks issued in full) = "
              f"{n_a / dt / 1e6:.0f} M commands/s equivalent; last cycle {rep.last_cycle:,}")

    spec8 = pim.with_refresh("ab")
    issue_channels(spec8, mac_rows(4), channels=8)
    dt, res8 = best(lambda: issue_channels(spec8, stream_a, channels=8, validate_stream=False), args.repeat)
    print(f"(b) same stream on 8 channels in lock-step (refresh ab, {os.cpu_count()} cores): "
          f"{dt * 1e3:.1f} ms = {8 * n_a / dt / 1e6:.1f} M commands/s")

    dram = load_preset("gddr6-14000").dram
    stream_c = read_rows(READS, dram.bankgroups, dram.banks_per_bankgroup, dram.columns)
    n_c = len(stream_c)
    issue(dram, read_rows(256))
    for policy in ("off", "ab"):
        spec = dram.with_refresh(policy)
        dt, res = best(lambda: issue(spec, stream_c, validate_stream=False), args.repeat)
        print(f"(c) {n_c:,} commands ({res.counts['RD']:,} RD) in stream order, gddr6-14000, "
              f"refresh {policy}: {dt * 1e3:.1f} ms = {n_c / dt / 1e6:.1f} M commands/s")

    part = mac_rows(256, pim.columns)
    dt_twin, _ = best(lambda: issue(pim, part, backend="python"), 1)
    dt_k, _ = best(lambda: issue(pim, part), args.repeat)
    print(f"twin (pure Python) on {len(part):,} commands: {len(part) / dt_twin / 1e3:.0f} k commands/s; "
          f"kernel is {dt_twin / dt_k:.0f}x faster")

    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "mac_1M.cmds"
        zeros = np.zeros(n_a, dtype=np.int64)
        text = format_log(zeros, stream_a)  # "0 CMD ..." lines; strip the cycle column
        f.write_bytes(b"".join(line.split(b" ", 1)[1] for line in text.splitlines(True)))
        cmd = [sys.executable, "-m", "pimsim", "replay", str(f), "--preset", "gddr6-aim"]
        subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)  # warm the cache
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
            times.append(time.perf_counter() - t)
        print(f"pimsim replay of (a) as a whole process ({f.stat().st_size / 1e6:.1f} MB file, "
              f"parse + issue + print {n_a:,} lines): {min(times):.2f} s")


if __name__ == "__main__":
    main()
