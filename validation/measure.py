"""Measure batch-1 decode of the registry models with PyTorch (CPU, or CUDA when present).

    python -m validation.measure [--models gpt2-small,...] [--precision fp32,bf16]
        [--threads 1,all] [--prompt 32] [--tokens 32] [--device cpu|cuda] [--out validation/data]

For each model, precision and thread count: the model is built from its registry config
with random weights (seeded; nothing downloaded), a prompt of random token ids is
prefilled, then tokens are generated one at a time, greedily, with the KV cache. Each
decode step is timed (wall clock, synchronised on CUDA); the first ``--warmup`` steps are
dropped. Each model and precision is built and measured in a fresh process of its own, so
that its peak memory holds nothing of the models before it (freed memory the allocator
keeps resident) or of the process that started it. One JSON file per measurement records
the median, spread and every step time, the energy where the machine exposes it (RAPL
package energy on CPU; CUDA runs record no energy: NVML is not read), the peak host memory
during the measurement, and the environment: CPU or GPU model, cores and threads, library
versions, precision, KV cache setting and the date.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

PAPER_MODELS = ["gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl",
                "gpt3-small", "gpt3-medium", "gpt3-large", "gpt3-xl"]
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
RAPL = Path("/sys/class/powercap/intel-rapl:0/energy_uj")
CLEAR_REFS = Path("/proc/self/clear_refs")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2", "fma")))
    except OSError:
        pass
    return []


def read_rapl() -> int | None:
    try:
        return int(RAPL.read_text())
    except (OSError, ValueError):
        return None


def reset_peak_rss() -> bool:
    """Reset the process's peak resident set to its current size (Linux 4.0 and later:
    ``5`` into ``/proc/self/clear_refs``), so that the next reading of the peak covers only
    what follows. False where the peak cannot be reset: it then includes everything the
    process did before (earlier models of the same run)."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def peak_rss() -> int:
    """The process's peak resident set in bytes since it started or since
    :func:`reset_peak_rss`: ``VmHWM`` of ``/proc/self/status`` where there is one. Not
    ``getrusage``'s ``ru_maxrss``: that also keeps the peak of the memory image the process
    replaced at exec, which for a child started by ``vfork`` is its parent's."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # "VmHWM:   123456 kB"
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def environment(torch, device: str) -> dict:
    import numpy
    import transformers

    env = {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "rapl_readable": read_rapl() is not None,
    }
    if device == "cuda":
        env["gpu_model"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    return env


def build(name: str, precision: str, device: str, seed: int = 0):
    """The registry model with random weights (seeded), in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    import workloads
    from workloads.tracer import build_config

    entry = workloads.get_model(name)
    cfg = build_config(entry.config, str(entry.path))
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, DTYPES[precision]))
    return model.eval()


def measure_one(model, name: str, precision: str, threads: int, prompt: int, tokens: int,
                warmup: int, device: str, seed: int = 0, compile_mode: str = "none") -> dict:
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    peak_reset = reset_peak_rss()
    cfg = model.config
    vocab = cfg.vocab_size
    ids = torch.randint(0, vocab, (1, prompt), device=device)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    times = []
    e0 = read_rapl() if device == "cpu" else None
    t_all = time.perf_counter()
    with torch.inference_mode():
        sync()
        t = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        sync()
        prefill_s = time.perf_counter() - t
        cache = out.cache
        nxt = out.logits[:, -1:].argmax(-1)
        for _ in range(warmup + tokens):
            sync()
            t = time.perf_counter()
            out = model(input_ids=nxt, cache=cache, use_cache=True)
            nxt = out.logits[:, -1:].argmax(-1)
            sync()
            times.append(time.perf_counter() - t)
            cache = out.cache
    wall = time.perf_counter() - t_all
    e1 = read_rapl() if device == "cpu" else None
    steps = times[warmup:]
    q = statistics.quantiles(steps, n=10) if len(steps) >= 2 else [steps[0]] * 9
    result = {
        "model": name, "parameters": sum(p.numel() for p in model.parameters()),
        "device": device, "precision": precision, "threads": threads, "kv_cache": True,
        "batch": 1, "prompt_tokens": prompt, "decode_tokens": tokens, "warmup_tokens": warmup,
        "compile": compile_mode,
        "median_s_per_token": statistics.median(steps),
        "mean_s_per_token": statistics.fmean(steps),
        "stdev_s_per_token": statistics.stdev(steps) if len(steps) > 1 else 0.0,
        "p10_s_per_token": q[0], "p90_s_per_token": q[-1],
        "min_s_per_token": min(steps), "max_s_per_token": max(steps),
        "prefill_s": prefill_s, "step_s": steps,
        "peak_rss_bytes": peak_rss(),
        "peak_rss_scope": ("this measurement, in a process of its own (the model built and "
                           "resident, the libraries loaded)" if peak_reset else
                           "its own process (the model built; the libraries loaded; at more "
                           "than one thread count, the measurements before it included)"),
        "energy_J": None, "energy_source": None,
    }
    if e0 is not None and e1 is not None and e1 >= e0:
        result["energy_J"] = (e1 - e0) * 1e-6
        result["energy_source"] = f"RAPL package 0 over {wall:.3f} s (prefill and warm-up included)"
    return result


def measure_model(name: str, precision: str, threads: list[int], prompt: int, tokens: int,
                  warmup: int, device: str, compile_mode: str = "none") -> list[dict]:
    """Build one model and measure it at each thread count (:func:`measure_one`); meant to
    run in a process of its own."""
    model = build(name, precision, device)
    if compile_mode != "none":
        import torch

        model = torch.compile(model, mode=compile_mode, dynamic=True)
    return [measure_one(model, name, precision, n, prompt, tokens, warmup, device,
                        compile_mode=compile_mode) for n in threads]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(PAPER_MODELS))
    ap.add_argument("--precision", default="fp32,bf16")
    ap.add_argument("--threads", default="1,all", help="comma list of thread counts; 'all' = every logical CPU")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--compile", default="none", choices=("none", "default", "reduce-overhead"),
                    help="torch.compile mode ('reduce-overhead' uses CUDA graphs on CUDA); default eager")
    ap.add_argument("--out", default=str(Path(__file__).parent / "data"))
    args = ap.parse_args(argv)
    import torch

    from pimsim.io import atomic_write

    if args.device == "cuda" and not torch.cuda.is_available():
        print("measure: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    env = environment(torch, args.device)
    threads = sorted({os.cpu_count() if t == "all" else int(t) for t in args.threads.split(",")})
    if args.device == "cuda":
        threads = [1]
    # one fresh process per model and precision (spawned: CUDA needs it, and nothing of
    # this process is copied into it)
    ctx = multiprocessing.get_context("spawn")
    for name in args.models.split(","):
        for precision in args.precision.split(","):
            with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                runs = pool.submit(measure_model, name, precision, threads, args.prompt,
                                   args.tokens, args.warmup, args.device, args.compile).result()
            for n, r in zip(threads, runs):
                r["environment"] = env
                tag = "" if args.compile == "none" else f"-compile-{args.compile}"
                path = Path(args.out) / f"{args.device}-{name}-{precision}-t{n}{tag}.json"
                with atomic_write(path) as fh:
                    json.dump(r, fh, indent=1, sort_keys=True)
                    fh.write("\n")
                print(f"{name:12s} {precision} {n} thread(s): median {r['median_s_per_token'] * 1e3:8.1f} ms/token "
                      f"(p10 {r['p10_s_per_token'] * 1e3:.1f}, p90 {r['p90_s_per_token'] * 1e3:.1f})"
                      + (f", {r['energy_J']:.1f} J" if r["energy_J"] is not None else ""), flush=True)
    return 0


if __name__ == "__main__":
    from pimsim.errors import PimsimError

    try:
        sys.exit(main())
    except PimsimError as exc:
        print(f"measure: error: {exc}", file=sys.stderr)
        sys.exit(2)
