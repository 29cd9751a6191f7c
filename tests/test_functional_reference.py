"""PyTorch reference logits of the functional simulator (pimsim.functional.reference).

Needs torch and transformers (the ``models`` marker). Two real-size registry models, built
once per module with random weights: GPT-2 small (Conv1D, learned positions) and
SmolLM2-135M (LLaMA: RoPE, RMSNorm, grouped-query attention 9/3). A few tokens each.
The hardware's rounding is recomputed here by hand in numpy (a textbook RNE bit formula,
checked against pimsim.numerics).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import numpy as np
import pytest

import torch  # noqa: E402  (the models extra, installed by the test command)

import workloads  # noqa: E402
from pimsim.functional import reference as R  # noqa: E402
from pimsim.numerics import bf16_to_f32, f32_to_bf16_bits  # noqa: E402

pytestmark = pytest.mark.models

TOKENS = {"gpt2-small": [50256, 464, 2068, 7586, 21831, 11],
          "smollm2-135m": [1, 504, 2365, 9, 17, 311]}


@pytest.fixture(scope="module")
def models() -> dict:
    return {name: R.load_model(name) for name in TOKENS}


@pytest.fixture(scope="module")
def fp32_logits(models) -> dict:
    return {name: R.reference_logits(models[name], TOKENS[name], "fp32") for name in TOKENS}


def rnd(x) -> np.ndarray:
    """BF16 rounding (RNE) of finite FP32 values by the textbook bit formula (not torch):
    add 0x7FFF plus the kept LSB, clear the low 16 bits."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    lsb = (bits >> np.uint32(16)) & np.uint32(1)
    bits = (bits + np.uint32(0x7FFF) + lsb) & np.uint32(0xFFFF0000)
    return bits.view(np.float32)


def sample(a: np.ndarray, n: int = 4096) -> np.ndarray:
    flat = a.reshape(-1)
    return flat[:: max(1, flat.size // n)]


def f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


# --- bf16_weights -------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TOKENS))
def test_bf16_weights_cover_trace_and_are_bf16(models, name):
    model = models[name]
    weights = R.bf16_weights(model)
    trace = workloads.load_bundled(name)
    missing = set(trace.weights) - set(weights)
    assert not missing, f"trace weights without a reference array: {sorted(missing)[:5]}"
    sd = model.state_dict()
    assert set(weights) == set(sd)  # these models have parameters only, tied ones under both names
    rounded_some = False
    for key, arr in weights.items():
        assert arr.dtype == np.float32, key
        if key in trace.weights:
            assert list(arr.shape) == trace.weights[key]["shape"], key
        assert not (arr.view(np.uint32) & np.uint32(0xFFFF)).any(), f"{key}: not BF16-exact"
        orig = sd[key].detach().numpy()
        np.testing.assert_array_equal(arr, rnd(orig), err_msg=key)
        # the hardware's own conversion agrees (on a sample: it is slow on 40M values)
        np.testing.assert_array_equal(sample(arr), bf16_to_f32(f32_to_bf16_bits(sample(orig))))
        rounded_some |= bool((arr != orig).any())
    assert rounded_some
    emb = "transformer.wte.weight" if name == "gpt2-small" else "model.embed_tokens.weight"
    np.testing.assert_array_equal(weights["lm_head.weight"], weights[emb])


# --- load_model ---------------------------------------------------------------------------


def test_load_model_is_deterministic_per_seed(models):
    ref = state(models["smollm2-135m"])
    again = state(R.load_model("smollm2-135m", seed=0))
    other = state(R.load_model("smollm2-135m", seed=1))
    assert set(again) == set(ref) == set(other)
    for k in ref:
        np.testing.assert_array_equal(again[k], ref[k], err_msg=k)
    random_keys = [k for k in ref if ref[k].std() > 0]  # norms start at 1, biases at 0
    assert random_keys and all(not np.array_equal(other[k], ref[k]) for k in random_keys)
    model = models["smollm2-135m"]
    assert not model.training and model.config._attn_implementation == "eager"
    assert all(p.dtype == torch.float32 for p in model.parameters())


# --- reference_logits ---------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TOKENS))
def test_incremental_fp32_equals_full_forward(models, fp32_logits, name):
    model, tokens, got = models[name], TOKENS[name], fp32_logits[name]
    with torch.no_grad():
        full = model(input_ids=torch.tensor([tokens]), use_cache=False).logits[0].numpy()
    assert got.shape == (len(tokens), model.config.vocab_size) and got.dtype == np.float32
    np.testing.assert_allclose(got, full, rtol=1e-4, atol=1e-4)


def test_bf16_weights_mode_is_fp32_on_self_rounded_weights(models, fp32_logits):
    model, tokens = models["gpt2-small"], TOKENS["gpt2-small"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = R.reference_logits(model, tokens, "bf16-weights")
    mine = copy.deepcopy(model)
    with torch.no_grad():
        for p in mine.parameters():
            p.copy_(torch.from_numpy(rnd(p.detach().numpy())))
    want = R.reference_logits(mine, tokens, "fp32")
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert np.abs(fp32_logits["gpt2-small"] - want).max() > 100 * 1e-6  # the check can tell
    R.reference_logits(model, tokens, "bf16-operands")
    after = model.state_dict()
    assert set(after) == set(before)
    assert all(torch.equal(after[k], before[k]) for k in before), "the caller's model changed"
    assert model.config._attn_implementation == "eager"
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_bad_arguments_are_rejected(models):
    model = models["gpt2-small"]
    with pytest.raises(ValueError, match="mode"):
        R.reference_logits(model, [1, 2], "bf16")
    with pytest.raises(ValueError, match="tokens"):
        R.reference_logits(model, [], "fp32")
    with pytest.raises(ValueError, match="tokens"):
        R.reference_logits(model, [model.config.vocab_size], "fp32")


# --- bf16-operands: layer-0 attention recomputed by hand ----------------------------------


@contextmanager
def capture_layer0_attention():
    """(input hidden state, output) of every layer-0 attention call, any model copy."""
    calls = []

    def hook(module, args, kwargs, out):
        if type(module).__name__.endswith("Attention") and getattr(module, "layer_idx", None) == 0:
            x = args[0] if args else kwargs["hidden_states"]
            calls.append((x.detach().numpy().copy(), out[0].detach().numpy().copy()))

    handle = torch.nn.modules.module.register_module_forward_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def hand_attention(q, k, v, scale: float, r) -> np.ndarray:
    """Causal incremental attention: q (T, H, d), k/v (T, Hkv, d) -> context (T, H*d).

    ``r`` is the operand rounding (BF16 or identity); query head h uses K/V head
    h // (H / Hkv). Scale after the q.K product, softmax in FP32 (float64 here).
    """
    T, H, d = q.shape
    group = H // k.shape[1]
    out = np.zeros((T, H, d))
    for t in range(T):
        for h in range(H):
            kk, vv = r(k[: t + 1, h // group]), r(v[: t + 1, h // group])
            p = softmax((r(q[t, h]).astype(np.float64) @ kk.T) * scale)
            out[t, h] = r(f32(p)) @ vv
    return f32(out.reshape(T, H * d))


def textbook_rope(positions: int, head_dim: int, theta: float):
    inv = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    ang = np.arange(positions)[:, None] * inv[None, :]
    ang = np.concatenate([ang, ang], axis=-1)
    return np.cos(ang), np.sin(ang)


def apply_rope(x, cos, sin):  # x (T, heads, d); HF's rotate_half convention
    half = x.shape[-1] // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return f32(x * cos[:, None, :] + rot * sin[:, None, :])


def hand_layer0(name: str, cfg: dict, w: dict, xs: np.ndarray, r) -> np.ndarray:
    """Layer-0 attention block output (T, D) from its input xs (T, D), weights ``w``
    (BF16-rounded here), linear inputs and attention operands through ``r``."""
    if name == "gpt2-small":
        D, H = cfg["n_embd"], cfg["n_head"]
        p = "transformer.h.0.attn."
        qkv = f32(r(xs) @ w[p + "c_attn.weight"] + w[p + "c_attn.bias"])  # Conv1D: (in, out)
        q, k, v = (a.reshape(len(xs), H, D // H) for a in np.split(qkv, 3, axis=-1))
        ctx = hand_attention(q, k, v, (D // H) ** -0.5, r)
        return f32(r(ctx) @ w[p + "c_proj.weight"] + w[p + "c_proj.bias"])
    H, Hkv, d = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    p = "model.layers.0.self_attn."
    q, k, v = (f32(r(xs) @ w[p + n + "_proj.weight"].T) for n in "qkv")  # nn.Linear: (out, in)
    cos, sin = textbook_rope(len(xs), d, cfg["rope_theta"])
    q = apply_rope(q.reshape(len(xs), H, d), cos, sin)
    k = apply_rope(k.reshape(len(xs), Hkv, d), cos, sin)
    ctx = hand_attention(q, k, v.reshape(len(xs), Hkv, d), d ** -0.5, r)
    return f32(r(ctx) @ w[p + "o_proj.weight"].T)


@pytest.mark.parametrize("name", list(TOKENS))
def test_bf16_operands_attention_matches_hand_rounding(models, name):
    model, tokens = models[name], TOKENS[name]
    cfg = workloads.get_model(name).config
    if name == "gpt2-small":  # the hand computation assumes GPT-2's default scaling
        assert cfg.get("scale_attn_weights", True)
        assert not cfg.get("scale_attn_by_inverse_layer_idx")
    prefix = "transformer.h.0.attn." if name == "gpt2-small" else "model.layers.0.self_attn."
    w = {k: rnd(v.numpy()) for k, v in model.state_dict().items() if k.startswith(prefix)}
    with capture_layer0_attention() as calls:
        R.reference_logits(model, tokens, "bf16-operands")
    assert len(calls) == len(tokens)  # one decode step each, one query token per step
    xs = np.concatenate([x.reshape(1, -1) for x, _ in calls])
    got = np.concatenate([y.reshape(1, -1) for _, y in calls])
    scale = np.abs(got).max()
    err_rounded = np.abs(got - hand_layer0(name, cfg, w, xs, rnd)).max() / scale
    err_exact = np.abs(got - hand_layer0(name, cfg, w, xs, f32)).max() / scale
    # measured: ~4e-7 with the rounding rules, 1.4e-3 to 2e-3 when any one of q, K, p or V is
    # left unrounded; the bound leaves room for a rare BF16 rounding flip between numpy's
    # and torch's FP32 sums
    assert err_rounded < 1e-4, (err_rounded, err_exact)
    assert err_exact > 10 * err_rounded, (err_rounded, err_exact)


def test_bf16_operands_whole_sequence_is_causal(models):
    """Run on a whole sequence, the registered attention gets transformers' causal mask:
    changing the last token leaves every earlier row's logits bit-identical (each row's
    sums run in the same order either way). Whole-sequence and incremental logits are not
    compared: their FP32 sums run in different orders, which flips some BF16 roundings,
    and a 30-layer model spreads those flips to differences of BF16-rounding size."""
    model, tokens = models["smollm2-135m"], TOKENS["smollm2-135m"]
    run = R.prepared_model(model, "bf16-operands")
    assert run is not model and run.config._attn_implementation == R.ATTENTION_NAME
    other = [*tokens[:-1], tokens[-1] + 1]
    with torch.no_grad():
        a, b = (run(input_ids=torch.tensor([t]), use_cache=False).logits[0].numpy()
                for t in (tokens, other))
    np.testing.assert_array_equal(a[:-1], b[:-1])
    assert np.abs(a[-1] - b[-1]).max() > 1e-3


# --- rope_tables --------------------------------------------------------------------------


def test_rope_tables_textbook_formula(models):
    assert R.rope_tables(models["gpt2-small"], 8) is None
    cfg = workloads.get_model("smollm2-135m").config
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    cos, sin = R.rope_tables(models["smollm2-135m"], 16)
    want_cos, want_sin = textbook_rope(16, head_dim, cfg["rope_theta"])
    assert cos.shape == sin.shape == (16, head_dim) and cos.dtype == sin.dtype == np.float32
    np.testing.assert_allclose(cos, want_cos, rtol=0, atol=1e-5)
    np.testing.assert_allclose(sin, want_sin, rtol=0, atol=1e-5)
