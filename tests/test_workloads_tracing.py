"""Tracing real transformers models (needs torch and transformers: the ``models`` marker).

Test-time tracing uses shrunk configs (2 layers, small widths) or the meta device, so the
whole file runs in seconds.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

import torch  # noqa: E402  (the models extra, installed by the test command)
import transformers  # noqa: E402,F401

import workloads  # noqa: E402
from pimsim.cli import main  # noqa: E402
from workloads.generate import bundled_text  # noqa: E402
from workloads.schema import dumps, trace_from_dict  # noqa: E402
from workloads.tracer import trace_config  # noqa: E402

pytestmark = pytest.mark.models


def _load_sibling(name: str):
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: weight elements counted from the ops' own shape fields (shared with test_workloads.py)
weight_elements_from_ops = _load_sibling("test_workloads").weight_elements_from_ops

SMALL = {
    "gpt2": {"model_type": "gpt2", "n_layer": 2, "n_embd": 128, "n_head": 4, "vocab_size": 500,
             "n_positions": 64},
    "llama": {"model_type": "llama", "hidden_size": 128, "intermediate_size": 352,
              "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2,
              "vocab_size": 500, "max_position_embeddings": 64, "tie_word_embeddings": False},
    "opt": {"model_type": "opt", "hidden_size": 128, "ffn_dim": 512, "num_hidden_layers": 2,
            "num_attention_heads": 4, "vocab_size": 500, "word_embed_proj_dim": 128,
            "max_position_embeddings": 64},
    "qwen2": {"model_type": "qwen2", "hidden_size": 128, "intermediate_size": 256,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1,
              "vocab_size": 500, "max_position_embeddings": 64, "tie_word_embeddings": True,
              "use_sliding_window": False},
}


def _trace(cfg, **kw):
    kw.setdefault("prompt", 5)
    return trace_config(cfg, name="small", source="test config", **kw)


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_meta_trace_equals_real_weight_trace(arch):
    """The meta device (no weights) records exactly what a real CPU run does."""
    meta = _trace(SMALL[arch], device="meta", dtype="float32")
    real = _trace(SMALL[arch], device="cpu", dtype="float32")
    assert dumps(meta) == dumps(real)


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_eager_attention_gives_the_same_ops_as_sdpa(arch):
    """Models without an SDPA path are traced through eager attention: same vocabulary."""
    assert dumps(_trace(SMALL[arch], attention="eager")) == dumps(_trace(SMALL[arch],
                                                                         attention="sdpa"))


def test_model_without_sdpa_is_traced_through_eager_attention():
    cfg = {"model_type": "bloom", "hidden_size": 64, "n_layer": 2, "n_head": 4,
           "vocab_size": 300}
    t = trace_from_dict(_trace(cfg))
    assert weight_elements_from_ops(t) == _param_count_of_instantiated_model(cfg)
    layer = [o.op for o in t.decode.layer_ops(1)]
    assert layer == ["layernorm", "linear", "kv_append", "kv_append", "attn_score", "softmax",
                     "attn_context", "linear", "elementwise", "layernorm", "linear",
                     "activation", "linear", "elementwise"]
    score = next(o for o in t.decode.ops if o.op == "attn_score")
    assert score["scale"] == pytest.approx((64 // 4) ** -0.5)


def test_tracing_twice_gives_identical_text():
    assert dumps(_trace(SMALL["llama"])) == dumps(_trace(SMALL["llama"]))


def _param_count_of_instantiated_model(config: dict) -> int:
    """Independent count: build the model (meta device) and count unique parameters."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return sum(p.numel() for p in model.parameters())  # parameters() dedups tied weights


@pytest.mark.parametrize("name", [e.name for e in workloads.list_models()])
def test_trace_weights_add_up_to_the_instantiated_models_parameters(name):
    trace = workloads.load_bundled(name)
    expected = _param_count_of_instantiated_model(dict(workloads.get_model(name).config))
    assert weight_elements_from_ops(trace) == expected
    assert trace.parameters == expected


@pytest.mark.parametrize("name", ["gpt2-small", "qwen2.5-0.5b"])
def test_regenerated_bundled_trace_equals_the_committed_one(name):
    committed = workloads.get_model(name).trace_path.read_text(encoding="utf-8")
    fresh = bundled_text(name)
    old, new = json.loads(committed), json.loads(fresh)
    if old["libraries"] == new["libraries"]:
        assert fresh == committed
    else:  # other library versions: everything but the versions must still agree
        old.pop("libraries"), new.pop("libraries")
        assert old == new, f"bundled trace of {name} is stale: python -m workloads.generate"


def test_small_llama_trace_groups_kv_heads_and_shows_rotary_and_gate():
    cfg = SMALL["llama"]
    t = trace_from_dict(_trace(cfg))
    hd = cfg["hidden_size"] // cfg["num_attention_heads"]
    layer = t.decode.layer_ops(1)
    apps = [o for o in layer if o.op == "kv_append"]
    assert [(o["target"], o["kv_heads"], o["head_dim"]) for o in apps] == [
        ("k", cfg["num_key_value_heads"], hd), ("v", cfg["num_key_value_heads"], hd)]
    assert [o["target"] for o in layer if o.op == "rotary"] == ["q", "k"]
    assert [o["role"] for o in layer if o.op == "elementwise"] == ["residual", "gate", "residual"]
    # prefill: same layer structure with P tokens, causal attention over P keys
    pre = [o for o in t.prefill.layer_ops(1) if o.op == "attn_score"]
    assert pre[0]["q_len"] == 5 and pre[0]["causal"]
    assert t.decode.ops[-1].op == "lm_head"


def test_cli_traces_an_hf_config(tmp_path, capsys):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(SMALL["opt"]))
    out = tmp_path / "t.json"
    assert main(["trace", "--hf-config", str(cfg), "--name", "tiny-opt", "--prompt", "4",
                 "--out", str(out)]) == 0
    t = workloads.load_trace(out)
    assert t.model == "tiny-opt" and t.prefill.tokens == 4
    assert "tiny-opt" in capsys.readouterr().out


BAD_CONFIGS = [
    ({"model_type": "bert", "hidden_size": 64, "num_attention_heads": 2,
      "num_hidden_layers": 1, "intermediate_size": 64}, "'bert' is encoder-only"),
    ({"model_type": "t5"}, "'t5' is an encoder-decoder"),
    ({"model_type": "gpt2", "n_embd": 100, "n_head": 3}, "'gpt2': transformers cannot build"),
    ({"model_type": "no-such-arch"}, "model_type: unknown architecture 'no-such-arch'"),
    ({"n_layer": 2}, "model_type: missing field"),
    ([1, 2], "expected a JSON object"),
]


@pytest.mark.parametrize("config,message", BAD_CONFIGS, ids=[b[1] for b in BAD_CONFIGS])
def test_cli_rejects_bad_configs_with_exit_2(tmp_path, capsys, config, message):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(config))
    out = tmp_path / "t.json"
    assert main(["trace", "--hf-config", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"pimsim: error: {path}: ") and message in err
    assert not out.exists()


def test_prompt_longer_than_the_context_is_rejected():
    with pytest.raises(workloads.TraceError, match="prompt"):
        _trace(SMALL["gpt2"], prompt=64)


@pytest.mark.parametrize("command", _load_sibling("test_workloads").doc_commands(needs_torch=True))
def test_docs_tracing_example_runs(command, tmp_path, monkeypatch, capsys):
    import shlex

    monkeypatch.chdir(tmp_path)
    assert main(shlex.split(command)[1:]) == 0, capsys.readouterr().err
    out = shlex.split(command)[shlex.split(command).index("--out") + 1]
    workloads.load_trace(tmp_path / out)


def _matrix_elements_of_instantiated_model(config: dict) -> int:
    """Independent count of what the banks stream: the weights of the model's linear
    layers (nn.Linear, and GPT-2's Conv1D), a tied LM head once."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    cfg = AutoConfig.for_model(**config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    weights = {id(m.weight): m.weight.numel() for m in model.modules()
               if isinstance(m, (torch.nn.Linear, Conv1D))}
    return sum(weights.values())


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_the_bounds_stream_the_weight_matrices_and_the_latency_never_beats_them(arch):
    """Embedding tables, norms and biases are read, not streamed: the bounds count only the
    matrices (an untied embedding table would otherwise put the bound above the latency)."""
    import pimsim

    trace = trace_from_dict(_trace(SMALL[arch]))
    d = pimsim.simulate(trace, prompt=5, tokens=2).to_dict()
    b = d["bounds"]
    streamed = 2 * _matrix_elements_of_instantiated_model(SMALL[arch])
    assert b["bandwidth_bound_s"] * d["bandwidth"]["internal_peak_Bps"] == pytest.approx(streamed)
    assert d["latency_per_token_s"] > b["dram_timing_bound_s"] > b["bandwidth_bound_s"]
