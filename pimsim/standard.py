"""DRAM/PIM standards as data: the command set and timing-constraint records.

A standard is a YAML table in ``pimsim/standards/`` (Ramulator 2.x style): the commands it
supports and its constraints, each a record ``{from, to, scope, latency, window}`` whose
latency is an expression over named timing parameters (``nRCDRD``, ``max(nBL, nCCDS)``).
Resolving a standard against a preset's timing values gives :class:`Constraint` records in
cycles; the engine compiles those into arrays (:mod:`pimsim.engine.compile`) and the
protocol checker reads them directly.

The command vocabulary is fixed (the order gives the integer command ids used by the
engine and the command-file parser):

========  ========  ==========  ===================================================
command   address   kind        meaning
========  ========  ==========  ===================================================
ACT       bank      activate    open ``row`` in one bank
RD        bank      column      read one 32 B column of the open row
WR        bank      column      write one 32 B column of the open row
PRE       bank      precharge   close one bank
PREA      all       precharge   close all banks
REFab     all       refresh     refresh all banks (all banks must be closed)
REFpb     bank      refresh     refresh one bank (that bank must be closed)
ACT16     all       activate    open the same ``row`` in all banks (PIM)
MAC16     all       column      multiply-accumulate column ``col`` in all banks (PIM)
WRGB      all       buffer      write 32 B into global-buffer slot ``col`` (PIM)
RDMAC16   all       buffer      read the MAC results of all banks (PIM)
TMOD      all       mode        switch between bank commands and buffer/register access
========  ========  ==========  ===================================================
"""

from __future__ import annotations

import ast
import functools
import importlib.resources
from dataclasses import dataclass
from typing import Mapping

import yaml

from pimsim.errors import ConfigError

COMMANDS: tuple[str, ...] = (
    "ACT", "RD", "WR", "PRE", "PREA", "REFab", "REFpb",
    "ACT16", "MAC16", "WRGB", "RDMAC16", "TMOD",
)
CMD_ID: dict[str, int] = {name: i for i, name in enumerate(COMMANDS)}
N_COMMANDS = len(COMMANDS)

#: Commands addressed to one bank (``bg ba`` carry values); all others act on all banks.
BANK_ADDRESSED = frozenset({"ACT", "RD", "WR", "PRE", "REFpb"})
#: Commands whose ``row`` field carries a value.
USES_ROW = frozenset({"ACT", "RD", "WR", "ACT16", "MAC16"})
#: Commands whose ``col`` field carries a value (a global-buffer slot for WRGB).
USES_COL = frozenset({"RD", "WR", "MAC16", "WRGB"})
#: Column commands: they need their row open and may issue while a refresh is pending.
COLUMN = frozenset({"RD", "WR", "MAC16"})

KIND: dict[str, str] = {
    "ACT": "activate", "RD": "column", "WR": "column", "PRE": "precharge",
    "PREA": "precharge", "REFab": "refresh", "REFpb": "refresh", "ACT16": "activate",
    "MAC16": "column", "WRGB": "buffer", "RDMAC16": "buffer", "TMOD": "mode",
}

SCOPES: tuple[str, ...] = ("channel", "bankgroup", "bank")
SCOPE_ID: dict[str, int] = {name: i for i, name in enumerate(SCOPES)}


@dataclass(frozen=True)
class Constraint:
    """Command B (in ``to``) issues at least ``cycles`` after command A (in ``from_``).

    The two commands must share ``scope`` (a command addressed to all banks shares every
    bank group and bank). Without a window the limit counts from the latest A; with
    ``window`` W it counts from the W-th most recent A (four-activate-style rules).
    """

    from_: tuple[str, ...]
    to: tuple[str, ...]
    scope: str
    cycles: int
    formula: str = ""
    window: int = 0

    def describe(self) -> str:
        win = f", window {self.window}" if self.window else ""
        return (f"{'/'.join(self.from_)} -> {'/'.join(self.to)} ({self.scope}{win}): "
                f"{self.cycles} cycles = {self.formula or self.cycles}")


@dataclass(frozen=True)
class ConstraintRule:
    """A constraint of a standard before its latency expression is resolved."""

    from_: tuple[str, ...]
    to: tuple[str, ...]
    scope: str
    latency: str
    window: int = 0


@dataclass(frozen=True)
class Standard:
    """A DRAM/PIM standard: supported commands and constraint rules."""

    name: str
    description: str
    source: str
    commands: tuple[str, ...]
    rules: tuple[ConstraintRule, ...]
    #: TMOD issues only once the command after it would be allowed (AiM controller).
    tmod_lookahead: bool

    def parameters(self) -> frozenset[str]:
        """Timing parameter names the latency expressions use."""
        names: set[str] = set()
        for rule in self.rules:
            names |= expression_names(rule.latency)
        return frozenset(names)

    def resolve(self, timing: Mapping[str, int], where: str = "") -> tuple[Constraint, ...]:
        """Evaluate every rule's latency with ``timing`` (cycles) into constraints."""
        out = []
        for rule in self.rules:
            cycles = evaluate(rule.latency, timing, where=f"{where}standard {self.name}: "
                              f"{'/'.join(rule.from_)} -> {'/'.join(rule.to)}")
            out.append(Constraint(rule.from_, rule.to, rule.scope, max(0, cycles),
                                  rule.latency, rule.window))
        return tuple(out)


# --------------------------------------------------------------------------- expressions

_ALLOWED_FUNCS = {"max": max, "min": min}


def _check_node(node: ast.AST, text: str) -> None:
    allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Add, ast.Sub, ast.Mult,
               ast.FloorDiv, ast.USub, ast.UAdd, ast.Constant, ast.Name, ast.Load, ast.Call)
    for sub in ast.walk(node):
        if not isinstance(sub, allowed):
            raise ValueError(f"unsupported syntax in latency expression {text!r}")
        if isinstance(sub, ast.Constant) and not isinstance(sub.value, int):
            raise ValueError(f"non-integer constant in latency expression {text!r}")
        if isinstance(sub, ast.Call) and not (
            isinstance(sub.func, ast.Name) and sub.func.id in _ALLOWED_FUNCS and not sub.keywords
        ):
            raise ValueError(f"only max() and min() may be called in {text!r}")


@functools.lru_cache(maxsize=None)
def _parse(text: str) -> ast.Expression:
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"malformed latency expression {text!r}") from exc
    _check_node(tree, text)
    return tree


def expression_names(text: str) -> set[str]:
    """Parameter names used by a latency expression."""
    try:
        tree = _parse(text)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id not in _ALLOWED_FUNCS}


def evaluate(text: str, values: Mapping[str, int], where: str = "") -> int:
    """Evaluate a latency expression (integers, + - * //, max, min) over named values."""
    at = f"{where}: " if where else ""
    try:
        tree = _parse(text)
    except ValueError as exc:
        raise ConfigError(f"{at}{exc}") from None
    missing = expression_names(text) - set(values)
    if missing:
        raise ConfigError(f"{at}latency {text!r} uses undefined parameter(s) "
                          f"{', '.join(sorted(missing))}")
    env = dict(_ALLOWED_FUNCS)
    env.update(values)
    try:
        return int(eval(compile(tree, "<latency>", "eval"), {"__builtins__": {}}, env))  # noqa: S307
    except ArithmeticError as exc:
        raise ConfigError(f"{at}latency {text!r}: {exc}") from None


# --------------------------------------------------------------------------- loading

_RULE_KEYS = {"from", "to", "scope", "latency", "window"}


def _rule_from_yaml(entry: object, where: str) -> ConstraintRule:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: a constraint must be a mapping, got {entry!r}")
    unknown = set(entry) - _RULE_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    for key in ("from", "to", "scope", "latency"):
        if key not in entry:
            raise ConfigError(f"{where}: missing key '{key}'")
    froms, tos = entry["from"], entry["to"]
    for key, cmds in (("from", froms), ("to", tos)):
        if not isinstance(cmds, list) or not cmds:
            raise ConfigError(f"{where}: '{key}' must be a non-empty list of commands")
        for c in cmds:
            if c not in CMD_ID:
                raise ConfigError(f"{where}: unknown command {c!r} in '{key}'")
    if entry["scope"] not in SCOPE_ID:
        raise ConfigError(f"{where}: scope must be one of {', '.join(SCOPES)}, got {entry['scope']!r}")
    window = entry.get("window", 0)
    if not isinstance(window, int) or window < 0:
        raise ConfigError(f"{where}: window must be a positive integer, got {window!r}")
    latency = str(entry["latency"])
    expression_names(latency)  # syntax check
    return ConstraintRule(tuple(froms), tuple(tos), entry["scope"], latency, window)


def _key(rule: ConstraintRule | dict) -> tuple:
    if isinstance(rule, dict):
        return (tuple(rule["from"]), tuple(rule["to"]), rule["scope"])
    return (rule.from_, rule.to, rule.scope)


def standard_names() -> list[str]:
    files = importlib.resources.files("pimsim.standards")
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))


@functools.lru_cache(maxsize=None)
def load_standard(name: str) -> Standard:
    """Load a standard by name (``pimsim/standards/NAME.yaml``), following ``extends``."""
    if name not in standard_names():
        raise ConfigError(f"unknown standard {name!r} (known: {', '.join(standard_names())})")
    path = importlib.resources.files("pimsim.standards") / f"{name}.yaml"
    where = f"standards/{name}.yaml"
    data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506
    allowed = {"name", "description", "source", "commands", "constraints", "extends",
               "remove", "add", "tmod_lookahead"}
    unknown = set(data) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    if "extends" in data:
        base = load_standard(data["extends"])
        removed = {_key(r) for r in data.get("remove", [])}
        missing = removed - {_key(r) for r in base.rules}
        if missing:
            raise ConfigError(f"{where}: 'remove' names constraints the base lacks: {sorted(missing)}")
        rules = [r for r in base.rules if _key(r) not in removed]
        rules += [_rule_from_yaml(e, f"{where}: add[{i}]") for i, e in enumerate(data.get("add", []))]
        commands = tuple(data.get("commands", base.commands))
        lookahead = bool(data.get("tmod_lookahead", base.tmod_lookahead))
    else:
        rules = [_rule_from_yaml(e, f"{where}: constraints[{i}]")
                 for i, e in enumerate(data.get("constraints", []))]
        commands = tuple(data["commands"])
        lookahead = bool(data.get("tmod_lookahead", False))
    for c in commands:
        if c not in CMD_ID:
            raise ConfigError(f"{where}: unknown command {c!r} in 'commands'")
    return Standard(name=data["name"], description=data.get("description", ""),
                    source=data.get("source", ""), commands=commands, rules=tuple(rules),
                    tmod_lookahead=lookahead)
