"""Wall time of simulating the paper's 8 models, and simulated tokens per wall second.

    python benchmarks/bench_simulate.py [--tokens 1024] [--prompt 0] [--models gpt2-small,...]
                                        [--jobs 2]
    python benchmarks/bench_simulate.py --replay --tokens 16 --models gpt2-small
    python benchmarks/bench_simulate.py --schedulers --tokens 16 --models gpt2-small,gpt2-xl

Each model decodes --tokens tokens after a --prompt-token context on the pim-gpt preset,
every DRAM command timed by the channel engines. Prints per model the wall time, wall time
per simulated token and the simulated latency per token, then the wall time of the whole
evaluation; with --jobs N the models run in N worker processes (one per core).
"""

from __future__ import annotations

import argparse
import time

import pimsim

PAPER_MODELS = ["gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl",
                "gpt3-small", "gpt3-medium", "gpt3-large", "gpt3-xl"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--prompt", type=int, default=0)
    ap.add_argument("--models", default=",".join(PAPER_MODELS))
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (models in parallel)")
    ap.add_argument("--replay", action="store_true",
                    help="instead: wall time with and without kernel replay, refresh on and off")
    ap.add_argument("--schedulers", action="store_true",
                    help="instead: wall time of the SimPy, listed and compiled schedulers")
    args = ap.parse_args()
    pimsim.simulate("gpt2-small", tokens=1)  # load the compiled kernels once
    if args.replay:
        replay_figures(args)
        return
    if args.schedulers:
        scheduler_figures(args)
        return
    models = args.models.split(",")
    t0 = time.perf_counter()
    if args.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            # largest first, so that the workers finish together
            order = sorted(models, key=lambda m: -PAPER_MODELS.index(m) if m in PAPER_MODELS else 0)
            futures = {m: pool.submit(_one, m, args.prompt, args.tokens) for m in order}
            rows = [futures[m].result() for m in models]
    else:
        rows = [_one(m, args.prompt, args.tokens) for m in models]
    wall = time.perf_counter() - t0
    for model, dt, lat in rows:
        print(f"{model:12s} {args.tokens} tokens: wall {dt:8.2f} s = {dt / args.tokens * 1e3:7.1f} ms "
              f"per simulated token ({args.tokens / dt:6.2f} tokens/s); simulated "
              f"{lat * 1e6:8.1f} us per token")
    print(f"all models: {wall:.1f} s wall for {args.tokens} tokens each "
          f"({sum(r[1] for r in rows):.1f} s summed over models, {args.jobs} job(s))")


def _one(model: str, prompt: int, tokens: int) -> tuple[str, float, float]:
    """(model, wall seconds, simulated latency per token) of one model's run."""
    pimsim.simulate("gpt2-small", tokens=1)  # this process's compiled kernels
    t = time.perf_counter()
    r = pimsim.simulate(model, prompt=prompt, tokens=tokens)
    return model, time.perf_counter() - t, r.to_dict()["latency_per_token_s"]


def replay_figures(args) -> None:
    """Wall time of the same run with and without exact kernel replay (same results)."""
    for model in args.models.split(","):
        for over in ([], ["refresh.policy=off"]):
            wall = {}
            for replay in (False, True):
                t = time.perf_counter()
                r = pimsim.simulate(model, prompt=args.prompt, tokens=args.tokens,
                                    overrides=over, replay=replay)
                wall[replay] = time.perf_counter() - t
                lat = r.to_dict()["latency_per_token_s"]
            print(f"{model:12s} {'refresh off' if over else 'refresh on ':11s} {args.tokens} tokens: "
                  f"wall {wall[False]:7.2f} s issued, {wall[True]:7.2f} s with replay "
                  f"({wall[False] / wall[True]:4.2f}x); simulated {lat * 1e6:8.1f} us per token")


def scheduler_figures(args) -> None:
    """Wall time of the same run scheduled by SimPy processes, the Python event list and
    the compiled event list (the default), and whether their result JSON is identical."""
    names = ("simpy", "listed", "compiled")
    for model in args.models.split(","):
        wall, out = {}, {}
        for scheduler in names:
            t = time.perf_counter()
            r = pimsim.simulate(model, prompt=args.prompt, tokens=args.tokens, scheduler=scheduler)
            wall[scheduler] = time.perf_counter() - t
            out[scheduler] = r.to_json()
        same = ("identical JSON" if len(set(out.values())) == 1 else "DIFFERENT JSON")
        print(f"{model:12s} {args.tokens} tokens: wall {wall['simpy']:7.2f} s SimPy, "
              f"{wall['listed']:7.2f} s listed, {wall['compiled']:7.2f} s compiled "
              f"({wall['simpy'] / wall['compiled']:4.1f}x / {wall['listed'] / wall['compiled']:4.1f}x "
              f"faster); {same}")


if __name__ == "__main__":
    main()
