"""PyTorch reference logits for the functional simulator.

PIM-GPT runs every matrix-vector product in the DRAM banks as BF16 x BF16 multiplies with
FP32 accumulation; the ASIC does everything else in FP32. The functional simulator runs real
values through that arithmetic; this module gives the Hugging Face logits it is compared
with, in three modes (:data:`MODES`):

* ``"fp32"``: the model as initialised, all in FP32.
* ``"bf16-weights"``: every parameter rounded to BF16, all computation in FP32.
* ``"bf16-operands"``: ``"bf16-weights"`` plus every operand of a bank product rounded to
  BF16 where the hardware rounds it: the input vector of every linear layer (``nn.Linear``,
  GPT-2's ``Conv1D``, the LM head; output and bias add stay FP32), through forward
  pre-hooks; and in attention, q and K before ``q.K^T`` (scale applied to the FP32 product),
  softmax in FP32, then the probabilities and V before ``p.V``. The attention part is an
  attention function registered in transformers' ``AttentionInterface`` under
  :data:`ATTENTION_NAME` (with transformers' eager mask registered under the same name),
  so HF's own modules (RoPE, applied in FP32 before the rounding, and the KV cache) run
  unchanged: GPT2Attention and LlamaAttention (and Qwen2's) call
  ``ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, ...)``.

Rounding to BF16 is ``tensor.to(torch.bfloat16)`` (round to nearest even). It keeps BF16
subnormals where :func:`pimsim.numerics.fp32_to_bf16` flushes them to zero; the two differ
only for |x| < 2**-126.

torch and transformers are imported inside functions only (pimsim installs without them).
"""

from __future__ import annotations

import contextlib
import copy
import numbers
from typing import Any

import numpy as np

#: Reference modes, from exact FP32 to the hardware's rounding of every bank operand.
MODES = ("fp32", "bf16-weights", "bf16-operands")

#: Name of the BF16-operand attention function in transformers' AttentionInterface.
ATTENTION_NAME = "pimsim_bf16_operands"


@contextlib.contextmanager
def _quiet():
    """Silence transformers' logging and Python warnings (library code does not print)."""
    import warnings

    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)


def load_model(name: str, seed: int = 0):
    """Registry model ``name`` with transformers' random initialisation under
    ``torch.manual_seed(seed)``: float32, eval mode, eager attention, CPU. Deterministic."""
    import torch
    from transformers import AutoModelForCausalLM

    import workloads
    from workloads.tracer import build_config

    cfg = build_config(workloads.get_model(name).config, name)
    with _quiet():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32,
                                                 attn_implementation="eager")
    return model.eval()


def _round_bf16(t):
    """``t`` with its values rounded to BF16 (RNE), same dtype as ``t``."""
    import torch

    return t.to(torch.bfloat16).to(t.dtype)


def bf16_weights(model) -> dict[str, np.ndarray]:
    """Every parameter of ``model`` as a float32 array of BF16-rounded values, keyed by its
    state_dict name (a tied parameter appears under each of its state_dict names)."""
    import torch

    arrays: dict[int, np.ndarray] = {}  # tied names share one array
    out = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if isinstance(t, torch.nn.Parameter):
            if id(t) not in arrays:
                arrays[id(t)] = _round_bf16(t.detach()).to(torch.float32).numpy()
            out[name] = arrays[id(t)]
    return out


def rope_tables(model, positions: int) -> tuple[np.ndarray, np.ndarray] | None:
    """RoPE ``(cos, sin)`` tables, each ``(positions, head_dim)`` float32, as the model's own
    rotary-embedding module computes them for positions ``0..positions-1``; ``None`` for
    models without RoPE (e.g. GPT-2's learned position embeddings)."""
    import torch

    if type(positions) is not int or positions < 1:
        raise ValueError(f"rope_tables: positions: expected a positive integer, got {positions!r}")
    rotary = next((m for m in model.modules()
                   if "RotaryEmbedding" in type(m).__name__ and hasattr(m, "inv_freq")), None)
    if rotary is None:
        return None
    x = torch.zeros(1, dtype=torch.float32)
    with torch.no_grad():
        cos, sin = rotary(x, torch.arange(positions)[None, :])
    return (cos[0].to(torch.float32).numpy().copy(), sin[0].to(torch.float32).numpy().copy())


def bf16_operand_attention(module, query, key, value, attention_mask, scaling=None,
                           dropout: float = 0.0, softcap=None, **kwargs: Any):
    """Attention with the PIM banks' operand rounding (an AttentionInterface function).

    ``query`` (batch, q_heads, q_len, head_dim), ``key``/``value`` (batch, kv_heads, k_len,
    head_dim), FP32. Scores = (bf16(q) . bf16(K)^T) * scaling in FP32, plus the additive
    ``attention_mask`` (batch, 1, q_len, k_len) if any; softmax in FP32; output =
    bf16(p) . bf16(V) in FP32. Grouped K/V heads are repeated to the query heads. Other
    keyword arguments (e.g. Qwen2's ``sliding_window``) are ignored: windows are in the mask.
    Returns (output (batch, q_len, q_heads, head_dim), probabilities).
    """
    import torch

    if softcap is not None:
        raise ValueError(f"{ATTENTION_NAME}: softcap={softcap!r}: logit soft-capping is not "
                         f"modelled")
    if module.training and dropout:
        raise ValueError(f"{ATTENTION_NAME}: dropout={dropout!r}: the reference runs in eval mode")
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    q_heads, kv_heads = query.shape[1], key.shape[1]
    if q_heads % kv_heads:
        raise ValueError(f"{ATTENTION_NAME}: {q_heads} query heads are not a multiple of "
                         f"{kv_heads} key/value heads")
    rep = q_heads // kv_heads
    k = _round_bf16(key).repeat_interleave(rep, dim=1)
    v = _round_bf16(value).repeat_interleave(rep, dim=1)
    scores = torch.matmul(_round_bf16(query), k.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
    out = torch.matmul(_round_bf16(probs), v)
    return out.transpose(1, 2).contiguous(), probs


def _register_attention() -> None:
    """Register :func:`bf16_operand_attention` and the eager mask under ATTENTION_NAME."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTENTION_NAME, bf16_operand_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)


def _round_input_hook(module, args):
    """Forward pre-hook: the input vector of a bank product rounded to BF16."""
    return (_round_bf16(args[0]), *args[1:])


def prepared_model(model, mode: str):
    """The model that :func:`reference_logits` runs for ``mode``: ``model`` itself for
    "fp32", otherwise a deep copy with BF16-rounded parameters and, for "bf16-operands",
    BF16 rounding of linear-layer inputs (pre-hooks) and the BF16-operand attention."""
    import torch
    from transformers.pytorch_utils import Conv1D

    if mode not in MODES:
        raise ValueError(f"reference: mode: expected one of {', '.join(MODES)}, got {mode!r}")
    if mode == "fp32":
        return model
    model = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(_round_bf16(p))
    if mode == "bf16-operands":
        _register_attention()
        for m in model.modules():
            if isinstance(m, (torch.nn.Linear, Conv1D)):
                m.register_forward_pre_hook(_round_input_hook)
        with _quiet():
            model.set_attn_implementation(ATTENTION_NAME)
        if model.config._attn_implementation != ATTENTION_NAME:
            raise ValueError(f"reference: {type(model).__name__} cannot use a registered "
                             f"attention function (bf16-operands mode)")
    return model.eval()


def reference_logits(model, tokens: list[int], mode: str) -> np.ndarray:
    """Logits (len(tokens), vocab) float32 of teacher-forced incremental decoding: token i
    fed at position i, one token per forward call with the model's KV cache (DynamicCache),
    the logits after each call. ``model`` itself is not modified."""
    import torch
    from transformers import DynamicCache

    vocab = model.get_input_embeddings().weight.shape[0]
    if not tokens or any(not isinstance(t, numbers.Integral) or not 0 <= t < vocab
                         for t in tokens):
        raise ValueError(f"reference_logits: tokens: expected a non-empty list of token ids "
                         f"in 0..{vocab - 1}, got {list(tokens)!r:.80}")
    run = prepared_model(model, mode)
    cache = DynamicCache(config=run.config)
    rows = []
    with torch.no_grad(), _quiet():
        for tok in tokens:
            out = run(input_ids=torch.tensor([[int(tok)]]), cache=cache, use_cache=True)
            rows.append(out.logits[0, -1].to(torch.float32))
    return torch.stack(rows).numpy()
