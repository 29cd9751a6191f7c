"""Energy constants as data: nominal values with a low-high range and a source each.

The table lives in ``pimsim/data/energy.yaml``. Every constant carries ``nominal``,
``low`` and ``high`` (``low <= nominal <= high``), a unit, one line of meaning and its
source (a citation with the arithmetic, or the word "assumed"). Results that depend on
these constants are reported as nominal with the low-high range.
"""

from __future__ import annotations

import functools
import importlib.resources
from dataclasses import dataclass

import yaml

from pimsim.errors import ConfigError

UNITS = {"pJ", "nJ", "mW", "pJ/bit", "pJ/B", "fraction"}
KEYS = {"id", "nominal", "low", "high", "unit", "what", "source"}


@dataclass(frozen=True)
class EnergyConstant:
    name: str
    id: str
    nominal: float
    low: float
    high: float
    unit: str
    what: str
    source: str

    def value(self, corner: str = "nominal") -> float:
        if corner not in ("nominal", "low", "high"):
            raise ConfigError(f"energy corner must be nominal, low or high, got {corner!r}")
        return getattr(self, corner)


@functools.lru_cache(maxsize=None)
def energy_table() -> dict[str, EnergyConstant]:
    """The bundled energy constants by name, validated."""
    path = importlib.resources.files("pimsim.data") / "energy.yaml"
    where = "pimsim/data/energy.yaml"
    doc = yaml.safe_load(path.read_text())
    out = {}
    for name, entry in doc["constants"].items():
        if set(entry) != KEYS:
            raise ConfigError(f"{where}: constants.{name}: keys must be {sorted(KEYS)}, got {sorted(entry)}")
        for key in ("nominal", "low", "high"):
            v = entry[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ConfigError(f"{where}: constants.{name}.{key}: must be a non-negative number, got {v!r}")
        if not entry["low"] <= entry["nominal"] <= entry["high"]:
            raise ConfigError(f"{where}: constants.{name}: need low <= nominal <= high, got "
                              f"{entry['low']} / {entry['nominal']} / {entry['high']}")
        if entry["unit"] not in UNITS:
            raise ConfigError(f"{where}: constants.{name}.unit: unknown unit {entry['unit']!r}")
        if not str(entry["source"]).strip():
            raise ConfigError(f"{where}: constants.{name}.source: missing")
        out[name] = EnergyConstant(name=name, **{k: entry[k] for k in KEYS})
    return out
