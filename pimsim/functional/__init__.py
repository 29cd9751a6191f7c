"""Functional simulation: real numbers through the mapped program, compared with PyTorch.

>>> from pimsim.functional import APPROXIMATIONS, run       # doctest: +SKIP
>>> res = run("gpt2-small", steps=4, prompt=4, exact=APPROXIMATIONS)
>>> res.summary("hardware")["max_rel"], res.summary("fp32")["top1"]
(0.0, 1.0)

A registry model is initialised by its own transformers code (random weights, seeded),
its parameters are rounded to BF16 and placed in bank arrays, and its decode steps run
through :class:`pimsim.functional.model.FunctionalModel`: the program's MAC kernels with
the bank MAC arithmetic, K/V appends through the program's write kernels, the ASIC's
operators with its approximations. The tokens are the functional run's own greedy choices
(the prompt: seeded random tokens); the PyTorch references are fed the same tokens
(:mod:`pimsim.functional.reference`, which needs torch and transformers). Library code
returns data; the CLI (``pimsim functional``) prints and writes files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from pimsim.errors import PimsimError, count_arg, is_count
from pimsim.functional.asic import APPROXIMATIONS
from pimsim.functional.model import FunctionalError, FunctionalModel, check_supported

#: Per-step metrics, in the order reports show them.
METRICS = ("max_abs", "mean_abs", "max_rel", "mean_rel", "top1", "kl")

#: References the functional logits are compared with: the PyTorch model with the
#: hardware's arithmetic in its order (:mod:`pimsim.functional.emulation`), then the
#: Hugging Face model with BF16 operands, with BF16 weights only, and in FP32
#: (:mod:`pimsim.functional.reference`).
REFERENCES = ("hardware", "bf16-operands", "bf16-weights", "fp32")


def step_metrics(got: np.ndarray, ref: np.ndarray) -> dict:
    """Logit error of one step. ``max_rel`` = max|got - ref| / max|ref| and ``mean_rel`` =
    mean|got - ref| / mean|ref| (norm-wise: single logits near zero have no meaningful
    relative error); ``top1``: the argmaxes agree; ``kl``: KL(softmax(ref) || softmax(got))
    in nats, in float64."""
    g, r = got.astype(np.float64), ref.astype(np.float64)
    d = np.abs(g - r)
    lp = r - r.max() - np.log(np.exp(r - r.max()).sum())
    lq = g - g.max() - np.log(np.exp(g - g.max()).sum())
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()),
            "max_rel": float(d.max() / np.abs(r).max()), "mean_rel": float(d.mean() / np.abs(r).mean()),
            "top1": bool(np.argmax(g) == np.argmax(r)),
            "kl": float(max((np.exp(lp) * (lp - lq)).sum(), 0.0))}


@dataclass
class FunctionalResult:
    """Logits of the functional run and of each PyTorch reference at every decode step."""

    meta: dict
    tokens: list[int]                       # every token fed, prompt first
    logits: np.ndarray                      # (steps, vocab) float32, functional
    references: dict[str, np.ndarray] = field(default_factory=dict)   # mode -> (steps, vocab)

    def metrics(self, mode: str) -> list[dict]:
        ref = self.references[mode]
        return [step_metrics(self.logits[i], ref[i]) for i in range(self.logits.shape[0])]

    def summary(self, mode: str) -> dict:
        """Worst case over the steps (``top1``: the fraction of steps that agree)."""
        m = self.metrics(mode)
        out = {k: max(s[k] for s in m) for k in METRICS if k != "top1"}
        out["top1"] = sum(s["top1"] for s in m) / len(m)
        return out

    def to_dict(self) -> dict:
        per = {mode: self.metrics(mode) for mode in self.references}
        return {**self.meta, "tokens": self.tokens,
                "steps": [{"step": i, "position": self.meta["prompt_tokens"] + i,
                           "token": self.tokens[self.meta["prompt_tokens"] + i],
                           **{mode: per[mode][i] for mode in self.references}}
                          for i in range(self.logits.shape[0])],
                "summary": {mode: self.summary(mode) for mode in self.references}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n"


def _names(value, name: str, known: Iterable[str], what: str) -> list[str]:
    """A collection of names from ``known`` (a list, tuple or set of strings)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise FunctionalError(f"{name} must be a list of {what} names ({', '.join(known)}), "
                              f"got {value!r:.60}")
    names = list(value)
    odd = [v for v in names if not isinstance(v, str)]
    if odd:
        raise FunctionalError(f"{name} must be a list of {what} names ({', '.join(known)}), "
                              f"got {odd[0]!r:.60} in it")
    return names


def run(model: str, steps: int, prompt: int = 8, *, preset: str = "pim-gpt",
        overrides: Iterable[str] = (), exact: Iterable[str] = (), strategy: str = "pim-gpt",
        seed: int = 0, references: Iterable[str] | None = None, tokens: list[int] | None = None,
        progress: Callable[[int, int], None] | None = None) -> FunctionalResult:
    """Run ``prompt`` seeded random tokens, then ``steps`` greedy decode steps of registry
    model ``model`` functionally, and the PyTorch references on the same tokens.

    ``exact``: ASIC approximations replaced by exact functions (``APPROXIMATIONS`` for
    all: what ``--exact-nonlinear`` does). ``references``: which of :data:`REFERENCES` to
    compare with (default all). ``tokens``: feed exactly these ``prompt + steps`` tokens
    (teacher forcing, e.g. to compare runs on one sequence) instead of the seeded prompt
    and the run's own greedy choices."""
    import mappings
    import workloads
    from pimsim import __version__
    from pimsim.api import _check_asic_buffer, trace_hash
    from pimsim.config import load_preset
    from pimsim.functional import reference as R

    steps = count_arg(steps, "steps", "a positive number of decode steps", 1)
    prompt = count_arg(prompt, "prompt", "a non-negative number of tokens", 0)
    if not is_count(seed) or not 0 <= seed < 2**64:
        raise PimsimError(f"seed must be an integer in 0 .. 2**64 - 1, got {seed!r}")
    seed = int(seed)
    if progress is not None and not callable(progress):
        raise FunctionalError(f"progress must be a callable (done, total) or None, got "
                              f"{progress!r:.60}")
    refs = list(REFERENCES) if references is None else \
        _names(references, "references", REFERENCES, "reference")
    bad = [m for m in refs if m not in REFERENCES]
    if bad:
        raise PimsimError(f"unknown reference(s) {', '.join(map(str, bad))} "
                          f"(known: {', '.join(REFERENCES)})")
    exact = sorted(set(_names(exact, "exact", APPROXIMATIONS, "approximation")))
    if set(exact) - set(APPROXIMATIONS):
        raise PimsimError(f"unknown approximation(s) {sorted(set(exact) - set(APPROXIMATIONS))} "
                          f"(known: {', '.join(APPROXIMATIONS)})")
    if model not in workloads.model_names():
        raise PimsimError(f"functional mode needs a registry model (its weights come from its "
                          f"model code), got {model!r}; known: {', '.join(workloads.model_names())}")
    mappings.strategy_class(strategy)
    if tokens is not None and (isinstance(tokens, (str, bytes, dict)) or
                               not isinstance(tokens, Iterable)):
        raise FunctionalError(f"tokens must be a list of token ids (prompt + steps of them), "
                              f"got {tokens!r:.60}")
    trace = workloads.load_bundled(model)
    check_supported(trace)
    spec = load_preset(preset, overrides)
    mappings.geometry(spec)         # as simulate: a preset without PIM units is an error
    if spec.asic is None:
        raise FunctionalError(f"preset {spec.name} has no 'asic' section; functional mode "
                              f"needs one")
    first = prompt                  # position of the first decode step
    positions = first + steps
    vocab = int(trace.config.get("vocab_size"))
    limit = mappings.model_context(trace)
    if limit is not None and positions > limit:
        raise PimsimError(f"{trace.model}: {prompt} prompt tokens plus {steps} steps need "
                          f"{positions} positions; the model has {limit}")
    _check_asic_buffer(trace, spec, positions)   # as simulate: the SRAM must hold the run
    if tokens is not None:
        tokens = list(tokens)
        if len(tokens) != positions or any(not is_count(t) or not 0 <= t < vocab
                                           for t in tokens):
            raise PimsimError(f"tokens: expected {positions} token ids in 0..{vocab - 1} "
                              f"(prompt + steps), got {tokens!r:.80}")
        tokens = [int(t) for t in tokens]
    else:
        rng = np.random.default_rng(seed)
        bos = trace.config.get("bos_token_id")
        tokens = [int(t) for t in rng.integers(0, vocab, prompt)] if prompt else \
            [int(bos) if isinstance(bos, int) else 0]
    net = R.load_model(model, seed)
    fm = FunctionalModel(trace, spec, R.bf16_weights(net), rope=R.rope_tables(net, positions),
                         exact=exact, strategy=strategy, max_context=positions, seed=seed)
    logits, out = [], None
    for pos in range(positions):
        if pos >= len(tokens):
            tokens.append(int(np.argmax(out)))
        out = fm.step(tokens[pos])
        if pos >= first:
            logits.append(out)
        if progress:
            progress(pos + 1, positions + len(refs))
    result = FunctionalResult(meta={
        "pimsim_version": __version__, "model": trace.model, "trace_hash": trace_hash(trace),
        "spec_digest": spec.digest, "preset": spec.name, "strategy": strategy, "seed": seed,
        "prompt_tokens": prompt, "decode_steps": steps, "exact_functions": exact,
        "approximations": [a for a in APPROXIMATIONS if a not in exact],
        "golden_fallbacks": fm.fallbacks}, tokens=tokens, logits=np.stack(logits))
    for mode in refs:
        if mode == "hardware":
            from pimsim.functional.emulation import hardware_logits

            full = hardware_logits(net, tokens, trace, fm.mapping, exact)
        else:
            full = R.reference_logits(net, tokens, mode)
        result.references[mode] = full[first:]
        if progress:
            progress(positions + len(result.references), positions + len(refs))
    return result


__all__ = ["APPROXIMATIONS", "FunctionalError", "FunctionalModel", "FunctionalResult", "METRICS",
           "REFERENCES", "run", "step_metrics"]
