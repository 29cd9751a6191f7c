"""``pimsim replay``: issue a command file at its earliest legal cycles and print the log."""

from __future__ import annotations

import sys
import time

from pimsim.cli._common import add_spec_arguments, check_out, load_spec
from pimsim.errors import PimsimError

DEFAULT_DEMO_ROWS = 64


def add_parser(sub) -> None:
    p = sub.add_parser(
        "replay", help="replay a command file (CMD bg ba row col) cycle-accurately",
        description="Issue every command of FILE in order at the earliest cycle the timing "
                    "allows and print 'cycle CMD bg ba row col' lines (first command at cycle 0). "
                    "Without FILE, replays a built-in GEMV tile (64 rows, all-bank MAC) on the "
                    "pim-gpt preset and prints a summary.")
    p.add_argument("file", nargs="?", help=".cmds file (optionally .gz); omit for the built-in example")
    add_spec_arguments(p)
    p.add_argument("--refresh", choices=("off", "ab", "pb"), default="off",
                   help="insert refresh when due (default off: the file is replayed as written)")
    p.add_argument("--phase", type=int, default=None, metavar="CYCLES",
                   help="absolute cycle of the first command, for the refresh schedule "
                        "(default: the file header's 'first command issued at absolute cycle', else 0)")
    p.add_argument("--check", action="store_true", help="also run the protocol checker on the log")
    p.add_argument("--summary", action="store_true", help="print a summary instead of the log")
    p.add_argument("--backend", choices=("numba", "python"), default="numba",
                   help="engine: numba kernel (default) or its pure-Python twin")
    p.add_argument("--out", metavar="FILE", help="write the log to FILE instead of standard output")
    p.set_defaults(func=run)


def run(args) -> int:
    from pimsim.engine import check, issue, merge_log
    from pimsim.engine.cmdfile import format_log, read_commands
    from pimsim.engine.streams import gemv_tile
    from pimsim.io import atomic_write

    t_start = time.perf_counter()
    check_out(args.out, folder=False)
    spec = load_spec(args)
    demo = args.file is None
    if demo:
        stream = gemv_tile(DEFAULT_DEMO_ROWS, spec.columns, spec.gb_slots)
    else:
        stream = read_commands(args.file)
        if stream.cycle is not None:
            raise PimsimError(f"{args.file}: this is an .expected file (cycles first); give the .cmds file")
    phase = args.phase if args.phase is not None else (stream.first_cycle or 0)
    if phase < 0:
        raise PimsimError(f"--phase must be non-negative, got {phase}")
    refresh = args.refresh
    if demo and args.refresh == "off" and not args.timing and not args.preset:
        refresh = spec.refresh_policy  # the example runs as the preset says
    spec = spec.with_refresh(refresh, phase)
    result = issue(spec, stream, backend=args.backend)
    cycles, log = merge_log(stream, result)
    violations = check(spec, cycles, log, limit=50) if (args.check or demo) else []
    elapsed = time.perf_counter() - t_start

    if args.summary or demo:
        text = _summary(spec, stream, result, len(log), violations, args.check or demo, elapsed)
    else:
        text = None
    if args.out:
        with atomic_write(args.out, "wb") as fh:
            fh.write(format_log(cycles, log))
    elif text is None:
        sys.stdout.buffer.write(format_log(cycles, log))
        sys.stdout.flush()
    if text is not None:
        print(text)
    if violations:
        for v in violations[:20]:
            print(f"pimsim: violation: {v}", file=sys.stderr)
        more = "" if len(violations) < 50 else " (first 50 shown)"
        print(f"pimsim: check: {len(violations)} violation(s){more}", file=sys.stderr)
        return 1
    if args.check and not (args.summary or demo):
        print(f"pimsim: check: no violation in {len(log)} commands", file=sys.stderr)
    return 0


def _summary(spec, stream, result, n_log, violations, checked, elapsed) -> str:
    last = result.last_cycle
    ns = (last + 1) * spec.tCK_ps / 1000
    issued = ", ".join(f"{k} {v}" for k, v in result.counts.items() if v)
    lines = [
        f"stream      {stream.source or 'built-in'}: {len(stream)} commands",
        f"timing      {spec.name} ({spec.standard}), tCK {spec.tCK_ps} ps, refresh {spec.refresh_policy}",
        f"issued      {n_log} commands ({issued})",
        f"last cycle  {last} ({ns:,.1f} ns)",
        f"refresh     {len(result.inserted['cycle'])} inserted commands, "
        f"{result.refresh_stall_cycles} stall cycles ({100 * result.refresh_stall_cycles / max(last, 1):.1f} %)",
    ]
    if checked:
        lines.append(f"check       {'no violation' if not violations else f'{len(violations)} violation(s)'}")
    lines.append(f"wall time   {elapsed:.3f} s")
    return "\n".join(lines)
