"""Arguments and loading shared by the subcommands that take a timing spec."""

from __future__ import annotations

import sys

from pimsim.errors import PimsimError


def progress_bar(verb: str, unit: str):
    """A progress callback ``(done, total, *rest)`` drawing a bar on a terminal's stderr
    (nothing when stderr is not a terminal)."""
    tty = sys.stderr.isatty()

    def show(done: int, total: int, *_rest) -> None:
        if not tty:
            return
        width = 30
        fill = int(width * done / total) if total else width
        sys.stderr.write(f"\r{verb} [{'#' * fill}{'.' * (width - fill)}] {done}/{total} {unit}")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def write_files(out: str, files: dict[str, bytes]) -> None:
    """Write ``files`` (name -> bytes, all computed first) into directory ``out``, all or
    none."""
    from pimsim.io import write_all

    write_all(out, files)


def check_out(path: str | None, folder: bool) -> None:
    """Fail before any work when ``--out`` names a place that cannot be written (or is
    empty)."""
    if path is not None and not str(path):
        raise PimsimError(f"--out: empty path (name the {'folder' if folder else 'file'} "
                          f"to write)")
    if path:
        from pimsim.io import check_output

        check_output(path, folder=folder, what=f"--out {path}")


def add_preset_arguments(p, example: str = "") -> None:
    """``--preset NAME`` (default pim-gpt) and repeatable ``--set KEY=VALUE``."""
    p.add_argument("--preset", default="pim-gpt", help="preset name or YAML file (default pim-gpt)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a preset value{', e.g. ' + example if example else ''} "
                        f"(repeatable)")


def add_spec_arguments(p) -> None:
    """``--timing FILE`` | ``--preset NAME`` and repeatable ``--set KEY=VALUE``."""
    src = p.add_mutually_exclusive_group()
    src.add_argument("--timing", metavar="FILE", help="reference timing file (*.timing.yaml)")
    src.add_argument("--preset", metavar="NAME", help="preset name or YAML file (default: pim-gpt)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset value, e.g. timing.nRP=30 (repeatable)")


def load_spec(args):
    """The DramSpec the arguments name."""
    from pimsim.config import load_preset, load_timing_file

    if args.timing:
        if args.overrides:
            raise PimsimError("--set applies to presets, not to a --timing file")
        return load_timing_file(args.timing)
    return load_preset(args.preset or "pim-gpt", args.overrides).dram
