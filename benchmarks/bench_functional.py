"""Functional decode speed: steps per second of values through the mapped program.

For each model: the time to initialise it with its own model code and place its BF16
weights in bank arrays, then functional decode steps per second (bank MAC kernels executed
command by command, ASIC operators, K/V appends; steady state after one warm-up step,
which also compiles the numba kernels on a cold cache), the bank MAC work per step, and, for
scale, the hardware-order PyTorch emulation's steps per second in the same process.
Target: at least 5 functional steps per second for GPT-2 small on this machine.

    python benchmarks/bench_functional.py [--models gpt2-small,smollm2-135m] [--steps 16]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import mappings
import workloads
from pimsim.config import load_preset
from pimsim.functional import APPROXIMATIONS
from pimsim.functional import reference as R
from pimsim.functional.emulation import hardware_logits
from pimsim.functional.model import FunctionalModel


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="gpt2-small,smollm2-135m")
    p.add_argument("--steps", type=int, default=16, help="timed decode steps per model")
    p.add_argument("--emulation-steps", type=int, default=4,
                   help="steps of the hardware emulation timed for comparison (0: skip)")
    a = p.parse_args(argv)
    print(f"{'model':14s} {'setup s':>8s} {'steps/s':>8s} {'ms/step':>8s} {'MAC16/step':>11s} "
          f"{'emul. steps/s':>14s} {'ratio':>6s}")
    for name in a.models.split(","):
        trace = workloads.load_bundled(name)
        n = a.steps + 1
        t0 = time.perf_counter()
        net = R.load_model(name, 0)
        weights, rope = R.bf16_weights(net), R.rope_tables(net, n)
        del net                    # the functional run needs only the weight values
        fm = FunctionalModel(trace, load_preset("pim-gpt"), weights, rope=rope,
                             exact=APPROXIMATIONS, max_context=n)
        setup = time.perf_counter() - t0
        toks = [int(t) for t in np.random.default_rng(0).integers(0, trace.config["vocab_size"], n)]
        fm.step(toks[0])                                           # warm-up (and JIT)
        t0 = time.perf_counter()
        for t in toks[1:]:
            fm.step(t)
        per = (time.perf_counter() - t0) / a.steps
        macs = sum(k.counts["MAC16"] for k in fm.mapping.program(n, toks[-1]).kernels()
                   if isinstance(k, mappings.MacKernel))
        emul = ""
        ratio = ""
        if a.emulation_steps:
            e = a.emulation_steps
            net = R.load_model(name, 0)
            t0 = time.perf_counter()
            hardware_logits(net, toks[:e], trace, fm.mapping, APPROXIMATIONS)
            ep = (time.perf_counter() - t0) / e
            emul, ratio = f"{1 / ep:14.2f}", f"{ep / per:6.1f}"
        del fm
        print(f"{name:14s} {setup:8.1f} {1 / per:8.2f} {per * 1e3:8.1f} {macs:11,d} {emul} {ratio}",
              flush=True)
    print("(steps/s: functional decode steps per second, steady state; ratio: emulation time / "
          "functional time per step)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
