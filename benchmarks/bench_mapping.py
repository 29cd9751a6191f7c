"""Mapper speed, and the row-hit rates of every strategy on the paper's XL models.

Prints, for GPT2-XL on the default preset (pim-gpt strategy): the time to load the bundled
trace, to place the model (capacity check included), to build the program of one decode
step the first time in the process (templates and passes computed; target < 1 s), to
build it again at another KV length (cached templates), and the build time per step of a
run of consecutive steps (what a simulation pays per token; kv_len 100..119 after a few
warm-up steps, best of --repeat rounds); then, with --expand, the time to expand every PIM
kernel of the step into command streams. Finally the row-hit rate, MAC utilisation and
command totals of each strategy on GPT2-XL and GPT3-XL at their full context (naive on a
four-times-deeper die, organization.rows=65536: it does not fit 4 GB), with the time of
that first build and the build time per step of 20 consecutive steps before it.

    python benchmarks/bench_mapping.py [--repeat 3] [--expand]
"""

from __future__ import annotations

import argparse
import time

import mappings
import workloads
from pimsim.config import load_preset


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def per_step(m, first: int, steps: int = 20, warm: int = 5, repeat: int = 1) -> float:
    """Seconds per program over kv_len first .. first+steps-1 (after ``warm`` steps before
    them), best of ``repeat`` rounds."""
    for n in range(max(1, first - warm), first):
        m.program(n)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for n in range(first, first + steps):
            m.program(n)
        best = min(best, (time.perf_counter() - t) / steps)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=3, help="repeats of the warm program build")
    p.add_argument("--expand", action="store_true", help="also expand every kernel's commands")
    a = p.parse_args(argv)

    spec = load_preset("pim-gpt")
    tr, t_load = timed(lambda: workloads.load_bundled("gpt2-xl"))
    m, t_map = timed(lambda: mappings.map(tr, spec))
    prog, t_cold = timed(lambda: m.program(1024))
    warm = min(timed(lambda: m.program(1000 - i))[1] for i in range(a.repeat))
    step = per_step(m, 100, repeat=a.repeat)
    print("GPT2-XL, pim-gpt on pim-gpt (8 channels x 16 banks)")
    print(f"  load trace               {t_load * 1e3:8.1f} ms")
    print(f"  place (capacity checked) {t_map * 1e3:8.1f} ms")
    print(f"  program, first build     {t_cold * 1e3:8.1f} ms   (kv_len 1024; "
          f"{prog.graph.number_of_nodes()} nodes, {prog.graph.number_of_edges()} edges)")
    print(f"  program, rebuilt         {warm * 1e3:8.1f} ms   (another kv_len, best of {a.repeat})")
    print(f"  program, per step        {step * 1e3:8.1f} ms   (kv_len 100..119 in order, "
          f"best of {a.repeat})")
    print(f"  decode step total        {(t_map + t_cold) * 1e3:8.1f} ms   (place + first build; target < 1000 ms)")
    if a.expand:
        ks = prog.kernels()
        streams, t_exp = timed(lambda: [k.commands(spec) for k in ks])
        n = sum(len(s) for s in streams)
        print(f"  expand {len(ks)} kernels      {t_exp:8.2f} s    ({n} commands, {n / t_exp / 1e6:.2f} M/s)")

    print("\nrow-hit rate (column accesses that needed no ACT of their own), MAC utilisation")
    for name in ("gpt2-xl", "gpt3-xl"):
        t = workloads.load_bundled(name)
        ctx = mappings.model_context(t)
        for s in mappings.STRATEGIES:
            over = ["organization.rows=65536"] if s == "naive" else []
            mm = mappings.map(t, load_preset("pim-gpt", over), s)
            pr, dt = timed(lambda: mm.program(ctx))
            st = per_step(mm, ctx - 20)
            c = pr.counts()
            print(f"  {name:8s} {s:8s} kv_len {ctx:5d}  row-hit {pr.row_hit_rate():.4f}  "
                  f"MAC util {pr.mac_utilization():.4f}  ACT16 {c['ACT16']:7d} ACT {c['ACT']:6d} "
                  f"MAC16 {c['MAC16']:8d} WRGB {c['WRGB']:8d} RDMAC16 {c['RDMAC16']:7d}  "
                  f"({dt * 1e3:.0f} ms, {st * 1e3:.1f} ms/step{', rows=65536' if over else ''})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
