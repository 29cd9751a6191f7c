#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh machine, then runs it.
# Usage: bash scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
# torch first and pinned: an unpinned torch requirement would pull a multi-GB CUDA build.
"$PY" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
"$PY" -m pip install --quiet --disable-pip-version-check -e '.[test,models,rtl]'
# Icarus Verilog, and g++/make/perl for Verilator builds (apt when missing; otherwise it
# prints what to install and exits non-zero)
bash scripts/install-hdl-tools.sh

"$PY" -m pytest "$@"
