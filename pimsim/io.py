"""File output that leaves nothing half-written.

Results are written to a temporary file in the destination folder and moved into place
only when complete, so an error or an interrupt never leaves a partial output file.
A destination that cannot be written is a :class:`pimsim.errors.OutputError` naming it;
:func:`check_output` finds that out before a long run starts.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

from pimsim.errors import OutputError


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _usable_folder(path: Path, what: str) -> None:
    """``path`` is (or can be made) a folder this process may create files in."""
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{what}: {existing} is not a folder")
    try:
        probe = tempfile.mkdtemp(prefix=".pimsim-probe.", dir=existing)
    except OSError as exc:
        raise OutputError(f"{what}: cannot create files in {existing}: {_reason(exc)}") from None
    os.rmdir(probe)


def check_output(path: str | os.PathLike, *, folder: bool, what: str | None = None) -> None:
    """Raise :class:`OutputError` now if ``path`` (a folder to create or fill when
    ``folder``, else a file) cannot be written; nothing is left behind. ``what`` names
    the destination in the message (default: the path)."""
    p = Path(path)
    what = what or str(path)
    if folder:
        _usable_folder(p, what)
        return
    if p.is_dir():
        raise OutputError(f"{what}: is a folder, not a file")
    _usable_folder(p.parent, what)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open ``path`` for writing through a temporary file renamed into place on success."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise OutputError(f"{target}: cannot write: {_reason(exc)}") from None
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
        _publish(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OutputError(f"{target}: cannot write: {_reason(exc)}") from None
        raise


def _publish(tmp: str, target: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
    os.replace(tmp, target)


def write_all(folder: str | os.PathLike, files: dict[str, bytes]) -> None:
    """Write ``files`` (relative path -> bytes) under ``folder`` all or none: every file goes
    to a temporary file first, and they are moved into place only when all are written.
    Folders made on the way are removed again when something fails."""
    out = Path(folder)
    check_output(out, folder=True)
    targets = {name: out / name for name in files}
    for target in targets.values():
        if target.is_dir():
            raise OutputError(f"{target}: is a folder, not a file")
    created: list[Path] = []          # folders this call made, parents first
    tmps: dict[str, str] = {}
    try:
        for name, data in files.items():
            parent = targets[name].parent
            missing = [d for d in (parent, *parent.parents) if not d.exists()]
            parent.mkdir(parents=True, exist_ok=True)
            created += reversed(missing)
            fd, tmps[name] = tempfile.mkstemp(prefix=f".{targets[name].name}.", suffix=".tmp",
                                              dir=parent)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        for name in files:
            _publish(tmps.pop(name), targets[name])
    except BaseException as exc:
        for tmp in tmps.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        for d in reversed(created):
            with contextlib.suppress(OSError):
                d.rmdir()
        if isinstance(exc, OSError):
            raise OutputError(f"{out}: cannot write: {_reason(exc)}") from None
        raise


def not_utf8(exc: UnicodeDecodeError) -> str:
    """What is wrong with a file that is not UTF-8 (the first bad byte and its offset)."""
    return f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})"
