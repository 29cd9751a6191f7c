"""``pimsim trace``: record a workload trace from a real model, list or check traces.

    pimsim trace --list
    pimsim trace --model gpt2-small [--prompt 32] [--dtype bfloat16] --out trace.json
    pimsim trace --hf-config config.json [--name NAME] [--prompt 32] --out trace.json
    pimsim trace --check trace.json|MODEL [--ctx 1024] [--json]

Tracing needs the ``models`` extra (torch, transformers), imported only when tracing;
``--list`` and ``--check`` work without them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pimsim.cli._common import check_out


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "trace", help="record, list or check workload traces of real models",
        description="Record the operators of a model's prefill and one decode step from the "
                    "Hugging Face transformers code (random weights, nothing downloaded), "
                    "list the model registry, or validate and summarise a trace file.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--list", action="store_true", help="list the registry's models")
    what.add_argument("--model", metavar="NAME", help="trace a registry model")
    what.add_argument("--hf-config", metavar="CONFIG_JSON",
                      help="trace a decoder-only model given by a transformers config.json")
    what.add_argument("--check", metavar="TRACE",
                      help="validate a trace file (or a registry name's bundled trace) and "
                           "print its summary")
    p.add_argument("--out", metavar="PATH", help="trace file to write (with --model/--hf-config)")
    p.add_argument("--name", help="model name recorded in the trace (with --hf-config; "
                                  "default: the config file's name)")
    p.add_argument("--prompt", type=int, default=None, metavar="P",
                   help="prompt tokens of the prefill phase (default 32)")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"),
                   help="data type of weights and activations (default bfloat16, as PIM-GPT)")
    p.add_argument("--ctx", type=int, default=None, metavar="N",
                   help="context length for the decode-step summary (default: the recorded one)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pimsim.errors import PimsimError

    if args.ctx is not None and args.ctx < 1:
        raise PimsimError(f"--ctx must be a positive integer (the context length), got {args.ctx}")
    if args.list:
        return _list()
    if args.check:
        return _check(args)
    if args.out is None:
        raise PimsimError("trace: --out: missing (where to write the trace)")
    check_out(args.out, folder=False)
    return _trace(args)


def _check_ctx(trace, ctx: int | None) -> None:
    """``--ctx`` beyond the model's maximum context is an error naming both."""
    from pimsim.errors import PimsimError
    from workloads.schema import CONTEXT_KEYS, model_context

    limit = model_context(trace.config)
    if ctx is not None and limit is not None and ctx > limit:
        key = next(k for k in CONTEXT_KEYS if trace.config.get(k) == limit)
        raise PimsimError(f"--ctx {ctx}: more than the maximum context of {trace.model}, "
                          f"{limit} positions (config.{key})")


def _list() -> int:
    from workloads.registry import list_models
    from workloads.schema import TraceError, load_trace

    rows = []
    for e in list_models():
        params = "-"
        if e.trace_path.is_file():
            try:
                params = f"{load_trace(e.trace_path).parameters / 1e6:,.1f}M"
            except TraceError:
                params = "bad trace"
        rows.append((e.name, e.family, "yes" if e.paper_model else "", params,
                     e.config["model_type"]))
    head = ("model", "family", "paper", "parameters", "model_type")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    for r in [head] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def _check(args) -> int:
    from workloads.registry import TRACES_DIR, model_names
    from workloads.schema import load_trace
    from workloads.summary import summarize

    path = Path(args.check)
    if not path.exists() and args.check in model_names():
        path = TRACES_DIR / f"{args.check}.json"
    trace = load_trace(path)
    _check_ctx(trace, args.ctx)
    s = summarize(trace, ctx=args.ctx)
    if args.json:
        print(json.dumps(s, indent=2, sort_keys=True))
        return 0
    print(_format_summary(path, trace, s))
    return 0


def _format_summary(path, trace, s) -> str:
    d = s["decode"]
    wb = ", ".join(f"{k} {v / 2**20:,.1f} MiB" for k, v in s["weight_bytes"].items())
    ops = ", ".join(f"{k} {v}" for k, v in s["decode_ops"].items())
    lines = [
        f"{path}: valid trace of {trace.model} ({trace.config['model_type']}, "
        f"{s['layers']} layers, {trace.dtype})",
        f"  parameters      {s['parameters']:,}",
        f"  weight bytes    {wb}",
        f"  decode ops      {ops}",
        f"  decode step at ctx {d['ctx']}: {d['flops'] / 1e9:,.3f} GFLOP, "
        f"{d['bytes_moved'] / 2**20:,.1f} MiB moved (weights {d['weight_bytes'] / 2**20:,.1f}, "
        f"KV read {d['kv_read_bytes'] / 2**20:,.2f}, "
        f"KV written {d['kv_write_bytes'] / 2**10:,.1f} KiB, "
        f"activations {d['activation_bytes'] / 2**10:,.1f} KiB)",
        f"  prefill of {s['prompt_tokens']} tokens: {s['prefill']['flops'] / 1e9:,.3f} GFLOP",
    ]
    return "\n".join(lines)


def _trace(args) -> int:
    from pimsim.errors import PimsimError
    from workloads.generate import DEFAULT_PROMPT
    from workloads.registry import get_model
    from pimsim.io import not_utf8
    from workloads.schema import TraceError, trace_from_dict, write_trace
    from workloads.summary import summarize

    prompt = DEFAULT_PROMPT if args.prompt is None else args.prompt
    if args.model:
        entry = get_model(args.model)
        config, name, source, origin = entry.config, entry.name, entry.source, str(entry.path)
    else:
        path = Path(args.hf_config)
        origin = str(path)
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise TraceError(f"{path}: cannot read config: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise TraceError(f"{path}: {not_utf8(exc)}") from None
        except json.JSONDecodeError as exc:
            raise TraceError(f"{path}: line {exc.lineno}: not valid JSON: {exc.msg}") from None
        name = args.name or (path.stem if path.stem != "config" else path.resolve().parent.name)
        source = f"transformers config file {path.name}"
    try:
        import torch  # noqa: F401  (only to report a missing extra clearly)
        import transformers  # noqa: F401
    except ImportError as exc:
        raise PimsimError(f"trace: tracing needs torch and transformers ({exc.name} is not "
                          f"installed): pip install -e '.[models]'") from None
    from workloads.tracer import trace_config

    print(f"pimsim: tracing {name}: prefill of {prompt} tokens + one decode step ...",
          file=sys.stderr, flush=True)
    data = trace_config(config, name=name, source=source, origin=origin, prompt=prompt,
                        dtype=args.dtype)
    trace = trace_from_dict(data, origin=args.out)
    _check_ctx(trace, args.ctx)
    s = summarize(trace, ctx=args.ctx)
    write_trace(data, args.out)
    print(_format_summary(args.out, trace, s))
    return 0
