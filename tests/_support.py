"""Paths the tests share (a plain module: conftest files are not importable by name when
several test folders have one)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def refdata_dir() -> Path:
    """The shared reference traces: $PIMSIM_REFDATA, else ../shared/refdata beside the repo."""
    env = os.environ.get("PIMSIM_REFDATA")
    return Path(env) if env else ROOT.parent / "shared" / "refdata"
