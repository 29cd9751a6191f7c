"""``pimsim validate``: the paper's claims and the baselines, regenerated from runs."""

from __future__ import annotations

from pimsim.cli._common import check_out, progress_bar, write_files

PAPER_MODELS = ["gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl",
                "gpt3-small", "gpt3-medium", "gpt3-large", "gpt3-xl"]
QUICK_MODELS = ["gpt2-small", "gpt3-small"]


def add_parser(sub) -> None:
    p = sub.add_parser("validate", help="check the paper's claims and write validation/REPORT.md",
                       description="Simulate the paper's models (and the variants the claims need), "
                                   "compare with the measured and modelled CPU/GPU baselines and the "
                                   "paper's claims, and write REPORT.md with its figures.")
    p.add_argument("--quick", action="store_true", help="small models, one token (for tests)")
    p.add_argument("--out", default="validation", help="folder of REPORT.md (default: validation)")
    p.add_argument("--tokens", type=int, default=None, help="decode tokens per run (default 4; quick 1)")
    p.add_argument("--prompt", type=int, default=128, help="context before decoding (default 128)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from pimsim.errors import PimsimError
    from validation.baselines import fit, load_measurements
    from validation.claims import collect, evaluate
    from validation.report import render

    tokens = args.tokens if args.tokens is not None else (1 if args.quick else 4)
    if tokens < 1 or args.prompt < 0:
        raise PimsimError(f"--tokens must be positive and --prompt non-negative, got {tokens}, {args.prompt}")
    check_out(args.out, folder=True)
    models = QUICK_MODELS if args.quick else PAPER_MODELS
    # GPT2-XL needs 8 channels to fit (4 GB); the quick run scales GPT-2 small from 4
    runs = collect(models, prompt=args.prompt, tokens=tokens,
                   scaling_model="gpt2-small" if args.quick else "gpt2-xl",
                   channel_counts=(4, 8, 16) if args.quick else (8, 16, 32), progress=progress_bar("validating", "runs"))
    rows = evaluate(runs)
    measurements = load_measurements()
    files = render(runs, rows, fit(measurements), measurements)
    write_files(args.out, files)
    for r in rows:
        print(f"{r['verdict']:10s} {r['claim']}: ours {_f(r['ours'])}, paper {_f(r['paper'])} ({r['tolerance']})")
    print(f"wrote {Path(args.out) / 'REPORT.md'}")
    return 0


def _f(v) -> str:
    if isinstance(v, tuple):
        return "-".join(_f(x) for x in v)
    return f"{v:.4g}" if isinstance(v, float) else str(v)
