"""Command files: ``.cmds`` (``CMD bg ba row col`` a line) and ``.expected`` (issue cycle first).

The format is the one of the shared reference traces (FORMAT.md): plain ASCII, ``#``
comment lines, fields separated by single spaces, ``-1`` for "all" or "not applicable",
optionally gzip-compressed (``.gz``). Parsing and formatting are numba loops over bytes so
that a million-command file reads and writes in a fraction of a second; every malformed
line is reported with its file, line number and the offending text.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit

from pimsim.errors import TraceFormatError
from pimsim.standard import BANK_ADDRESSED, CMD_ID, COMMANDS, USES_COL, USES_ROW

_NAMES = np.zeros((len(COMMANDS), 8), dtype=np.uint8)
_NAME_LEN = np.zeros(len(COMMANDS), dtype=np.int64)
for _i, _n in enumerate(COMMANDS):
    _NAMES[_i, :len(_n)] = np.frombuffer(_n.encode(), dtype=np.uint8)
    _NAME_LEN[_i] = len(_n)

ERR_FIELDS = 1
ERR_COMMAND = 2
ERR_NUMBER = 3
ERR_RANGE = 4


@dataclass(frozen=True, eq=False)
class CommandStream:
    """One channel's commands in issue order (int64 arrays of equal length)."""

    cmd: np.ndarray
    bg: np.ndarray
    ba: np.ndarray
    row: np.ndarray
    col: np.ndarray
    #: Cycles from an ``.expected`` file, else None.
    cycle: np.ndarray | None = None
    #: 1-based source line of each command (for messages), else None.
    line: np.ndarray | None = None
    source: str = ""
    #: Absolute cycle of the first command in the source run (header), if stated.
    first_cycle: int | None = None

    def __len__(self) -> int:
        return int(self.cmd.shape[0])

    @staticmethod
    def from_records(records, source: str = "") -> "CommandStream":
        """From ``(CMD, bg, ba, row, col)`` tuples (command names or ids)."""
        n = len(records)
        arr = np.full((5, n), -1, dtype=np.int64)
        for i, rec in enumerate(records):
            name = rec[0]
            arr[0, i] = CMD_ID[name] if isinstance(name, str) else int(name)
            arr[1:, i] = rec[1:5]
        return CommandStream(arr[0].copy(), arr[1].copy(), arr[2].copy(), arr[3].copy(),
                             arr[4].copy(), source=source)

    def records(self) -> list[tuple[str, int, int, int, int]]:
        return [(COMMANDS[c], int(g), int(a), int(r), int(k))
                for c, g, a, r, k in zip(self.cmd, self.bg, self.ba, self.row, self.col)]


@njit(cache=True)
def _parse(buf, names, name_len, with_cycle, out, lines):
    """Parse bytes into out[6, n]: cycle, cmd, bg, ba, row, col. Returns (count, err, line)."""
    n = buf.shape[0]
    pos = 0
    line = 0
    count = 0
    nf = 6 if with_cycle else 5
    while pos < n:
        line += 1
        end = pos
        while end < n and buf[end] != 10:
            end += 1
        stop = end
        while stop > pos and (buf[stop - 1] == 13 or buf[stop - 1] == 32 or buf[stop - 1] == 9):
            stop -= 1
        if stop == pos or buf[pos] == 35:  # empty or '#'
            pos = end + 1
            continue
        p = pos
        field = 0
        while p < stop:
            if field >= nf:
                return count, ERR_FIELDS, line
            q = p
            while q < stop and buf[q] != 32:
                q += 1
            if q == p:
                return count, ERR_FIELDS, line  # two spaces in a row, or a leading space
            is_cmd = field == (1 if with_cycle else 0)
            if is_cmd:
                found = -1
                for c in range(names.shape[0]):
                    if name_len[c] == q - p:
                        ok = True
                        for j in range(q - p):
                            if names[c, j] != buf[p + j]:
                                ok = False
                                break
                        if ok:
                            found = c
                            break
                if found < 0:
                    return count, ERR_COMMAND, line
                out[1, count] = found
            else:
                neg = False
                s = p
                if buf[s] == 45:
                    neg = True
                    s += 1
                if s == q:
                    return count, ERR_NUMBER, line
                if q - s > 18:
                    return count, ERR_RANGE, line
                v = 0
                for j in range(s, q):
                    d = buf[j] - 48
                    if d < 0 or d > 9:
                        return count, ERR_NUMBER, line
                    v = v * 10 + d
                if neg:
                    v = -v
                if with_cycle and field == 0:
                    out[0, count] = v
                else:
                    out[field + (1 if not with_cycle else 0), count] = v
            field += 1
            p = q + 1
            if q == stop - 1 + 1 and q < stop:
                pass
        if field != nf or buf[stop - 1] == 32:
            return count, ERR_FIELDS, line
        lines[count] = line
        count += 1
        pos = end + 1
    return count, 0, line


_HEADER_FIRST = re.compile(rb"#\s*first command issued at absolute cycle (\d+)")


def read_bytes(path: str | Path) -> bytes:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise TraceFormatError(f"{p}: cannot read: {exc.strerror}") from None
    if p.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise TraceFormatError(f"{p}: not a valid gzip file ({exc})") from None
    return data


def parse_commands(data: bytes, source: str = "<commands>", with_cycle: bool = False) -> CommandStream:
    """Parse ``.cmds`` (or, with ``with_cycle``, ``.expected``) text into a stream."""
    try:
        data.decode("ascii")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise TraceFormatError(f"{source}:{line}: not ASCII") from None
    buf = np.frombuffer(data, dtype=np.uint8)
    cap = data.count(b"\n") + 1
    out = np.full((6, cap), -1, dtype=np.int64)
    lines = np.zeros(cap, dtype=np.int64)
    count, err, line = _parse(buf, _NAMES, _NAME_LEN, with_cycle, out, lines)
    if err:
        text = data.split(b"\n")[line - 1].decode("ascii", "replace").rstrip("\r")
        nf = 6 if with_cycle else 5
        fmt = "cycle CMD bg ba row col" if with_cycle else "CMD bg ba row col"
        if err == ERR_COMMAND:
            name = text.split(" ")[1 if with_cycle else 0] if text.strip() else ""
            msg = f"unknown command {name!r} (known: {', '.join(COMMANDS)})"
        elif err == ERR_NUMBER:
            msg = f"expected integers in '{fmt}', got {text!r}"
        elif err == ERR_RANGE:
            msg = f"a number of more than 18 digits is out of range, in {text!r}"
        else:
            msg = f"expected {nf} fields '{fmt}' separated by single spaces, got {text!r}"
        raise TraceFormatError(f"{source}:{line}: {msg}")
    if with_cycle and count and out[0, :count].min() < 0:
        i = int(np.argmax(out[0, :count] < 0))
        raise TraceFormatError(f"{source}:{lines[i]}: cycle {out[0, i]} is negative (cycles count "
                               f"from the first command, at cycle 0)")
    m = _HEADER_FIRST.search(data[:4096])
    return CommandStream(
        cmd=out[1, :count].copy(), bg=out[2, :count].copy(), ba=out[3, :count].copy(),
        row=out[4, :count].copy(), col=out[5, :count].copy(),
        cycle=out[0, :count].copy() if with_cycle else None, line=lines[:count].copy(),
        source=source, first_cycle=int(m.group(1)) if m else None)


def read_commands(path: str | Path) -> CommandStream:
    """Read a ``.cmds`` file (``.expected`` when the name says so)."""
    p = Path(path)
    name = p.name[:-3] if p.name.endswith(".gz") else p.name
    return parse_commands(read_bytes(p), str(p), with_cycle=name.endswith(".expected"))


def validate(stream: CommandStream, *, bankgroups: int, banks_per_bankgroup: int, rows: int,
             columns: int, gb_slots: int, commands: tuple[str, ...], what: str = "") -> None:
    """Check every command against the organisation and the standard's command set.

    Raises :class:`TraceFormatError` naming the first bad line, its field and value.
    """
    n = len(stream)
    if n == 0:
        return
    src = stream.source
    line = stream.line if stream.line is not None else np.arange(1, n + 1)

    def fail(mask: np.ndarray, message) -> None:
        idx = np.flatnonzero(mask)
        if idx.size:
            i = int(idx[0])
            raise TraceFormatError(f"{src}:{int(line[i])}: {COMMANDS[int(stream.cmd[i])]}: {message(i)}")

    supported = np.array([c in commands for c in COMMANDS])
    fail(~supported[stream.cmd],
         lambda i: f"command not in the standard{what} (it has {', '.join(commands)})")
    bank_cmd = np.array([c in BANK_ADDRESSED for c in COMMANDS])[stream.cmd]
    uses_row = np.array([c in USES_ROW for c in COMMANDS])[stream.cmd]
    uses_col = np.array([c in USES_COL for c in COMMANDS])[stream.cmd]
    is_wrgb = stream.cmd == CMD_ID["WRGB"]
    fail(bank_cmd & ((stream.bg < 0) | (stream.bg >= bankgroups)),
         lambda i: f"bank group {int(stream.bg[i])} out of range 0..{bankgroups - 1}")
    fail(bank_cmd & ((stream.ba < 0) | (stream.ba >= banks_per_bankgroup)),
         lambda i: f"bank {int(stream.ba[i])} out of range 0..{banks_per_bankgroup - 1}")
    fail(~bank_cmd & ((stream.bg != -1) | (stream.ba != -1)),
         lambda i: f"acts on all banks, so bg and ba must be -1, got {int(stream.bg[i])} {int(stream.ba[i])}")
    fail(uses_row & ((stream.row < 0) | (stream.row >= rows)),
         lambda i: f"row {int(stream.row[i])} out of range 0..{rows - 1}")
    fail(~uses_row & (stream.row != -1), lambda i: f"carries no row, so row must be -1, got {int(stream.row[i])}")
    limit = np.where(is_wrgb, gb_slots, columns)
    fail(uses_col & ((stream.col < 0) | (stream.col >= limit)),
         lambda i: f"column {int(stream.col[i])} out of range 0..{int(limit[i]) - 1}")
    fail(~uses_col & (stream.col != -1), lambda i: f"carries no column, so col must be -1, got {int(stream.col[i])}")


@njit(cache=True)
def _format(cycles, cmd, bg, ba, row, col, names, name_len, out):
    pos = 0
    tmp = np.zeros(24, dtype=np.uint8)
    for i in range(cmd.shape[0]):
        for f in range(6):
            if f == 1:
                c = cmd[i]
                for j in range(name_len[c]):
                    out[pos] = names[c, j]
                    pos += 1
            else:
                if f == 0:
                    v = cycles[i]
                elif f == 2:
                    v = bg[i]
                elif f == 3:
                    v = ba[i]
                elif f == 4:
                    v = row[i]
                else:
                    v = col[i]
                if v < 0:
                    out[pos] = 45
                    pos += 1
                    v = -v
                k = 0
                while True:
                    tmp[k] = 48 + v % 10
                    v //= 10
                    k += 1
                    if v == 0:
                        break
                for j in range(k):
                    out[pos] = tmp[k - 1 - j]
                    pos += 1
            out[pos] = 32 if f < 5 else 10
            pos += 1
    return pos


def format_log(cycles: np.ndarray, stream: CommandStream) -> bytes:
    """``cycle CMD bg ba row col`` lines, the format of ``.expected`` files."""
    n = len(stream)
    out = np.empty(n * 80 + 1, dtype=np.uint8)
    size = _format(np.asarray(cycles, dtype=np.int64), stream.cmd, stream.bg, stream.ba,
                   stream.row, stream.col, _NAMES, _NAME_LEN, out)
    return out[:size].tobytes()
