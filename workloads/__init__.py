"""Workload traces recorded from real autoregressive models.

Loading and summarising traces needs only the standard library; tracing a model
(:func:`trace_config`, ``python -m workloads.generate``, ``pimsim trace``) needs the
``models`` extra (torch and transformers, imported lazily). See docs/traces.md.
"""

from workloads.registry import (ModelEntry, RegistryError, bundled_trace_path, get_model,
                                list_models, model_names)
from workloads.schema import (CTX, OP_FIELDS, SCHEMA_VERSION, Op, Phase, Trace, TraceError,
                              load_trace, trace_from_dict, write_trace)
from workloads.summary import summarize


def load_bundled(name: str) -> Trace:
    """The validated bundled trace of registry model ``name``."""
    return load_trace(bundled_trace_path(name))


def trace_config(*args, **kwargs) -> dict:
    """Trace a model from a plain transformers config (needs torch); see workloads.tracer."""
    from workloads.tracer import trace_config as _trace_config

    return _trace_config(*args, **kwargs)


__all__ = [
    "CTX", "OP_FIELDS", "SCHEMA_VERSION", "ModelEntry", "Op", "Phase", "RegistryError", "Trace",
    "TraceError", "bundled_trace_path", "get_model", "list_models", "load_bundled", "load_trace",
    "model_names", "summarize", "trace_config", "trace_from_dict", "write_trace",
]
