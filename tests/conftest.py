"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from _support import refdata_dir


@pytest.fixture(scope="session")
def refdata() -> Path:
    path = refdata_dir()
    assert path.is_dir(), f"reference traces not found at {path} (set PIMSIM_REFDATA)"
    return path
