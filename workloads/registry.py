"""The model registry: small JSON files in ``workloads/models/``, one per model.

Each file holds ``name``, ``family``, ``paper_model`` (one of PIM-GPT's 8 models),
``source`` (where every number comes from), ``notes`` and ``config`` (a plain transformers
config.json). Bundled traces of every registry model live in ``workloads/traces/`` under
the same name. Only the standard library is needed here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pimsim.errors import PimsimError
from pimsim.io import not_utf8

MODELS_DIR = Path(__file__).parent / "models"
TRACES_DIR = Path(__file__).parent / "traces"

_FIELDS = {"name": str, "family": str, "paper_model": bool, "source": str, "notes": str,
           "config": dict}


class RegistryError(PimsimError):
    """A registry file is malformed, or a model name is unknown."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    paper_model: bool
    source: str
    notes: str
    config: Mapping[str, Any]
    path: Path

    @property
    def trace_path(self) -> Path:
        return TRACES_DIR / f"{self.name}.json"


def _load_entry(path: Path) -> ModelEntry:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RegistryError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise RegistryError(f"{path}: {not_utf8(exc)}") from None
    except json.JSONDecodeError as exc:
        raise RegistryError(f"{path}: line {exc.lineno}: not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise RegistryError(f"{path}: expected a JSON object")
    for key in data:
        if key not in _FIELDS:
            raise RegistryError(f"{path}: {key}: unknown field")
    for key, typ in _FIELDS.items():
        if key not in data:
            raise RegistryError(f"{path}: {key}: missing field")
        if not isinstance(data[key], typ) or (typ is str and not data[key]):
            raise RegistryError(f"{path}: {key}: expected {typ.__name__}, got {data[key]!r:.60}")
    if data["name"] != path.stem:
        raise RegistryError(f"{path}: name: {data['name']!r} differs from the file name")
    if not isinstance(data["config"].get("model_type"), str):
        raise RegistryError(f"{path}: config.model_type: missing field")
    return ModelEntry(path=path, **data)


def _size_key(entry: ModelEntry) -> int:
    c = entry.config
    width = c.get("n_embd") or c.get("hidden_size") or 0
    depth = c.get("n_layer") or c.get("num_hidden_layers") or 0
    return width * depth if isinstance(width, int) and isinstance(depth, int) else 0


def list_models() -> list[ModelEntry]:
    """All registry models: the paper's models first, by family and size, then the rest."""
    entries = [_load_entry(p) for p in sorted(MODELS_DIR.glob("*.json"))]
    return sorted(entries, key=lambda e: (not e.paper_model, e.family, _size_key(e), e.name))


def model_names() -> list[str]:
    return [e.name for e in list_models()]


def get_model(name: str) -> ModelEntry:
    """The registry entry of model ``name`` (a :class:`RegistryError` when there is none)."""
    if not isinstance(name, str):
        raise RegistryError(f"model name: expected a string (a registry model: "
                            f"{', '.join(model_names())}), got {name!r:.60}")
    path = MODELS_DIR / f"{name}.json"
    if not name or "/" in name or "\\" in name or not path.is_file():
        raise RegistryError(f"model {name!r}: not in the registry (known: "
                            f"{', '.join(model_names())})")
    return _load_entry(path)


def bundled_trace_path(name: str) -> Path:
    """Path of the bundled trace of registry model ``name``."""
    entry = get_model(name)
    if not entry.trace_path.is_file():
        raise RegistryError(f"model {name!r}: no bundled trace at {entry.trace_path} "
                            f"(regenerate with: python -m workloads.generate)")
    return entry.trace_path
