"""``pimsim check``: protocol-check a command log (``cycle CMD bg ba row col`` lines)."""

from __future__ import annotations

import sys

from pimsim.cli._common import add_spec_arguments, load_spec
from pimsim.errors import PimsimError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "check", help="check a command log with cycles against a timing spec",
        description="Read a log in the .expected format (issue cycle first) and list every "
                    "violated timing constraint (rule, both commands, their cycles, the required "
                    "gap) and protocol-state error. Exit status 1 when there are violations.")
    p.add_argument("file", help="log file (cycle CMD bg ba row col), optionally .gz")
    add_spec_arguments(p)
    p.add_argument("--no-state", action="store_true", help="check timing only, not open/closed rows")
    p.add_argument("--limit", type=int, default=100, help="stop after this many violations (default 100)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pimsim.engine import check
    from pimsim.engine.cmdfile import parse_commands, read_bytes, validate

    spec = load_spec(args)
    if args.limit < 1:
        raise PimsimError(f"--limit must be positive, got {args.limit}")
    log = parse_commands(read_bytes(args.file), args.file, with_cycle=True)
    validate(log, bankgroups=spec.bankgroups, banks_per_bankgroup=spec.banks_per_bankgroup,
             rows=spec.rows, columns=spec.columns, gb_slots=spec.gb_slots, commands=spec.commands,
             what=f" of {spec.name}")
    violations = check(spec, log.cycle, log, state=not args.no_state, limit=args.limit)
    for v in violations:
        line = int(log.line[v.index]) if log.line is not None else v.index + 1
        print(f"{args.file}:{line}: {v}")
    if violations:
        more = f" (stopped at --limit {args.limit})" if len(violations) >= args.limit else ""
        print(f"pimsim: check: {len(violations)} violation(s){more}", file=sys.stderr)
        return 1
    print(f"{args.file}: no violation in {len(log)} commands")
    return 0
