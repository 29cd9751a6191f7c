"""The ``pimsim`` command line.

Each subcommand lives in its own module of this package and exposes
``add_parser(subparsers)`` and ``run(args) -> int``. Library errors
(:class:`pimsim.errors.PimsimError`) are printed as one line and give exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pimsim import __version__
from pimsim.errors import PimsimError

#: Subcommand modules, in the order ``pimsim --help`` lists them.
SUBCOMMANDS = ["simulate", "functional", "sweep", "validate", "replay", "check", "presets", "trace",
               "map"]


class _Parser(argparse.ArgumentParser):
    """argparse that exits with status 2 and a one-line message on a usage error."""

    def error(self, message: str) -> None:  # pragma: no cover - exercised through main()
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pimsim", description="Simulator and co-design environment for PIM-GPT.")
    parser.add_argument("--version", action="version", version=f"pimsim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"pimsim.cli.{name}")
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PimsimError as exc:
        print(f"pimsim: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pimsim: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into a command that stopped reading (e.g. `| head`).
        try:
            sys.stdout = None  # type: ignore[assignment]
        finally:
            return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
