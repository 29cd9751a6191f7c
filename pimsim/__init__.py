"""pimsim: a cycle-accurate simulator and co-design environment for PIM-GPT.

The package is layered (see docs/architecture.md):

* :mod:`pimsim.config` loads YAML presets into frozen, validated specs;
* :mod:`pimsim.standard` holds DRAM/PIM standards (commands and timing constraints) as data;
* :mod:`pimsim.engine` issues command streams cycle-accurately (numba kernels and
  pure-Python twins) and checks command logs against the timing rules;
* :mod:`pimsim.cli` is the command line (``pimsim``).

Importing :mod:`pimsim` is cheap: numba, matplotlib and the model tooling load lazily.
"""

from pimsim.errors import PimsimError

__version__ = "0.1.0"

__all__ = ["PimsimError", "__version__", "simulate", "sweep"]


def __getattr__(name: str):
    # pimsim.simulate wires workloads -> mappings -> the simulator; import it on first use
    if name == "simulate":
        from pimsim.api import simulate

        return simulate
    if name == "sweep":
        # a callable module: pimsim.sweep(...) runs a sweep; pimsim.sweep.plan,
        # .pareto_front and .load are its helpers
        import importlib

        return importlib.import_module("pimsim.sweep")
    raise AttributeError(f"module 'pimsim' has no attribute {name!r}")
