"""Errors that reach the user.

Every error that bad input can cause is a :class:`PimsimError` (or a subclass) whose
message is one line naming the file, line or key and the bad value. The command line
prints it without a traceback and exits with status 2.
"""

from __future__ import annotations

import numbers


class PimsimError(Exception):
    """Bad input or an impossible request, described in one line."""


class ConfigError(PimsimError):
    """A preset, timing file or override is malformed or inconsistent."""


class TraceFormatError(PimsimError):
    """A command file (or other trace) is malformed."""


class OutputError(PimsimError):
    """An output file or folder cannot be written."""


def is_count(value) -> bool:
    """An integer (numpy integers too); a bool is not a count."""
    return not isinstance(value, bool) and isinstance(value, numbers.Integral)


def count_arg(value, name: str, what: str, least: int, error: type = PimsimError) -> int:
    """An integer argument of at least ``least`` as an int; else ``error``, one line:
    ``{name} must be {what}, got {value}``."""
    if not is_count(value) or value < least:
        raise error(f"{name} must be {what}, got {value!r:.60}")
    return int(value)
