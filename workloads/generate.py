"""Regenerate the bundled traces of every registry model.

    python -m workloads.generate                 # all models -> workloads/traces/NAME.json
    python -m workloads.generate gpt2-small      # only some
    python -m workloads.generate --check         # compare with the committed files, write nothing

Needs the ``models`` extra (torch, transformers). Models are traced on the meta device
(no weights materialised), so all twelve take well under a minute.
"""

from __future__ import annotations

import argparse
import sys
import time

from pimsim.errors import PimsimError
from workloads.registry import TRACES_DIR, get_model, model_names
from workloads.schema import dumps, trace_from_dict

#: Prompt length of the bundled traces' prefill phase (tokens).
DEFAULT_PROMPT = 32
#: Data type of the bundled traces: PIM-GPT keeps weights and activations in BF16.
DEFAULT_DTYPE = "bfloat16"


def bundled_text(name: str, prompt: int = DEFAULT_PROMPT, dtype: str = DEFAULT_DTYPE) -> str:
    """The canonical text of registry model ``name``'s bundled trace, traced afresh."""
    from workloads.tracer import trace_config

    entry = get_model(name)
    data = trace_config(entry.config, name=entry.name, source=entry.source,
                        origin=str(entry.path), prompt=prompt, dtype=dtype)
    trace_from_dict(data, origin=f"trace of {name}")
    return dumps(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workloads.generate",
                                     description="Regenerate the bundled workload traces.")
    parser.add_argument("models", nargs="*", help="registry names (default: all)")
    parser.add_argument("--check", action="store_true",
                        help="compare with the committed traces; write nothing")
    args = parser.parse_args(argv)
    from pimsim.io import atomic_write

    names = args.models or model_names()
    stale = []
    try:
        for name in names:
            t0 = time.perf_counter()
            text = bundled_text(name)
            path = TRACES_DIR / f"{name}.json"
            if args.check:
                same = path.is_file() and path.read_text(encoding="utf-8") == text
                if not same:
                    stale.append(name)
                status = "same" if same else "DIFFERS"
            else:
                with atomic_write(path) as fh:
                    fh.write(text)
                status = f"{len(text.encode()) // 1024} KiB"
            print(f"{name:16s} {status:>10s}  {time.perf_counter() - t0:5.1f} s", flush=True)
    except PimsimError as exc:
        print(f"workloads.generate: error: {exc}", file=sys.stderr)
        return 2
    if stale:
        print(f"stale bundled traces: {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
