"""Independent protocol checker.

Given a command log (cycles and commands) and a DramSpec, list every violated timing
constraint and every state error. It reads the spec's constraint records itself (never the
compiled kernel arrays), so a bug in the engine's compilation or kernels shows up here.

A record ``{from: A, to: B, scope, cycles, window}`` is violated by a command B at cycle
``tb`` when the latest earlier command of A sharing B's scope instance (or, with a window
W, the W-th most recent) issued at ``ta`` with ``tb - ta < cycles``. A command addressed to
all banks shares every bank group and bank.

State rules (open-page protocol): ACT to an open bank, ACT16 with any bank open, a column
command (RD, WR, MAC16) to a closed bank or another row, REFab with a bank open, REFpb to
an open bank. Cycles must strictly increase (one command per cycle).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from pimsim.config import DramSpec
from pimsim.standard import BANK_ADDRESSED, COMMANDS


@dataclass(frozen=True)
class Violation:
    rule: str              # the constraint (formula) or state rule that failed
    first_index: int       # index of the earlier command (-1 for state rules)
    first: str             # "CMD bg ba row col" of the earlier command
    first_cycle: int
    index: int             # index of the offending command in the log
    command: str
    cycle: int
    required: int          # minimum gap in cycles (0 for state rules)
    actual: int

    def __str__(self) -> str:
        if self.first_index < 0:
            return f"#{self.index} {self.command} at {self.cycle}: {self.rule}"
        return (f"#{self.index} {self.command} at {self.cycle} is {self.actual} cycles after "
                f"#{self.first_index} {self.first} at {self.first_cycle}; {self.rule} needs {self.required}")


def _text(c, g, a, r, k) -> str:
    return f"{COMMANDS[c]} {g} {a} {r} {k}"


def check_log(spec: DramSpec, cycles, cmd, bg, ba, row, col, *, state: bool = True,
              limit: int | None = None) -> list[Violation]:
    """All violations in a log (up to ``limit``), in log order."""
    cycles = np.asarray(cycles).tolist()
    cmd, bg, ba, row, col = (np.asarray(x).tolist() for x in (cmd, bg, ba, row, col))
    names = [COMMANDS[c] for c in cmd]
    bpg = spec.banks_per_bankgroup
    nb = spec.banks
    out: list[Violation] = []

    # For each command name: the records that constrain it (as B) and those it feeds (as A).
    as_b: dict[str, list[int]] = {c: [] for c in COMMANDS}
    as_a: dict[str, list[int]] = {c: [] for c in COMMANDS}
    for i, con in enumerate(spec.constraints):
        for b in con.to:
            as_b[b].append(i)
        for a in con.from_:
            as_a[a].append(i)
    # latest A per record: {key: index}, key "ch", ("bg", g), ("bank", g, a) or "all"
    latest: list[dict] = [dict() for _ in spec.constraints]
    recent: list[deque] = [deque(maxlen=max(c.window, 1)) for c in spec.constraints]
    open_row = [-1] * nb

    def keys_for(scope: str, j: int) -> list:
        if scope == "channel":
            return ["ch"]
        if names[j] not in BANK_ADDRESSED:
            return None  # all banks: matches every key
        if scope == "bankgroup":
            return [("bg", bg[j])]
        return [("bank", bg[j], ba[j])]

    def add(v: Violation) -> bool:
        out.append(v)
        return limit is not None and len(out) >= limit

    for j in range(len(cmd)):
        name = names[j]
        if j and cycles[j] <= cycles[j - 1]:
            if add(Violation("one command per cycle, cycles increasing", j - 1,
                             _text(cmd[j - 1], bg[j - 1], ba[j - 1], row[j - 1], col[j - 1]),
                             cycles[j - 1], j, _text(cmd[j], bg[j], ba[j], row[j], col[j]),
                             cycles[j], 1, cycles[j] - cycles[j - 1])):
                return out
        for ri in as_b[name]:
            con = spec.constraints[ri]
            if con.window:
                if len(recent[ri]) < con.window:
                    continue
                i = recent[ri][0]
            else:
                keys = keys_for(con.scope, j)
                table = latest[ri]
                if keys is None:
                    cands = list(table.values())
                else:
                    cands = [table[k] for k in keys + ["all"] if k in table]
                if not cands:
                    continue
                i = max(cands)
            gap = cycles[j] - cycles[i]
            if gap < con.cycles:
                if add(Violation(f"{'/'.join(con.from_)} -> {'/'.join(con.to)} {con.scope}"
                                 f"{' window ' + str(con.window) if con.window else ''}"
                                 f" = {con.formula or con.cycles}",
                                 i, _text(cmd[i], bg[i], ba[i], row[i], col[i]), cycles[i],
                                 j, _text(cmd[j], bg[j], ba[j], row[j], col[j]), cycles[j],
                                 con.cycles, gap)):
                    return out
        for ri in as_a[name]:
            con = spec.constraints[ri]
            if con.window:
                recent[ri].append(j)
                continue
            keys = keys_for(con.scope, j)
            if keys is None:
                latest[ri]["all"] = j
                # an all-bank command is the latest in every instance
                for k in list(latest[ri]):
                    latest[ri][k] = j
            else:
                for k in keys:
                    latest[ri][k] = j
        if state:
            problem = _state_step(name, bg[j], ba[j], row[j], open_row, bpg, nb)
            if problem and add(Violation(problem, -1, "", -1, j,
                                         _text(cmd[j], bg[j], ba[j], row[j], col[j]),
                                         cycles[j], 0, 0)):
                return out
    return out


def _state_step(name, g, a, r, open_row, bpg, nb) -> str | None:
    b = g * bpg + a if g >= 0 else -1
    problem = None
    if name == "ACT":
        if open_row[b] >= 0:
            problem = f"ACT to bank {g}.{a}, which has row {open_row[b]} open"
        open_row[b] = r
    elif name == "ACT16":
        if any(o >= 0 for o in open_row):
            problem = "ACT16 while a bank is open"
        for k in range(nb):
            open_row[k] = r
    elif name in ("RD", "WR"):
        if open_row[b] != r:
            problem = (f"{name} to row {r} of bank {g}.{a}, whose open row is "
                       f"{open_row[b] if open_row[b] >= 0 else 'none'}")
    elif name == "MAC16":
        bad = [k for k in range(nb) if open_row[k] != r]
        if bad:
            problem = f"MAC16 on row {r} while bank {bad[0] // bpg}.{bad[0] % bpg} has " \
                      f"{open_row[bad[0]] if open_row[bad[0]] >= 0 else 'no row'} open"
    elif name == "PRE":
        open_row[b] = -1
    elif name == "PREA":
        for k in range(nb):
            open_row[k] = -1
    elif name == "REFab":
        if any(o >= 0 for o in open_row):
            problem = "REFab while a bank is open"
    elif name == "REFpb":
        if open_row[b] >= 0:
            problem = f"REFpb to open bank {g}.{a}"
    return problem
