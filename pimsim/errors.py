"""Errors that reach the user.

Every error that bad input can cause is a :class:`PimsimError` (or a subclass) whose
message is one line naming the file, line or key and the bad value. The command line
prints it without a traceback and exits with status 2.
"""


class PimsimError(Exception):
    """Bad input or an impossible request, described in one line."""


class ConfigError(PimsimError):
    """A preset, timing file or override is malformed or inconsistent."""


class TraceFormatError(PimsimError):
    """A command file (or other trace) is malformed."""


class OutputError(PimsimError):
    """An output file or folder cannot be written."""
