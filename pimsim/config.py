"""Configuration: YAML presets and reference timing files into frozen, validated specs.

Two inputs give a :class:`DramSpec` (what the channel engine needs):

* a pimsim **preset** (``pimsim/presets/NAME.yaml`` or a file of the same shape), which names a
  standard (:mod:`pimsim.standard`) and gives organisation, clock, timing parameters in
  command-clock cycles, the PIM unit and the refresh policy; it loads into a
  :class:`SystemSpec` whose ``dram`` is the DramSpec;
* a reference **timing file** (the ``*.timing.yaml`` format of the reference traces), whose
  constraint table is taken as it is, with the quirks that change behaviour recognised.

Every key is checked: unknown or missing keys, values of the wrong type or unit and
inconsistent values raise :class:`pimsim.errors.ConfigError` naming the file (or the
``--set`` override), the key and the value. Overrides (``timing.nRP=30``) are applied to the
raw document and go through the same validation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import json
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from pimsim.asic import AsicSpec
from pimsim.errors import ConfigError
from pimsim.io import not_utf8
from pimsim.standard import (
    BANK_ADDRESSED, CMD_ID, COMMANDS, SCOPE_ID, SCOPES, Constraint, evaluate, load_standard,
)

#: Timing parameter names (command-clock cycles), with their meaning. JEDEC names verbatim.
TIMING_PARAMETERS: dict[str, str] = {
    "nBL": "data-bus cycles of one burst",
    "nCL": "read latency (RD to data)",
    "nCWL": "write latency (WR to data)",
    "nRCDRD": "ACT to RD, same bank",
    "nRCDWR": "ACT to WR, same bank",
    "nRP": "precharge to ACT",
    "nRAS": "ACT to precharge",
    "nRC": "ACT to ACT, same bank",
    "nWR": "write recovery",
    "nRTP": "RD to precharge",
    "nCCDS": "column to column, other bank group",
    "nCCDL": "column to column, same bank group",
    "nRRDS": "ACT to ACT, other bank group",
    "nRRDL": "ACT to ACT, same bank group",
    "nFAW": "four-activate window",
    "nWTRS": "write-to-read turnaround, other bank group",
    "nWTRL": "write-to-read turnaround, same bank group",
    "nRFCab": "all-bank refresh cycle time",
    "nRFCpb": "per-bank refresh cycle time",
    "nREFI": "refresh interval (one REFab, or one round of REFpb over all banks)",
    "nRREFD": "REFpb to ACT of another bank",
    "nPPD": "precharge to precharge",
    "nRCDRDMAC": "ACT16 to MAC16",
    "nRCDEWMUL": "activate to element-wise multiply (PIM)",
    "nRCDRDAF": "activate to activation-function read (PIM)",
    "nRCDRDCP": "activate to copy-read (PIM)",
    "nRCDWRCP": "activate to copy-write (PIM)",
    "nCLREG": "read latency of the MAC result registers",
    "nCWLREG": "write latency of the result registers",
    "nCLGB": "read latency of the global buffer",
    "nCWLGB": "write latency of the global buffer",
    "nWPRE": "write preamble",
    "nMODCH": "TMOD to any command",
}
#: Derived timing names, computed by the loader (never set directly).
DERIVED_TIMING = {"nMAC": "MAC16 to MAC16: one column through the PIM unit's lanes, in cycles"}

REFRESH_POLICIES = ("off", "ab", "pb")


# ----------------------------------------------------------------------------- spec types

class FrozenMap(Mapping):
    """An immutable, hashable mapping (specs are hashed to cache their compiled form)."""

    __slots__ = ("_d", "_h")

    def __init__(self, items: Mapping | Iterable = ()):
        self._d = dict(items)
        self._h = hash(tuple(sorted(self._d.items())))

    def __getitem__(self, key):
        return self._d[key]

    def __iter__(self):
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __hash__(self) -> int:
        return self._h

    def __eq__(self, other) -> bool:
        return isinstance(other, Mapping) and dict(self._d) == dict(other)

    def __repr__(self) -> str:
        return f"FrozenMap({self._d!r})"


@dataclass(frozen=True)
class DramSpec:
    """Everything the channel engine needs about one kind of channel, resolved to cycles."""

    name: str
    standard: str
    channels: int
    bankgroups: int
    banks_per_bankgroup: int
    rows: int
    columns: int
    column_bytes: int
    #: Global-buffer slots of ``column_bytes`` (range of WRGB's ``col``).
    gb_slots: int
    tCK_ps: int
    timing: Mapping[str, int]
    constraints: tuple[Constraint, ...]
    commands: tuple[str, ...]
    tmod_lookahead: bool
    refresh_policy: str
    #: Cycle (relative to the first command) at which the first refresh falls due is
    #: ``interval - refresh_phase_cycles``; the phase is the absolute cycle of the first command.
    refresh_phase_cycles: int = 0
    #: All-bank refreshes the controller may hold back while a kernel streams (issued
    #: before the channel's next kernel instead); 0 refreshes as soon as one falls due.
    refresh_postpone: int = 0
    #: All-bank refreshes that may be issued ahead of their due cycle, into a channel's idle
    #: time before its next kernel (with postponing).
    refresh_pull_in: int = 0
    read_latency: int = 0
    quirks: tuple[str, ...] = ()
    origin: str = ""

    @property
    def banks(self) -> int:
        return self.bankgroups * self.banks_per_bankgroup

    @property
    def row_bytes(self) -> int:
        return self.columns * self.column_bytes

    def with_refresh(self, policy: str, phase_cycles: int | None = None) -> "DramSpec":
        """A copy with another refresh policy (``off``, ``ab`` or ``pb``)."""
        if policy not in REFRESH_POLICIES:
            raise ConfigError(f"refresh policy must be one of {', '.join(REFRESH_POLICIES)}, got {policy!r}")
        if policy != "off":
            _check_refresh_timing(self.timing, policy, self.banks, self.origin or self.name)
        phase = self.refresh_phase_cycles if phase_cycles is None else phase_cycles
        ab = policy == "ab"
        return dataclasses.replace(self, refresh_policy=policy, refresh_phase_cycles=phase,
                                   refresh_postpone=self.refresh_postpone if ab else 0,
                                   refresh_pull_in=self.refresh_pull_in if ab else 0)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "origin"}
        d["timing"] = dict(sorted(self.timing.items()))
        d["constraints"] = [dataclasses.asdict(c) for c in self.constraints]
        d["commands"] = list(self.commands)
        d["quirks"] = list(self.quirks)
        return d

    @property
    def digest(self) -> str:
        return _digest(self.to_dict())


@dataclass(frozen=True)
class PimSpec:
    """The processing unit in every bank and the channel's global buffer."""

    mac_lanes: int
    global_buffer_bytes: int
    clock_MHz: float
    #: Accumulator registers per bank MAC unit; segments accumulate into their own register
    #: and read-outs are batched (docs/mapping.md, "Result registers").
    result_registers: int = 1
    #: A global-buffer load writes only the slots whose contents change within a kernel.
    gb_reuse: bool = False


@dataclass(frozen=True)
class ClockSpec:
    """Command clock and pins."""

    tCK_ps: int
    data_rate_Gbps: float
    pins_per_channel: int


@dataclass(frozen=True)
class LinkSpec:
    """The ASIC side of each channel's GDDR6 link (pins and rate are in ``clock``)."""

    latency_ps: int


@dataclass(frozen=True)
class SystemSpec:
    """A resolved preset: built only by :func:`load_preset`."""

    name: str
    description: str
    dram: DramSpec
    clock: ClockSpec
    pim: PimSpec | None
    asic: AsicSpec | None = None
    link: LinkSpec | None = None
    sources: Mapping[str, str] = field(default_factory=dict)
    origin: str = ""

    @property
    def link_latency_ps(self) -> int:
        return self.link.latency_ps if self.link is not None else 0

    @property
    def pin_bandwidth_Bps(self) -> float:
        """Bytes per second over one channel's data pins, one direction at a time."""
        return self.clock.data_rate_Gbps * 1e9 * self.clock.pins_per_channel / 8

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dram": self.dram.to_dict(),
            "clock": dataclasses.asdict(self.clock),
            "pim": dataclasses.asdict(self.pim) if self.pim else None,
            "asic": dataclasses.asdict(self.asic) if self.asic else None,
            "link": dataclasses.asdict(self.link) if self.link else None,
        }

    @property
    def digest(self) -> str:
        """SHA-256 of the resolved spec (sources and descriptions excluded)."""
        return _digest(self.to_dict())


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# ----------------------------------------------------------------------------- helpers

class _Ctx:
    """Where a value came from, for error messages."""

    def __init__(self, origin: str, overridden: Mapping[str, str]):
        self.origin = origin
        self.overridden = overridden

    def err(self, path: str, message: str) -> ConfigError:
        if path in self.overridden:
            return ConfigError(f"--set {path}={self.overridden[path]}: {message}")
        return ConfigError(f"{self.origin}: {path}: {message}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


#: the largest integer a preset may hold (cycles, counts, bytes, ps): every time and count
#: the simulator derives from them stays far inside 64-bit integers
INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class Param:
    """A preset key: type, unit, meaning (documented where declared)."""

    key: str
    kind: str  # "int", "number", "str", "choice", "bool"
    unit: str
    meaning: str
    minimum: float | None = 1
    choices: tuple[str, ...] = ()
    #: largest value (ints default to INT_MAX)
    maximum: float | None = None
    required: bool = True
    #: value of an optional key a preset leaves out (None: the key is simply absent)
    default: Any = None

    def check(self, value: Any, path: str, ctx: _Ctx) -> Any:
        unit = f" ({self.unit})" if self.unit else ""
        if self.kind == "int":
            if not _is_int(value):
                raise ctx.err(path, f"must be an integer{unit}, got {value!r}")
            if value > (self.maximum if self.maximum is not None else INT_MAX):
                raise ctx.err(path, f"must be at most {self.maximum or INT_MAX:,}{unit}, got {value!r}")
        elif self.kind == "number":
            if not _is_number(value):
                raise ctx.err(path, f"must be a number{unit}, got {value!r}")
        elif self.kind == "choice":
            if value is False and "off" in self.choices:
                value = "off"  # YAML 1.1 reads an unquoted off as false
            if value not in self.choices:
                raise ctx.err(path, f"must be one of {', '.join(self.choices)}, got {value!r}")
            return value
        elif self.kind == "str":
            if not isinstance(value, str):
                raise ctx.err(path, f"must be a string, got {value!r}")
            return value
        elif self.kind == "bool":
            if not isinstance(value, bool):
                raise ctx.err(path, f"must be true or false, got {value!r}")
            return value
        if self.minimum is not None and value < self.minimum:
            what = "positive" if self.minimum == 1 and self.kind == "int" else f">= {self.minimum}"
            if self.minimum == 0:
                what = "non-negative"
            raise ctx.err(path, f"must be {what}{unit}, got {value!r}")
        return value


PRESET_SECTIONS: dict[str, list[Param]] = {
    "organization": [
        Param("channels", "int", "", "independent channels (at most 1,024)", maximum=1024),
        Param("bankgroups", "int", "", "bank groups per channel"),
        Param("banks_per_bankgroup", "int", "", "banks per bank group"),
        Param("rows", "int", "", "rows per bank"),
        Param("columns", "int", "", "column slots per row"),
        Param("column_bytes", "int", "B", "bytes per column access"),
        Param("row_bytes", "int", "B", "bytes per row (must equal columns x column_bytes)"),
    ],
    "clock": [
        Param("tCK_ps", "int", "ps", "command-clock period"),
        Param("data_rate_Gbps", "number", "Gb/s per pin", "pin data rate", minimum=1e-9),
        Param("pins_per_channel", "int", "", "data pins (DQ) per channel"),
    ],
    "pim": [
        Param("mac_lanes", "int", "", "BF16 multipliers per bank MAC unit"),
        Param("global_buffer_bytes", "int", "B", "global buffer per channel"),
        Param("clock_MHz", "number", "MHz", "PIM unit clock", minimum=1),
        Param("result_registers", "int", "", "accumulator (result) registers per bank MAC unit; "
              "read-outs of up to this many segments share one pair of mode changes "
              "(default 1: one accumulator, read after every segment)",
              required=False, default=1),
        Param("gb_reuse", "bool", "", "a global-buffer load writes only the slots whose "
              "(input, input column) differ from what the buffer already holds from earlier "
              "loads of the same kernel (default false: every load writes all its slots)",
              required=False, default=False),
    ],
    "asic": [
        Param("clock_MHz", "number", "MHz", "ASIC clock", minimum=1),
        Param("lanes", "int", "", "FP32 adders, multipliers and special-function lanes (each)"),
        Param("add_latency", "int", "cycles", "FP32 adder latency (ASIC cycles, 1..1000)",
              maximum=1000),
        Param("mul_latency", "int", "cycles", "FP32 multiplier latency (ASIC cycles, 1..1000)",
              maximum=1000),
        Param("exp_degree", "int", "", "Taylor degree of exp (1..12)"),
        Param("recip_iterations", "int", "", "Newton-Raphson iterations of the reciprocal (0..64)",
              minimum=0, maximum=64),
        Param("rsqrt_iterations", "int", "", "Newton iterations of the inverse square root (0..64)",
              minimum=0, maximum=64),
        Param("sram_bytes", "int", "B", "on-chip SRAM buffers: must hold the FP32 values the "
                                         "ASIC keeps at once (checked before a run); sets "
                                         "their leakage energy"),
    ],
    "link": [
        Param("latency_ps", "int", "ps", "ASIC <-> PIM channel latency beyond the DRAM's own "
              "(controller, PHY, flight), each way", minimum=0),
    ],
    "refresh": [
        Param("policy", "choice", "", "refresh policy", choices=REFRESH_POLICIES),
        Param("phase_cycles", "int", "cycles", "absolute cycle of the first command (refresh phase)",
              minimum=0, required=False),
        Param("postpone", "int", "", "all-bank refreshes that may be postponed to the channel's "
              "next kernel boundary (0: refresh when due; applies to policy ab)", minimum=0, required=False),
        Param("pull_in", "int", "", "all-bank refreshes that may be issued ahead of their due cycle "
              "into a channel's idle time (needs postpone > 0)", minimum=0, required=False),
    ],
}
TOP_KEYS = {"preset", "description", "standard", "organization", "clock", "timing", "pim",
            "asic", "link", "refresh", "sources"}


def _check_refresh_timing(timing: Mapping[str, int], policy: str, banks: int, where: str) -> None:
    if "nREFI" not in timing or timing["nREFI"] <= 0:
        raise ConfigError(f"{where}: timing.nREFI: refresh policy {policy!r} needs a positive "
                          f"nREFI, got {timing.get('nREFI')!r}")
    need = "nRFCab" if policy == "ab" else "nRFCpb"
    if need not in timing:
        raise ConfigError(f"{where}: timing.{need}: refresh policy {policy!r} needs it")
    if policy == "ab":
        if timing.get("nRFCab", 0) >= timing["nREFI"]:
            raise ConfigError(f"{where}: timing.nRFCab: all-bank refresh ({timing.get('nRFCab')} cycles) "
                              f"must be shorter than nREFI ({timing['nREFI']})")
    elif policy == "pb":
        interval = timing["nREFI"] // banks
        if interval <= timing.get("nRFCpb", 0):
            raise ConfigError(f"{where}: timing.nRFCpb: per-bank refresh every nREFI/{banks} = "
                              f"{interval} cycles must exceed nRFCpb ({timing.get('nRFCpb')})")


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe loader, refusing a key given twice in one mapping (YAML would keep the
    last one silently)."""


def _no_duplicate_keys(loader, node, deep=False):
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            first = seen.setdefault(key, key_node.start_mark.line)
        except TypeError:   # an unhashable key: the base constructor reports it
            break
        if first != key_node.start_mark.line:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} given twice (first at line {first + 1})",
                key_node.start_mark)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicate_keys)

# Numbers as YAML 1.2 reads them: decimal integers, and decimals with an optional point and
# exponent (1e3 is a number); YAML 1.1's base-60 (1:30 = 90), octal, hex and 1_000 forms
# stay text, so they meet a type check instead of becoming another value.
_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _NUMBER_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?[0-9]+$"),
                              list("-+0123456789"))
_Loader.add_constructor("tag:yaml.org,2002:int",   # 010 is ten, not YAML 1.1's octal eight
                        lambda loader, node: int(loader.construct_scalar(node), 10))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+.0123456789"))


def load_yaml_text(text: str, label: str) -> Any:
    """YAML text read by the safe loader (duplicate keys refused); errors as one-line
    :class:`ConfigError` naming ``label`` and the line."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{label}: malformed YAML{loc}: {problem}") from None


def read_text(path: Path, label: str, error=None) -> str:
    """A file's UTF-8 text; unreadable or not UTF-8 is a one-line ``error`` (default
    :class:`ConfigError`) naming ``label``."""
    error = error or ConfigError
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{label}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{label}: {not_utf8(exc)}") from None


def _read_yaml(path: Path, label: str) -> Any:
    return load_yaml_text(read_text(path, label), label)


# ----------------------------------------------------------------------------- overrides

def parse_override(text: str) -> tuple[str, Any]:
    """``section.key=value`` into (path, value); the value is read as a YAML scalar."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected KEY=VALUE, e.g. timing.nRP=30")
    path, raw = text.split("=", 1)
    path = path.strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", path):
        raise ConfigError(f"--set {text}: malformed key {path!r}")
    try:
        value = yaml.load(raw, Loader=_Loader) if raw.strip() else None  # noqa: S506 - safe
    except yaml.YAMLError:
        raise ConfigError(f"--set {text}: malformed value {raw!r}") from None
    if isinstance(value, (dict, list)):
        raise ConfigError(f"--set {text}: value must be a scalar, got {raw!r}")
    return path, value


def override_texts(overrides) -> list[str]:
    """Overrides as ``KEY=VALUE`` texts: from an iterable of such texts, or from a mapping
    ``{key: value}`` (values written as YAML scalars, so they read back as given; numpy
    scalars count as their Python values). None means no overrides."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        out = []
        for key, value in overrides.items():
            if hasattr(value, "item") and not isinstance(value, (str, bytes)):
                value = value.item()   # a numpy scalar
            if value is not None and not isinstance(value, (str, int, float, bool)):
                raise ConfigError(f"overrides: {key}: value must be a scalar, got {value!r}")
            text = value if isinstance(value, str) else yaml.safe_dump(value).splitlines()[0]
            out.append(f"{key}={text}")
        return out
    if isinstance(overrides, (str, bytes)):
        raise ConfigError(f"overrides: expected a list of KEY=VALUE texts or a mapping, "
                          f"got the single text {overrides!r}")
    if not isinstance(overrides, Iterable):
        raise ConfigError(f"overrides: expected a list of KEY=VALUE texts or a mapping, "
                          f"got {overrides!r}")
    out = list(overrides)
    for text in out:
        if not isinstance(text, str):
            raise ConfigError(f"overrides: expected KEY=VALUE texts, got {text!r}")
    return out


def _apply_overrides(doc: dict, overrides: Iterable[str]) -> dict[str, str]:
    applied: dict[str, str] = {}
    for text in overrides:
        path, value = parse_override(text)
        parts = path.split(".")
        if parts[0] in ("sources", "preset", "description"):
            raise ConfigError(f"--set {text}: {parts[0]} describes a preset file and cannot "
                              f"be set")
        node = doc
        for i, part in enumerate(parts[:-1]):
            sub = node.get(part)
            if sub is None:
                sub = node[part] = {}
            if not isinstance(sub, dict):
                raise ConfigError(f"--set {text}: {'.'.join(parts[:i + 1])} is not a section")
            node = sub
        node[parts[-1]] = value
        applied[path] = text.split("=", 1)[1]
    return applied


# ----------------------------------------------------------------------------- presets

def preset_names() -> list[str]:
    files = importlib.resources.files("pimsim.presets")
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))


def preset_path(name_or_path: str | Path) -> tuple[Path, str]:
    """Resolve a bundled preset name or a file path into (path, label for messages)."""
    text = str(name_or_path)
    if text in preset_names():
        res = importlib.resources.files("pimsim.presets") / f"{text}.yaml"
        return Path(str(res)), f"preset {text}"
    p = Path(text)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise ConfigError(f"{text}: no such preset file")
        return p, str(p)
    raise ConfigError(f"unknown preset {text!r} (bundled: {', '.join(preset_names())}; or give a YAML file)")


def load_preset(name_or_path: str | Path = "pim-gpt",
                overrides: Iterable[str] | Mapping[str, Any] = ()) -> SystemSpec:
    """Load a preset by bundled name or path, apply ``--set`` overrides (``KEY=VALUE``
    texts, or a mapping ``{key: value}``), validate, freeze."""
    texts = override_texts(overrides)
    path, label = preset_path(name_or_path)
    doc = _read_yaml(path, label)
    if not isinstance(doc, dict):
        raise ConfigError(f"{label}: a preset must be a YAML mapping")
    applied = _apply_overrides(doc, texts)
    ctx = _Ctx(label, applied)
    return _build_preset(doc, ctx)


def _section(doc: dict, name: str, ctx: _Ctx, required: bool = True) -> dict | None:
    if name not in doc or doc[name] is None:
        if required:
            raise ctx.err(name, "missing section")
        return None
    sec = doc[name]
    if not isinstance(sec, dict):
        raise ctx.err(name, f"must be a mapping, got {sec!r}")
    return sec


def _check_section(sec: dict, name: str, ctx: _Ctx) -> dict[str, Any]:
    params = {p.key: p for p in PRESET_SECTIONS[name]}
    for key in sec:
        if key not in params:
            raise ctx.err(f"{name}.{key}", f"unknown key (known: {', '.join(params)})")
    out = {}
    for key, p in params.items():
        if key not in sec:
            if p.required:
                raise ctx.err(f"{name}.{key}", f"missing key ({p.meaning})")
            if p.default is not None:
                out[key] = p.default
            continue
        out[key] = p.check(sec[key], f"{name}.{key}", ctx)
    return out


def _build_preset(doc: dict, ctx: _Ctx) -> SystemSpec:
    for key in doc:
        if key not in TOP_KEYS:
            raise ctx.err(str(key), f"unknown key (known: {', '.join(sorted(TOP_KEYS))})")
    for key in ("preset", "standard"):
        if key not in doc:
            raise ctx.err(key, "missing key")
        if not isinstance(doc[key], str):
            raise ctx.err(key, f"must be a string, got {doc[key]!r}")
    try:
        standard = load_standard(doc["standard"])
    except ConfigError as exc:
        raise ctx.err("standard", str(exc)) from None

    org = _check_section(_section(doc, "organization", ctx), "organization", ctx)
    clk = _check_section(_section(doc, "clock", ctx), "clock", ctx)
    ref = _check_section(_section(doc, "refresh", ctx), "refresh", ctx)
    pim_sec = _section(doc, "pim", ctx, required=False)
    has_pim_cmds = any(c in standard.commands for c in ("ACT16", "MAC16", "WRGB", "RDMAC16"))
    if has_pim_cmds and pim_sec is None:
        raise ctx.err("pim", f"missing section (standard {standard.name} has PIM commands)")
    pim = _check_section(pim_sec, "pim", ctx) if pim_sec is not None else None
    link_sec = _section(doc, "link", ctx, required=False)
    link = _check_section(link_sec, "link", ctx) if link_sec is not None else None
    asic_sec = _section(doc, "asic", ctx, required=False)
    asic = _check_section(asic_sec, "asic", ctx) if asic_sec is not None else None
    if asic is not None and not 1 <= asic["exp_degree"] <= 12:
        raise ctx.err("asic.exp_degree", f"must be in 1..12, got {asic['exp_degree']!r}")

    if org["row_bytes"] != org["columns"] * org["column_bytes"]:
        raise ctx.err("organization.row_bytes", f"{org['row_bytes']} is not columns x column_bytes = "
                      f"{org['columns']} x {org['column_bytes']} = {org['columns'] * org['column_bytes']}")

    timing_sec = _section(doc, "timing", ctx)
    timing: dict[str, int] = {}
    for key, value in timing_sec.items():
        if key in DERIVED_TIMING:
            raise ctx.err(f"timing.{key}", "is derived by pimsim and cannot be set")
        if key not in TIMING_PARAMETERS:
            raise ctx.err(f"timing.{key}", f"unknown timing parameter (known: {', '.join(TIMING_PARAMETERS)})")
        if not _is_int(value) or value < 0:
            raise ctx.err(f"timing.{key}", f"must be a non-negative integer (cycles), got {value!r}")
        if value > INT_MAX:
            raise ctx.err(f"timing.{key}", f"must be at most {INT_MAX:,} (cycles), got {value!r}")
        timing[key] = value

    gb_slots = org["columns"]
    if pim is not None:
        elems = org["column_bytes"] // 2  # BF16 values per column
        if org["column_bytes"] % 2 or elems % pim["mac_lanes"]:
            raise ctx.err("pim.mac_lanes", f"{pim['mac_lanes']} lanes do not divide the "
                          f"{elems} BF16 values of a {org['column_bytes']} B column")
        if pim["global_buffer_bytes"] % org["column_bytes"]:
            raise ctx.err("pim.global_buffer_bytes", f"{pim['global_buffer_bytes']} is not a "
                          f"multiple of column_bytes ({org['column_bytes']})")
        gb_slots = pim["global_buffer_bytes"] // org["column_bytes"]
        if gb_slots > org["columns"]:
            raise ctx.err("pim.global_buffer_bytes", f"{pim['global_buffer_bytes']} B is more than "
                          f"one row ({org['columns'] * org['column_bytes']} B): MAC16 at column c "
                          f"reads slot c, so slots past the row's {org['columns']} columns could "
                          f"never be used")
        pim_cycles = elems // pim["mac_lanes"]
        # one column through the lanes, in command-clock cycles (exact, rounded up)
        ratio = Fraction(pim_cycles) * Fraction(10**6) / (Fraction(pim["clock_MHz"]) * Fraction(clk["tCK_ps"]))
        timing["nMAC"] = max(1, math.ceil(ratio))

    needed = standard.parameters()
    missing = sorted(needed - set(timing))
    if missing:
        raise ctx.err(f"timing.{missing[0]}", f"missing (standard {standard.name} uses "
                      f"{', '.join(missing)})")
    if ref["policy"] != "off":
        try:
            _check_refresh_timing(timing, ref["policy"], org["bankgroups"] * org["banks_per_bankgroup"],
                                  ctx.origin)
        except ConfigError as exc:
            raise ctx.err("refresh.policy", str(exc)) from None

    if ref.get("pull_in", 0) and not ref.get("postpone", 0):
        raise ctx.err("refresh.pull_in", f"pulling refreshes in needs refresh.postpone > 0 "
                      f"(they are issued where postponed ones are); got pull_in={ref['pull_in']!r} "
                      f"with postpone={ref.get('postpone', 0)!r}")

    constraints = standard.resolve(timing, where=f"{ctx.origin}: ")
    _check_constraint_support(constraints, ctx.origin)

    sources = doc.get("sources") or {}
    if not isinstance(sources, dict):
        raise ctx.err("sources", "must be a mapping of key -> source")
    for key, text in sources.items():
        sec, _, name = str(key).partition(".")
        known = (name in TIMING_PARAMETERS if sec == "timing" else
                 any(p.key == name for p in PRESET_SECTIONS.get(sec, ())) if name else
                 sec in TOP_KEYS - {"sources"})
        if not known:
            raise ctx.err(f"sources.{key}", "names no preset key")
        if not isinstance(text, str) or not text.strip():
            raise ctx.err(f"sources.{key}", f"must be a text naming the source, got {text!r}")
    dram = DramSpec(
        name=doc["preset"], standard=standard.name, channels=org["channels"],
        bankgroups=org["bankgroups"], banks_per_bankgroup=org["banks_per_bankgroup"],
        rows=org["rows"], columns=org["columns"], column_bytes=org["column_bytes"],
        gb_slots=gb_slots, tCK_ps=clk["tCK_ps"], timing=FrozenMap(sorted(timing.items())),
        constraints=constraints, commands=standard.commands,
        tmod_lookahead=standard.tmod_lookahead, refresh_policy=ref["policy"],
        refresh_phase_cycles=ref.get("phase_cycles", 0),
        refresh_postpone=ref.get("postpone", 0) if ref["policy"] == "ab" else 0,
        refresh_pull_in=ref.get("pull_in", 0) if ref["policy"] == "ab" else 0,
        read_latency=timing.get("nCL", 0) + timing.get("nBL", 0), origin=ctx.origin,
    )
    return SystemSpec(
        name=doc["preset"], description=str(doc.get("description", "")), dram=dram,
        clock=ClockSpec(**clk),
        pim=PimSpec(**pim) if pim is not None else None,
        asic=AsicSpec(**asic) if asic is not None else None,
        link=LinkSpec(**link) if link is not None else None,
        sources=FrozenMap({str(k): str(v) for k, v in sources.items()}), origin=ctx.origin,
    )


def preset_leaf_keys(name_or_path: str | Path) -> list[str]:
    """Dotted keys of every value a preset file sets (for the sources check)."""
    path, label = preset_path(name_or_path)
    doc = _read_yaml(path, label)
    keys = []
    for sec, body in doc.items():
        if isinstance(body, dict) and sec != "sources":
            keys += [f"{sec}.{k}" for k in body]
        elif sec not in ("preset", "description", "sources"):
            keys.append(sec)
    return keys


def _check_constraint_support(constraints: Iterable[Constraint], where: str) -> None:
    for c in constraints:
        if c.window and c.scope != "channel":
            raise ConfigError(f"{where}: constraint {c.describe()}: windows are supported "
                              f"only at channel scope")


# ----------------------------------------------------------------------------- timing files

TIMING_FILE_KEYS = {"preset", "organization", "tCK_ps", "timing", "read_latency",
                    "rdmac_latency", "constraints", "quirks"}
TIMING_FILE_ORG = {"channels_in_files", "bankgroups", "banks_per_bankgroup", "rows",
                   "columns", "bytes_per_column"}
CONSTRAINT_KEYS = {"from", "to", "scope", "cycles", "formula", "window"}

#: Quirks (plain-language notes of a timing file) that change behaviour, recognised by
#: phrase. Each maps to a function of the loader's state; unrecognised quirks are kept as notes.
_QUIRKS: list[tuple[str, str]] = [
    (r"TMOD itself issues only at a cycle where the command it precedes would already be allowed",
     "tmod_lookahead"),
    (r"No four-activate window is enforced", "no_faw"),
    (r"No refresh is issued at all", "refresh_off"),
    (r"Refresh is all-bank: a REFab is requested at absolute cycles nREFI", "refresh_ab"),
    (r"At most one command per cycle", "one_per_cycle"),
]


def recognised_quirks(quirks: Iterable[str]) -> set[str]:
    found = set()
    for text in quirks:
        for pattern, effect in _QUIRKS:
            if re.search(pattern, text):
                found.add(effect)
    return found


def load_timing_file(path: str | Path) -> DramSpec:
    """Load a reference ``*.timing.yaml`` (its constraint table taken as it is)."""
    p = Path(path)
    label = str(p)
    if not p.is_file():
        raise ConfigError(f"{label}: no such timing file")
    doc = _read_yaml(p, label)
    if not isinstance(doc, dict):
        raise ConfigError(f"{label}: a timing file must be a YAML mapping")
    ctx = _Ctx(label, {})
    for key in doc:
        if key not in TIMING_FILE_KEYS:
            raise ctx.err(str(key), f"unknown key (known: {', '.join(sorted(TIMING_FILE_KEYS))})")
    for key in ("preset", "organization", "tCK_ps", "timing", "constraints"):
        if key not in doc:
            raise ctx.err(key, "missing key")
    org = doc["organization"]
    if not isinstance(org, dict):
        raise ctx.err("organization", "must be a mapping")
    for key in org:
        if key not in TIMING_FILE_ORG:
            raise ctx.err(f"organization.{key}", f"unknown key (known: {', '.join(sorted(TIMING_FILE_ORG))})")
    for key in TIMING_FILE_ORG:
        if key not in org:
            raise ctx.err(f"organization.{key}", "missing key")
        if not _is_int(org[key]) or org[key] <= 0:
            raise ctx.err(f"organization.{key}", f"must be a positive integer, got {org[key]!r}")
    if org["channels_in_files"] != 1:
        raise ctx.err("organization.channels_in_files", f"must be 1, got {org['channels_in_files']!r}")
    tck = doc["tCK_ps"]
    if not _is_int(tck) or tck <= 0:
        raise ctx.err("tCK_ps", f"must be a positive integer (ps), got {tck!r}")
    timing_doc = doc["timing"]
    if not isinstance(timing_doc, dict):
        raise ctx.err("timing", "must be a mapping")
    timing: dict[str, int] = {}
    for key, value in timing_doc.items():
        if key not in TIMING_PARAMETERS:
            raise ctx.err(f"timing.{key}", "unknown timing parameter")
        if not _is_int(value) or value < 0:
            raise ctx.err(f"timing.{key}", f"must be a non-negative integer (cycles), got {value!r}")
        if value > INT_MAX:
            raise ctx.err(f"timing.{key}", f"must be at most {INT_MAX:,} (cycles), got {value!r}")
        timing[key] = value
    for key in ("read_latency", "rdmac_latency"):
        if key in doc and (not _is_int(doc[key]) or doc[key] < 0):
            raise ctx.err(key, f"must be a non-negative integer (cycles), got {doc[key]!r}")

    if not isinstance(doc["constraints"], list):
        raise ctx.err("constraints", "must be a list")
    constraints = []
    used: set[str] = set()
    for i, entry in enumerate(doc["constraints"]):
        where = f"constraints[{i}]"
        constraints.append(_timing_file_constraint(entry, where, timing, ctx))
        used.update(constraints[-1].from_, constraints[-1].to)
    quirks = doc.get("quirks") or []
    if not isinstance(quirks, list) or not all(isinstance(q, str) for q in quirks):
        raise ctx.err("quirks", "must be a list of strings")
    effects = recognised_quirks(quirks)
    if "no_faw" in effects and any(c.window and "ACT" in c.from_ for c in constraints):
        raise ctx.err("quirks", "says no four-activate window is enforced, but the constraints "
                      "hold a windowed ACT rule")
    _check_constraint_support(constraints, label)
    commands = tuple(c for c in COMMANDS if c in used)
    return DramSpec(
        name=str(doc["preset"]), standard=f"timing-file:{doc['preset']}", channels=1,
        bankgroups=org["bankgroups"], banks_per_bankgroup=org["banks_per_bankgroup"],
        rows=org["rows"], columns=org["columns"], column_bytes=org["bytes_per_column"],
        gb_slots=org["columns"], tCK_ps=tck, timing=FrozenMap(sorted(timing.items())),
        constraints=tuple(constraints), commands=commands,
        tmod_lookahead="tmod_lookahead" in effects, refresh_policy="off",
        read_latency=int(doc.get("read_latency", timing.get("nCL", 0) + timing.get("nBL", 0))),
        quirks=tuple(quirks), origin=label,
    )


def _timing_file_constraint(entry: Any, where: str, timing: Mapping[str, int], ctx: _Ctx) -> Constraint:
    if not isinstance(entry, dict):
        raise ctx.err(where, f"must be a mapping, got {entry!r}")
    for key in entry:
        if key not in CONSTRAINT_KEYS:
            raise ctx.err(f"{where}.{key}", f"unknown key (known: {', '.join(sorted(CONSTRAINT_KEYS))})")
    for key in ("from", "to", "scope", "cycles"):
        if key not in entry:
            raise ctx.err(f"{where}.{key}", "missing key")
    for key in ("from", "to"):
        cmds = entry[key]
        if not isinstance(cmds, list) or not cmds:
            raise ctx.err(f"{where}.{key}", f"must be a non-empty list of commands, got {cmds!r}")
        for c in cmds:
            if c not in CMD_ID:
                raise ctx.err(f"{where}.{key}", f"unknown command {c!r}")
    if entry["scope"] not in SCOPE_ID:
        raise ctx.err(f"{where}.scope", f"must be one of {', '.join(SCOPES)}, got {entry['scope']!r}")
    cycles = entry["cycles"]
    if not _is_int(cycles) or cycles < 0:
        raise ctx.err(f"{where}.cycles", f"must be a non-negative integer, got {cycles!r}")
    window = entry.get("window", 0)
    if not _is_int(window) or window < 0:
        raise ctx.err(f"{where}.window", f"must be a positive integer, got {window!r}")
    formula = str(entry.get("formula", ""))
    expr = re.sub(r"\s+\(.*\)\s*$", "", formula)  # drop a trailing "(note)"
    if expr:
        try:
            value = evaluate(expr, timing)
        except ConfigError as exc:
            raise ctx.err(f"{where}.formula", f"{formula!r} cannot be evaluated against the "
                          f"file's timing: {exc}") from None
        if max(0, value) != cycles:
            raise ctx.err(f"{where}.cycles", f"{cycles} disagrees with its formula {formula!r} = {value}")
    return Constraint(tuple(entry["from"]), tuple(entry["to"]), entry["scope"], cycles, formula, window)


__all__ = [
    "DramSpec", "SystemSpec", "PimSpec", "ClockSpec", "Param", "PRESET_SECTIONS",
    "TIMING_PARAMETERS", "DERIVED_TIMING", "REFRESH_POLICIES", "load_preset", "load_timing_file",
    "parse_override", "preset_names", "recognised_quirks", "BANK_ADDRESSED",
]
