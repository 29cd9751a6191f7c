"""Command-stream generators: the PIM patterns the mappers emit, and seeded random streams.

Used by the demo (``pimsim replay`` without a file), the benchmarks and the tests.
"""

from __future__ import annotations

import numpy as np

from pimsim.engine.cmdfile import CommandStream
from pimsim.standard import CMD_ID

_C = CMD_ID


def _stream(cols: list[np.ndarray], source: str) -> CommandStream:
    cmd, bg, ba, row, col = (np.ascontiguousarray(c, dtype=np.int64) for c in cols)
    return CommandStream(cmd, bg, ba, row, col, source=source)


def mac_rows(rows: int, columns: int = 64, first_row: int = 0) -> CommandStream:
    """All-bank MAC over ``rows`` rows: ACT16, ``columns`` MAC16, PREA between rows.

    The pattern of one weight-streaming VMM kernel (AiM's MAC_ABK with opsize ``columns``
    per row): the last row stays open, as the AiM controller leaves it.
    """
    per = columns + 2
    n = rows * per - 1
    cmd = np.empty(rows * per, dtype=np.int64)
    row = np.empty(rows * per, dtype=np.int64)
    col = np.full(rows * per, -1, dtype=np.int64)
    block = np.full(per, _C["MAC16"], dtype=np.int64)
    block[0] = _C["ACT16"]
    block[-1] = _C["PREA"]
    cmd[:] = np.tile(block, rows)
    r = np.repeat(np.arange(first_row, first_row + rows, dtype=np.int64), per)
    row[:] = np.where(cmd == _C["PREA"], -1, r)
    colblock = np.full(per, -1, dtype=np.int64)
    colblock[1:-1] = np.arange(columns)
    col[:] = np.tile(colblock, rows)
    neg = np.full(n, -1, dtype=np.int64)
    return _stream([cmd[:n], neg, neg, row[:n], col[:n]], f"mac_rows({rows}x{columns})")


def gemv_tile(rows: int = 8, columns: int = 64, gb_slots: int = 64) -> CommandStream:
    """One GEMV tile as AiM runs it: load the global buffer, MAC over rows, read results.

    TMOD, ``gb_slots`` x WRGB, TMOD, ``rows`` x (ACT16, MAC16 x columns[, PREA]), TMOD, RDMAC16.
    """
    head = [(_C["TMOD"], -1)] + [(_C["WRGB"], s) for s in range(gb_slots)] + [(_C["TMOD"], -1)]
    mac = mac_rows(rows, columns)
    tail = [(_C["TMOD"], -1), (_C["RDMAC16"], -1)]
    cmd = np.concatenate([[c for c, _ in head], mac.cmd, [c for c, _ in tail]])
    col = np.concatenate([[s for _, s in head], mac.col, [s for _, s in tail]])
    row = np.concatenate([[-1] * len(head), mac.row, [-1] * len(tail)])
    neg = np.full(cmd.size, -1, dtype=np.int64)
    return _stream([cmd, neg, neg, row, col], f"gemv_tile({rows}x{columns})")


def read_rows(reads: int, bankgroups: int = 4, banks_per_bankgroup: int = 4,
              columns: int = 64) -> CommandStream:
    """``reads`` reads in stream order: row after row, each row opened in every bank
    (bank-major), all its columns read, then precharged."""
    banks = bankgroups * banks_per_bankgroup
    per_bank = columns + 2  # ACT, reads, PRE
    units = -(-reads // columns)
    idx = np.arange(units)
    bank = idx % banks
    rowv = idx // banks
    cmd = np.tile(np.array([_C["ACT"]] + [_C["RD"]] * columns + [_C["PRE"]], dtype=np.int64), units)
    bgv = np.repeat(bank // banks_per_bankgroup, per_bank)
    bav = np.repeat(bank % banks_per_bankgroup, per_bank)
    rowv = np.repeat(rowv, per_bank)
    colv = np.tile(np.array([-1] + list(range(columns)) + [-1], dtype=np.int64), units)
    rowv = np.where(cmd == _C["PRE"], -1, rowv)
    return _stream([cmd, bgv, bav, rowv, colv], f"read_rows({reads})")


def random_stream(rng: np.random.Generator, n: int, *, bankgroups: int = 4,
                  banks_per_bankgroup: int = 4, rows: int = 64, columns: int = 64,
                  gb_slots: int = 64, commands: tuple[str, ...] | None = None) -> CommandStream:
    """A random, protocol-valid stream (rows opened before use, banks closed before
    refresh) over the commands a standard supports."""
    allowed = set(commands) if commands is not None else set(CMD_ID)
    banks = bankgroups * banks_per_bankgroup
    open_row = [-1] * banks
    out = []
    for _ in range(n):
        all_open_row = open_row[0] if len(set(open_row)) == 1 and open_row[0] >= 0 else -1
        any_open = any(r >= 0 for r in open_row)
        choices = []
        b = int(rng.integers(banks))
        g, a = divmod(b, banks_per_bankgroup)
        if open_row[b] < 0:
            choices += [("ACT", 6), ("REFpb", 1)]
        else:
            choices += [("RD", 8), ("WR", 4), ("PRE", 3)]
        if any_open:
            choices.append(("PREA", 1))
        else:
            choices += [("ACT16", 3), ("REFab", 1)]
        if all_open_row >= 0:
            choices.append(("MAC16", 10))
        choices += [("WRGB", 2), ("RDMAC16", 1), ("TMOD", 1)]
        choices = [(c, w) for c, w in choices if c in allowed]
        names = [c for c, _ in choices]
        weights = np.array([w for _, w in choices], dtype=float)
        c = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        r = int(rng.integers(rows))
        if c == "ACT":
            open_row[b] = r
            out.append((c, g, a, r, -1))
        elif c in ("RD", "WR"):
            out.append((c, g, a, open_row[b], int(rng.integers(columns))))
        elif c == "PRE":
            open_row[b] = -1
            out.append((c, g, a, -1, -1))
        elif c == "REFpb":
            out.append((c, g, a, -1, -1))
        elif c in ("PREA", "REFab", "RDMAC16", "TMOD"):
            if c == "PREA":
                open_row = [-1] * banks
            out.append((c, -1, -1, -1, -1))
        elif c == "ACT16":
            open_row = [r] * banks
            out.append((c, -1, -1, r, -1))
        elif c == "MAC16":
            out.append((c, -1, -1, all_open_row, int(rng.integers(columns))))
        elif c == "WRGB":
            out.append((c, -1, -1, -1, int(rng.integers(gb_slots))))
    return CommandStream.from_records(out, source="random")
