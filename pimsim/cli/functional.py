"""``pimsim functional``: real numbers through the mapped program, compared with PyTorch."""

from __future__ import annotations

import io

from pimsim.cli._common import add_preset_arguments, check_out, progress_bar, write_files
from pimsim.errors import PimsimError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "functional", help="run a model's decode with values through its mapped program",
        description="Initialise registry MODEL with its own model code (random weights, seeded), "
                    "place its BF16 weights in bank arrays, run PROMPT random tokens and STEPS "
                    "greedy decode steps through the mapped program (bank MAC arithmetic, ASIC "
                    "approximations) and compare the logits of every decode step with PyTorch: "
                    "the model with the hardware's arithmetic and order ('hardware'), with BF16 "
                    "operands, with BF16 weights, and in FP32. Needs torch and transformers.")
    p.add_argument("model", help="registry model (pimsim trace --list shows them)")
    p.add_argument("--steps", type=int, default=8, help="decode steps (default 8)")
    p.add_argument("--prompt", type=int, default=8, help="random prompt tokens before (default 8)")
    p.add_argument("--exact-nonlinear", action="store_true",
                   help="replace the ASIC's exp, reciprocal, inverse square root and GELU "
                        "approximations by exact functions")
    p.add_argument("--exact", action="append", default=[], metavar="FUNCTION",
                   help="replace one approximation (exp, recip, rsqrt, gelu; repeatable)")
    add_preset_arguments(p)
    p.add_argument("--strategy", default="pim-gpt", help="mapping strategy (default pim-gpt)")
    p.add_argument("--seed", type=int, default=0, help="weights and prompt seed (default 0)")
    p.add_argument("--out", metavar="DIR", help="write functional.json, steps.csv and error.png to DIR")
    p.set_defaults(func=run)


def run(args) -> int:
    from pimsim.functional import APPROXIMATIONS
    from pimsim.functional import run as run_functional

    check_out(args.out, folder=True)
    _need_models()
    exact = set(args.exact)
    if args.exact_nonlinear:
        exact |= set(APPROXIMATIONS)
    result = run_functional(args.model, args.steps, args.prompt, preset=args.preset,
                            overrides=args.overrides, exact=exact, strategy=args.strategy,
                            seed=args.seed, progress=progress_bar("running", "steps"))
    files = {}
    if args.out:
        files = render(result)
        write_files(args.out, files)
    print(summary(result, args.out, sorted(files)))
    return 0


def _need_models() -> None:
    import importlib.util

    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        raise PimsimError(f"functional mode needs {' and '.join(missing)} (the 'models' extra: "
                          f"pip install 'pimsim[models]')")


def summary(result, out, files) -> str:
    d = result.to_dict()
    approx = ", ".join(d["approximations"]) or "none (all exact)"
    lines = [f"{d['model']} on {d['preset']} ({d['strategy']} mapping): {d['decode_steps']} decode "
             f"steps after {d['prompt_tokens']} prompt tokens, seed {d['seed']}",
             f"  ASIC approximations  {approx}",
             f"  {'reference':14s} {'max rel':>10s} {'mean rel':>10s} {'max abs':>10s} "
             f"{'KL (nats)':>10s} {'top-1':>7s}"]
    for mode, s in d["summary"].items():
        lines.append(f"  {mode:14s} {s['max_rel']:10.3g} {s['mean_rel']:10.3g} {s['max_abs']:10.3g} "
                     f"{s['kl']:10.3g} {s['top1'] * 100:6.1f}%")
    lines.append("  (worst step; rel = |error| / |reference logits| in max and mean norm; "
                 "top-1: steps whose argmax agrees)")
    if out:
        lines.append(f"  wrote                {', '.join(files)} in {out}")
    return "\n".join(lines)


def render(result) -> dict[str, bytes]:
    """Every output file's bytes (computed before anything is written)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    d = result.to_dict()
    files = {"functional.json": result.to_json().encode()}
    csv = io.StringIO()
    modes = list(d["summary"])
    csv.write("step,position,token," + ",".join(f"{m}_{k}" for m in modes
                                               for k in ("max_rel", "mean_rel", "max_abs", "kl", "top1")) + "\n")
    for st in d["steps"]:
        csv.write(f"{st['step']},{st['position']},{st['token']}," + ",".join(
            f"{st[m][k]!r}" if k != "top1" else str(int(st[m][k]))
            for m in modes for k in ("max_rel", "mean_rel", "max_abs", "kl", "top1")) + "\n")
    files["steps.csv"] = csv.getvalue().encode()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for m in modes:
        ys = [max(st[m]["max_rel"], 1e-12) for st in d["steps"]]
        ax.semilogy([st["step"] for st in d["steps"]], ys, marker=".", label=m)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("decode step")
    ax.set_ylabel("max |error| / max |logit|")
    ax.set_title(f"{d['model']}: functional logits vs references (1e-12 = identical)", fontsize=9)
    ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    files["error.png"] = buf.getvalue()
    return files
