"""Shared fixtures: where the reference traces are, and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def refdata_dir() -> Path:
    """The shared reference traces: $PIMSIM_REFDATA, else ../shared/refdata beside the repo."""
    env = os.environ.get("PIMSIM_REFDATA")
    return Path(env) if env else ROOT.parent / "shared" / "refdata"


@pytest.fixture(scope="session")
def refdata() -> Path:
    path = refdata_dir()
    assert path.is_dir(), f"reference traces not found at {path} (set PIMSIM_REFDATA)"
    return path
