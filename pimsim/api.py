"""``pimsim.simulate``: a model on a PIM-GPT configuration, token by token.

This is a top layer, like the command line: it wires a trace (:mod:`workloads`), a mapping
(:mod:`mappings`) and the system simulator (:mod:`pimsim.system`). It returns a
:class:`SimulationResult` (plain data; ``to_dict()`` gives the JSON document) and never
prints; pass ``progress`` to hear about each finished step.
"""

from __future__ import annotations

import gc
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

from pimsim.errors import PimsimError, count_arg

CATEGORIES = {  # program categories -> breakdown names
    "linear": "pim_vmm", "score": "attention", "context": "attention",
    "read": "dram_access", "write": "dram_access", "asic": "asic_ops",
    "transfer": "transfers", "wait": "waiting",
}


@dataclass
class SimulationResult:
    """Everything one simulation measured (times in seconds, energies in joules)."""

    meta: dict
    steps: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    timeline: list[tuple] | None = None

    def to_dict(self) -> dict:
        return {**self.meta, **self.summary, "steps": self.steps}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"


def trace_hash(trace) -> str:
    """SHA-256 of a trace's canonical JSON."""
    text = json.dumps(trace.raw, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _channel_time(cycles: dict[str, int], total_s: float, d, tokens: int) -> dict[str, float]:
    """Per channel and token: what the channel's time went to (``idle``: no kernel)."""
    per = {k: v * d.tCK_ps * 1e-12 / d.channels / tokens for k, v in sorted(cycles.items())}
    per["idle"] = max(total_s / tokens - sum(per.values()), 0.0)
    return per


def load_model(model) -> object:
    """A registry name, a trace file path, or a Trace as it is."""
    import workloads

    if hasattr(model, "phases") and hasattr(model, "weights"):
        return model
    text = str(model)
    if text in workloads.model_names():
        return workloads.load_bundled(text)
    if text.endswith(".json") or Path(text).exists():
        return workloads.load_trace(text)
    raise PimsimError(f"unknown model {text!r} (registry: {', '.join(workloads.model_names())}; "
                      f"or a trace .json file)")


def op_group(op) -> str:
    """An op's name with its layer number starred and its kind appended, e.g.
    ``transformer.h.*.mlp.c_fc (linear)``: the same op of every layer shares it."""
    return f"{re.sub(r'(?<=[.])[0-9]+(?=[.]|$)', '*', op.module)} ({op.op})"


def _by_op(trace, ps_by_index: dict[int, int], tokens: int) -> dict[str, float]:
    """Seconds per token of the critical path's nodes, by :func:`op_group`."""
    ops = trace.decode.ops
    out: dict[str, int] = {}
    for i, v in ps_by_index.items():
        key = op_group(ops[i])
        out[key] = out.get(key, 0) + v
    return {k: v * 1e-12 / tokens for k, v in sorted(out.items())}


def mac_weight_elements(trace) -> int:
    """Elements of the weight matrices that the banks stream through their MAC units each
    step (the linear layers and the LM head, a tied table once): what the DRAM-timing and
    bandwidth bounds stream. Embedding tables, norm weights and biases are read, not
    streamed."""
    seen: dict[str, int] = {}
    for op in trace.decode.ops:
        if op.op in ("linear", "lm_head"):
            seen[op["weight"]] = op["in_features"] * op["out_features"]
    return sum(seen.values())


def _check_asic_buffer(trace, spec, kv_len: int) -> int:
    """The ASIC's peak SRAM need over the run (at its longest context); an error when
    ``asic.sram_bytes`` cannot hold it."""
    from pimsim.asic import buffer_need

    need, at = buffer_need(trace.decode.ops, kv_len)
    have = spec.asic.sram_bytes
    if need > have:
        op = trace.decode.ops[at]
        raise PimsimError(f"{trace.model}: the ASIC must hold {need:,} B at {kv_len} positions "
                          f"(FP32 values live during {op.op} of {op.module}), more than "
                          f"asic.sram_bytes = {have:,} B")
    return need


def simulate(model, *, preset: str = "pim-gpt", overrides: Iterable[str] | Mapping = (), prompt: int = 32,
             tokens: int = 8, strategy: str = "pim-gpt", timeline: bool = False,
             check: bool = False, replay: bool = True, scheduler: str = "compiled",
             progress: Callable[[int, int], None] | None = None) -> SimulationResult:
    """Decode ``tokens`` tokens after a ``prompt``-token context (KV lengths prompt+1 ..
    prompt+tokens), every DRAM command timed by the channel engines.

    ``overrides``: ``KEY=VALUE`` texts as with ``--set``, or a mapping ``{key: value}``.
    Prefill is not simulated: the prompt only sets where decoding starts. A model that does
    not fit the channels, or whose values at the longest context do not fit the ASIC's
    SRAM (``asic.sram_bytes``), is an error before any step runs. With ``check``
    every issued command is protocol-checked and violations raise an error. ``replay``
    reuses the stored run of a kernel issued before from the same relative channel state
    when no refresh falls due during it (exact; ``False`` issues every kernel).
    ``scheduler``: ``"compiled"`` (default) runs each step's event list in compiled code,
    ``"listed"`` in Python, ``"simpy"`` as SimPy processes; all three give identical
    results (with ``check``, steps run listed, which keeps the command logs).
    """
    import mappings
    from pimsim import __version__
    from pimsim.config import load_preset
    from pimsim.energy import energy_ranges
    from pimsim.system import SystemSimulator

    prompt = count_arg(prompt, "prompt", "a non-negative number of tokens", 0)
    tokens = count_arg(tokens, "tokens", "a positive number of decode steps", 1)
    for name, flag in (("timeline", timeline), ("check", check), ("replay", replay)):
        if not isinstance(flag, bool):
            raise PimsimError(f"{name} must be True or False, got {flag!r}")
    if progress is not None and not callable(progress):
        raise PimsimError(f"progress must be a callable (done, total) or None, got {progress!r}")
    spec = load_preset(preset, overrides)
    trace = load_model(model)
    limit = mappings.model_context(trace)
    if limit is not None and prompt + tokens > limit:
        raise PimsimError(f"{trace.model}: a {prompt}-token context plus {tokens} tokens needs "
                          f"{prompt + tokens} positions; the model has {limit}")
    mapping = mappings.map(trace, spec, strategy, max_context=prompt + tokens)
    sim = SystemSimulator(spec, keep_timeline=timeline, keep_logs=check, memo=replay,
                          scheduler=scheduler)
    buffer_bytes = _check_asic_buffer(trace, spec, prompt + tokens)
    d = spec.dram
    t = d.timing
    result = SimulationResult(meta={
        "pimsim_version": __version__, "model": trace.model, "trace_hash": trace_hash(trace),
        "spec_digest": spec.digest, "preset": spec.name, "strategy": strategy,
        "prompt_tokens": prompt, "decode_tokens": tokens, "parameters": trace.parameters,
        "asic_buffer_bytes": buffer_bytes,
    }, timeline=[] if timeline else None)
    totals: dict[str, int] = {}
    asic_totals: dict[str, int] = {}
    bytes_totals: dict[str, int] = {}
    crit: dict[str, int] = {}
    crit_op: dict[int, int] = {}
    chan: dict[str, int] = {}
    stall = 0
    # the mapping's objects, and what its caches gain step by step, live as long as the
    # run: keep the cyclic garbage collector from walking them again and again (unless
    # the caller froze objects already); unfrozen, and so collectable, after the run
    froze = gc.get_freeze_count() == 0
    if froze:
        gc.freeze()
    try:
        for i in range(tokens):
            kv_len = prompt + i + 1
            step = sim.run_step(mapping.program(kv_len))
            for src, dst in ((step.counts, totals), (step.asic, asic_totals), (step.transfer_bytes, bytes_totals)):
                for k, v in src.items():
                    dst[k] = dst.get(k, 0) + v
            for k, v in step.critical_ps.items():
                name = CATEGORIES.get(k, k)
                crit[name] = crit.get(name, 0) + v
            for k, v in step.critical_by_op_ps.items():
                crit_op[k] = crit_op.get(k, 0) + v
            for k, v in step.channel_cycles.items():
                chan[k] = chan.get(k, 0) + v
            stall += step.refresh_stall_cycles
            result.steps.append({"kv_len": kv_len, "latency_s": step.latency_ps * 1e-12,
                                 "start_s": step.start_ps * 1e-12})
            if timeline:
                result.timeline += [(n, c, ch, s, e) for n, c, ch, s, e in step.timeline]
            if progress is not None:
                progress(i + 1, tokens)
            if froze:
                gc.freeze()
    finally:
        if froze:
            gc.unfreeze()
    if check:
        violations = sim.check_logs()
        if violations:
            ch, v = violations[0]
            raise PimsimError(f"protocol check: {len(violations)} violation(s), first on channel {ch}: {v}")

    total_s = sum(s["latency_s"] for s in result.steps)
    per_token = total_s / tokens
    cols = sum(totals.get(c, 0) for c in ("MAC16", "RD", "WR"))
    acts = totals.get("ACT", 0) + totals.get("ACT16", 0)
    energy = energy_ranges(totals, asic_totals, total_s, channels=d.channels, banks=d.banks,
                           mac_lanes=spec.pim.mac_lanes, sram_bytes=spec.asic.sram_bytes)
    e_tok = {c: sum(b.values()) / tokens for c, b in energy.items()}
    weight_bytes = 2 * mac_weight_elements(trace)
    row_cycles = (t["nRCDRDMAC"] + (d.columns - 1) * max(t["nCCDL"], t.get("nMAC", 0))
                  + t["nRTP"] + t["nRP"])
    rows_per_bank = weight_bytes / (d.channels * d.banks * d.row_bytes)
    pim_cycle_s = 1e-6 / spec.pim.clock_MHz * (d.column_bytes // 2 // spec.pim.mac_lanes)
    internal_peak = d.channels * d.banks * d.column_bytes / pim_cycle_s
    pin_peak = d.channels * spec.pin_bandwidth_Bps
    mac_bytes = totals.get("MAC16", 0) * d.banks * d.column_bytes
    pin_bytes = (totals.get("WRGB", 0) + totals.get("WR", 0) + totals.get("RD", 0)
                 + totals.get("RDMAC16", 0)) * d.column_bytes
    result.summary = {
        "latency_per_token_s": per_token,
        "tokens_per_s": 1.0 / per_token,
        "total_time_s": total_s,
        "breakdown_s": {k: v * 1e-12 / tokens for k, v in sorted(crit.items())},
        "breakdown_by_op_s": _by_op(trace, crit_op, tokens),
        "busy_s": None,
        "refresh_stall_s": stall * d.tCK_ps * 1e-12 / d.channels / tokens,
        "channel_time_s": _channel_time(chan, total_s, d, tokens),
        "energy_per_token_J": e_tok,
        "energy_breakdown_J": {k: energy["nominal"][k] / tokens for k in sorted(energy["nominal"])},
        "energy_breakdown_range_J": {c: {k: v / tokens for k, v in sorted(b.items())}
                                     for c, b in energy.items() if c != "nominal"},
        "row_hit_rate": (cols - acts) / cols if cols else 0.0,
        "command_counts": dict(sorted(totals.items())),
        "asic_operations": dict(sorted(asic_totals.items())),
        "transfer_bytes": dict(sorted(bytes_totals.items())),
        "bandwidth": {
            "internal_Bps": mac_bytes / total_s, "internal_peak_Bps": internal_peak,
            "pin_Bps": pin_bytes / total_s, "pin_peak_Bps": pin_peak,
        },
        "bounds": {
            "dram_timing_bound_s": rows_per_bank * row_cycles * d.tCK_ps * 1e-12,
            "bandwidth_bound_s": weight_bytes / internal_peak,
        },
    }
    del result.summary["busy_s"]
    return result
