"""Mappers: placing a model in PIM banks and generating decode-step programs.

>>> import workloads, mappings
>>> from pimsim.config import load_preset
>>> m = mappings.map(workloads.load_bundled("gpt2-small"), load_preset("pim-gpt"))
>>> prog = m.program(kv_len=128)          # one decode step (a DAG; prog.graph: networkx)
>>> prog.row_hit_rate() > 0.95
True

See docs/mapping.md for the layouts and their reasons.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from mappings.placement import CapacityError, MappingError, Placement, model_context, place
from mappings.program import AccessKernel, AsicOp, MacKernel, Program, Transfer
from mappings.strategies import STRATEGIES, Geometry, Strategy
from pimsim.errors import count_arg
from workloads.schema import Trace


def _got(value) -> str:
    return f"the string {value!r:.60}" if isinstance(value, str) else f"{value!r:.60}"


def _check_trace(trace) -> None:
    if not isinstance(trace, Trace):
        raise MappingError(f"trace: expected a workloads.Trace (workloads.load_bundled(name) "
                           f"or workloads.load_trace(path)), got {_got(trace)}")


def _check_spec(spec) -> None:
    from pimsim.config import SystemSpec

    if not isinstance(spec, SystemSpec):
        raise MappingError(f"spec: expected a pimsim.config.SystemSpec (pimsim.config."
                           f"load_preset(name)), got {_got(spec)}")


def strategy_class(strategy) -> type[Strategy]:
    """The :class:`Strategy` class named ``strategy`` (a :class:`MappingError` when unknown)."""
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise MappingError(f"unknown mapping strategy {strategy!r:.60} (known: "
                           f"{', '.join(STRATEGIES)})")
    return STRATEGIES[strategy]


def geometry(spec) -> Geometry:
    """The mapper's view of a :class:`pimsim.config.SystemSpec`."""
    _check_spec(spec)
    d = spec.dram
    if spec.pim is None:
        raise MappingError(f"preset {spec.name} has no PIM units (no 'pim' section)")
    values = d.column_bytes // 2
    if values % spec.pim.mac_lanes:
        raise MappingError(f"preset {spec.name}: {values} BF16 values per column is not a "
                           f"multiple of mac_lanes {spec.pim.mac_lanes}")
    return Geometry(channels=d.channels, banks=d.banks, banks_per_bankgroup=d.banks_per_bankgroup,
                    rows=d.rows, columns=d.columns, column_bytes=d.column_bytes,
                    values_per_column=values, gb_slots=d.gb_slots,
                    result_registers=spec.pim.result_registers, gb_reuse=spec.pim.gb_reuse)


@dataclass(eq=False)
class Mapping:
    """A model placed on a system by one strategy."""

    trace: object
    spec: object
    strategy: Strategy
    placement: Placement
    #: what the program builder keeps between steps (``mappings.program._Builder``): the
    #: items that do not depend on the step (weight kernels, parameter reads) and each op's
    #: nodes and edges, the K/V write tables and attention passes per part shape, the
    #: structures of recent steps. Shared by every program built from this mapping;
    #: nothing writes to the items
    items: dict = field(default_factory=dict, repr=False)

    def program(self, kv_len: int, token: int = 0) -> Program:
        """The decode step that runs with ``kv_len`` K/V positions after its append
        (the step generating token number ``kv_len``); ``token`` is the input token id."""
        from mappings.program import _Builder

        kv_len = count_arg(kv_len, f"{self.trace.model}: kv_len", "a positive integer", 1,
                           MappingError)
        token = count_arg(token, f"{self.trace.model}: token",
                          "a token id (a non-negative integer)", 0, MappingError)
        vocab = self._vocabulary
        if vocab is not None and token >= vocab:
            raise MappingError(f"{self.trace.model}: token must be a token id in 0 .. "
                               f"{vocab - 1} (the token embedding's rows), got {token}")
        if kv_len > self.placement.max_context:
            raise MappingError(f"{self.trace.model}: kv_len {kv_len} exceeds the KV reserve of "
                               f"{self.placement.max_context} positions (max_context)")
        return _Builder(self, kv_len, token).build()

    @functools.cached_property
    def _vocabulary(self) -> int | None:
        """Rows of the token embedding the decode step looks its token up in, or None."""
        for op in self.trace.decode.ops:
            if op.op == "embedding" and op["role"] == "token":
                return op["rows"]
        return None

    def prefill(self, prompt: int) -> list[Program]:
        """Prefill as a sequence of decode steps (positions 1 .. prompt), for now."""
        prompt = count_arg(prompt, f"{self.trace.model}: prompt",
                           "a non-negative number of tokens", 0, MappingError)
        return [self.program(n) for n in range(1, prompt + 1)]


def map(trace, spec, strategy: str = "pim-gpt", *, max_context: int | None = None) -> Mapping:  # noqa: A001
    """Place ``trace``'s model on ``spec`` with the named strategy (capacity checked first).

    ``max_context``: KV positions reserved per layer (default: the model's maximum context;
    a sliding window caps it)."""
    _check_trace(trace)
    s = strategy_class(strategy)()
    g = geometry(spec)
    return Mapping(trace, spec, s, place(trace, g, s, max_context, preset=spec.name))


__all__ = ["AccessKernel", "AsicOp", "CapacityError", "Geometry", "MacKernel", "Mapping",
           "MappingError", "Placement", "Program", "STRATEGIES", "Strategy", "Transfer",
           "geometry", "map", "model_context", "strategy_class"]
