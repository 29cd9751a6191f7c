"""Workload traces without torch: bundled traces, the schema loader, the summary, the CLI.

The expectations here are derived from the published architectures (named quantities
such as d_model and heads), never copied from the tracer's output.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import workloads
from pimsim.cli import main
from workloads.schema import CTX, dumps, load_trace

pytestmark = pytest.mark.unit

REGISTRY = [e.name for e in workloads.list_models()]
PAPER_MODELS = ["gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl",
                "gpt3-small", "gpt3-medium", "gpt3-large", "gpt3-xl"]


def weight_elements_from_ops(trace) -> int:
    """Weight elements read by the decode step's ops, each named weight counted once.

    Computed only from the ops' own shape fields (in/out features, table rows x dim,
    norm features), independently of the trace's weights table.
    """
    seen: dict[str, int] = {}
    for op in trace.decode.ops:
        a = op.attrs
        if op.op in ("linear", "lm_head"):
            seen[a["weight"]] = a["in_features"] * a["out_features"]
            if a["bias"]:
                seen[a["bias"]] = a["out_features"]
        elif op.op == "embedding":
            seen[a["weight"]] = a["rows"] * a["dim"]
        elif op.op in ("layernorm", "rmsnorm"):
            for key in ("weight", "bias"):
                if a[key]:
                    seen[a[key]] = a["features"]
    return sum(seen.values())


# --- the registry and its bundled traces --------------------------------------------------


def test_registry_holds_the_papers_eight_models_and_four_others():
    assert set(PAPER_MODELS) <= set(REGISTRY)
    assert {"llama-3.2-1b", "qwen2.5-0.5b", "opt-1.3b", "mistral-7b"} <= set(REGISTRY)
    for e in workloads.list_models():
        assert e.source.strip(), e.name
        assert e.paper_model == (e.name in PAPER_MODELS)


# PIM-GPT's model table (docs reference section 3): layers, d_model, heads, context
PAPER_TABLE = {
    "gpt2-small": (12, 768, 12, 1024), "gpt2-medium": (24, 1024, 16, 1024),
    "gpt2-large": (36, 1280, 20, 1024), "gpt2-xl": (48, 1600, 25, 1024),
    "gpt3-small": (12, 768, 12, 2048), "gpt3-medium": (24, 1024, 16, 2048),
    "gpt3-large": (24, 1536, 16, 2048),
    # GPT-3 XL: the table's 24 heads x 128 do not fit d_model 2048; see gpt3-xl.json notes
    "gpt3-xl": (24, 2048, 16, 2048),
}


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_paper_models_match_the_paper_table(name):
    layers, d_model, heads, context = PAPER_TABLE[name]
    c = workloads.get_model(name).config
    assert (c["n_layer"], c["n_embd"], c["n_head"], c["n_positions"]) == (layers, d_model, heads,
                                                                         context)
    assert c["vocab_size"] == 50257 and c["n_inner"] is None  # FFN 4 x d_model
    trace = workloads.load_bundled(name)
    fc = [o for o in trace.decode.layer_ops(0) if o.op == "linear"][2]
    assert (fc["in_features"], fc["out_features"]) == (d_model, 4 * d_model)
    score = next(o for o in trace.decode.ops if o.op == "attn_score")
    assert score["head_dim"] == d_model // heads


@pytest.mark.parametrize("name", REGISTRY)
def test_bundled_trace_is_valid_and_matches_its_registry_config(name):
    entry = workloads.get_model(name)
    trace = workloads.load_bundled(name)
    assert trace.model == name and trace.source == entry.source
    # transformers 5 resolves the config.json: it folds rope_theta/rope_scaling into
    # rope_parameters and clears sliding_window when use_sliding_window is false
    resolved = {"rope_theta", "rope_scaling", "sliding_window"}
    for key, value in entry.config.items():
        if key not in resolved:
            assert trace.config[key] == value, key
    for key in ("rope_theta", "rope_scaling"):
        if key in entry.config:
            rope = trace.config["rope_parameters"]
            expected = entry.config[key] if key == "rope_scaling" else {key: entry.config[key]}
            assert {k: rope[k] for k in expected} == expected
    assert trace.prefill.tokens == 32 and trace.decode.tokens == 1
    assert trace.decode.past == trace.prefill.tokens
    assert not [o for o in trace.decode.ops if o.op == "other"]
    # canonical form: rewriting the loaded data gives the file byte for byte
    assert dumps(trace.raw) == entry.trace_path.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", REGISTRY)
def test_weight_elements_of_the_ops_add_up_to_the_parameters(name):
    trace = workloads.load_bundled(name)
    assert weight_elements_from_ops(trace) == trace.parameters


# Published parameter counts of the public checkpoints (model cards / the HF hub).
PUBLISHED = {"gpt2-small": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080,
             "gpt2-xl": 1_557_611_200, "llama-3.2-1b": 1_235_814_400,
             "qwen2.5-0.5b": 494_032_768, "mistral-7b": 7_241_732_096}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameters_match_the_published_checkpoints(name):
    assert workloads.load_bundled(name).parameters == PUBLISHED[name]


def test_gpt3_parameters_are_near_the_papers_sizes():
    # Brown et al. 2020 Table 2.1: 125M, 350M, 760M, 1.3B (rounded)
    for name, size in (("gpt3-small", 125e6), ("gpt3-medium", 350e6), ("gpt3-large", 760e6),
                       ("gpt3-xl", 1.3e9)):
        assert abs(workloads.load_bundled(name).parameters / size - 1) < 0.02, name


# --- GPT-2 small layer 0, derived by hand -----------------------------------------------


def gpt2_layer_expectation(d_model: int, heads: int, ffn: int, prefix: str):
    """One GPT-2 block at decode (1 token): pre-LN attention and MLP with residuals.

    GPT-2 stores a fused QKV projection (Conv1D, weight in x out), appends this step's
    K and V to the cache, runs attention over the context, projects, adds the residual,
    then LN -> fc (4 d) -> GELU (tanh) -> proj -> residual.
    """
    d_head = d_model // heads
    attn = f"{prefix}.attn"
    mlp = f"{prefix}.mlp"
    return [
        ("layernorm", f"{prefix}.ln_1", dict(features=d_model, weight=f"{prefix}.ln_1.weight",
                                              bias=f"{prefix}.ln_1.bias")),
        ("linear", f"{attn}.c_attn", dict(in_features=d_model, out_features=3 * d_model,
                                         weight=f"{attn}.c_attn.weight",
                                         bias=f"{attn}.c_attn.bias", weight_layout="in_out")),
        ("kv_append", attn, dict(target="k", kv_heads=heads, head_dim=d_head, tokens=1)),
        ("kv_append", attn, dict(target="v", kv_heads=heads, head_dim=d_head, tokens=1)),
        ("attn_score", attn, dict(q_heads=heads, kv_heads=heads, head_dim=d_head, q_len=1,
                                  kv_len=CTX, scale=1 / d_head ** 0.5, window=None)),
        ("softmax", attn, dict(heads=heads, q_len=1, kv_len=CTX)),
        ("attn_context", attn, dict(q_heads=heads, kv_heads=heads, head_dim=d_head, q_len=1,
                                    kv_len=CTX)),
        ("linear", f"{attn}.c_proj", dict(in_features=d_model, out_features=d_model,
                                         bias=f"{attn}.c_proj.bias")),
        ("elementwise", prefix, dict(kind="add", role="residual", features=d_model)),
        ("layernorm", f"{prefix}.ln_2", dict(features=d_model)),
        ("linear", f"{mlp}.c_fc", dict(in_features=d_model, out_features=ffn)),
        ("activation", f"{mlp}.act", dict(kind="gelu_tanh", features=ffn)),
        ("linear", f"{mlp}.c_proj", dict(in_features=ffn, out_features=d_model)),
        ("elementwise", prefix, dict(kind="add", role="residual", features=d_model)),
    ]


def test_gpt2_small_decode_layer0_matches_hand_derivation():
    d_model, heads, ffn = 768, 12, 4 * 768
    expected = gpt2_layer_expectation(d_model, heads, ffn, "transformer.h.0")
    got = workloads.load_bundled("gpt2-small").decode.layer_ops(0)
    assert [(o.op, o.module) for o in got] == [(k, m) for k, m, _ in expected]
    for op, (_, _, fields) in zip(got, expected):
        for key, value in fields.items():
            assert op[key] == value, (op.op, op.module, key)
        assert op.dtype == "bfloat16"
        assert op.get("tokens", 1) == 1


def test_gpt2_small_decode_dataflow():
    ops = workloads.load_bundled("gpt2-small").decode.ops
    first = ops.index(next(o for o in ops if o.layer == 0))
    ln1, qkv, k, v, score, soft, ctx, proj, res1 = ops[first:first + 9]
    assert ln1.deps == (first - 1,)            # the embedding sum (wte + wpe)
    assert ops[first - 1]["role"] == "embedding_sum"
    assert qkv.deps == (ln1.index,) and k.deps == (qkv.index,) and v.deps == (qkv.index,)
    assert score.deps == (qkv.index, k.index)  # q from the fused projection, K from the cache
    assert soft.deps == (score.index,) and ctx.deps == (v.index, soft.index)
    assert res1.deps == (first - 1, proj.index)
    assert ops[-1].op == "lm_head" and ops[-1]["weight"] == "transformer.wte.weight"  # tied


def test_llama_trace_keeps_grouped_kv_heads_rotary_and_gated_mlp():
    c = workloads.get_model("llama-3.2-1b").config
    q_heads, kv_heads, d_head = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    layer = workloads.load_bundled("llama-3.2-1b").decode.layer_ops(3)
    kinds = [o.op for o in layer]
    assert kinds == ["rmsnorm", "linear", "linear", "linear", "rotary", "rotary", "kv_append",
                     "kv_append", "attn_score", "softmax", "attn_context", "linear",
                     "elementwise", "rmsnorm", "linear", "activation", "linear", "elementwise",
                     "linear", "elementwise"]
    q, k, v = layer[1:4]
    assert (q["out_features"], k["out_features"], v["out_features"]) == (
        q_heads * d_head, kv_heads * d_head, kv_heads * d_head)
    rq, rk = layer[4:6]
    assert (rq["target"], rq["heads"], rk["target"], rk["heads"]) == ("q", q_heads, "k", kv_heads)
    assert rq["rotary_dim"] == d_head and rq.deps == (q.index,) and rk.deps == (k.index,)
    for op in layer[6:8]:
        assert op["kv_heads"] == kv_heads       # K/V stored grouped, not expanded
    score = layer[8]
    assert (score["q_heads"], score["kv_heads"], score["head_dim"]) == (q_heads, kv_heads, d_head)
    gate, act, up, mul, down = layer[14:19]
    assert act["kind"] == "silu" and act.deps == (gate.index,)
    assert mul["kind"] == "mul" and mul["role"] == "gate" and mul.deps == (act.index, up.index)
    assert down.deps == (mul.index,) and down["in_features"] == c["intermediate_size"]


def test_mistral_attention_carries_the_sliding_window():
    trace = workloads.load_bundled("mistral-7b")
    windows = {o["window"] for o in trace.decode.ops if o.op == "attn_score"}
    assert windows == {workloads.get_model("mistral-7b").config["sliding_window"]}


def test_prefill_attention_is_causal_and_lm_head_reads_only_the_last_token():
    trace = workloads.load_bundled("gpt2-small")
    scores = [o for o in trace.prefill.ops if o.op == "attn_score"]
    assert all(o["causal"] and o["q_len"] == 32 for o in scores)
    assert trace.prefill.ops[-1].op == "lm_head" and trace.prefill.ops[-1]["tokens"] == 1


# --- summary --------------------------------------------------------------------------------


def test_gpt2_small_decode_flops_and_bytes_follow_the_architecture():
    L, d, h, V, n_pos, ctx = 12, 768, 12, 50257, 1024, 700
    dh = d // h
    summary = workloads.summarize(workloads.load_bundled("gpt2-small"), ctx=ctx)
    dec = summary["decode"]
    matmul = L * (2 * (d * 3 * d + d * d + d * 4 * d + 4 * d * d)   # weights
                  + (3 * d + d + 4 * d + d))                         # biases
    attention = L * 2 * (2 * h * ctx * dh)                           # q.K^T and p.V
    lm_head = 2 * d * V
    assert dec["flops_by_op"]["linear"] == matmul
    assert dec["flops_by_op"]["attn_score"] + dec["flops_by_op"]["attn_context"] == attention
    assert dec["flops_by_op"]["lm_head"] == lm_head
    assert dec["kv_read_bytes"] == L * 2 * h * ctx * dh * 2          # K and V rows, bf16
    assert dec["kv_write_bytes"] == L * 2 * h * dh * 2
    params = summary["parameters"]
    tables = (V + n_pos) * d
    # every weight is read once except the tables, of which one row each (tied lm_head
    # reads the token table in full)
    assert dec["weight_bytes"] == 2 * (params - tables + V * d + 2 * d)
    assert summary["weight_bytes"] == {"bfloat16": 2 * params}


def test_summary_attention_grows_with_context_and_stops_at_the_window():
    trace = workloads.load_bundled("mistral-7b")
    window = 4096
    f = {c: workloads.summarize(trace, ctx=c)["decode"]["flops_by_op"]["attn_score"]
         for c in (1000, 2000, window, 2 * window)}
    assert f[2000] == 2 * f[1000]
    assert f[2 * window] == f[window]


def test_summary_rejects_a_context_shorter_than_the_step():
    with pytest.raises(workloads.TraceError, match="ctx"):
        workloads.summarize(workloads.load_bundled("gpt2-small"), ctx=0)


# --- the loader rejects malformed files, naming the field -----------------------------------


def _raw(name="gpt2-small"):
    return copy.deepcopy(dict(workloads.load_bundled(name).raw))


def _set(path, value):
    def apply(data):
        obj = data
        for key in path[:-1]:
            obj = obj[key]
        if value is _DELETE:
            del obj[path[-1]]
        else:
            obj[path[-1]] = value
    return apply


_DELETE = object()

MALFORMED = [
    (_set(["schema_version"], 99), "schema_version"),
    (_set(["model"], _DELETE), "model: missing field"),
    (_set(["parameters"], 5), "parameters"),
    (_set(["extra"], 1), "extra: unknown field"),
    (_set(["phases", 1, "ops", 4, "in_features"], "768"), "phases[1].ops[4].in_features"),
    (_set(["phases", 1, "ops", 4, "op"], "conv"), "phases[1].ops[4].op"),
    (_set(["phases", 1, "ops", 4, "deps"], [9]), "phases[1].ops[4].deps"),
    (_set(["phases", 1, "ops", 4, "weight"], "nope.weight"), "phases[1].ops[4].weight"),
    (_set(["phases", 1, "ops", 4, "out_features"], 2000), "phases[1].ops[4].weight"),
    (_set(["phases", 1, "ops", 7, "kv_len"], 33), "phases[1].ops[7].kv_len"),
    (_set(["phases", 1, "ops", 7, "colour"], 1), "phases[1].ops[7].colour: unknown field"),
    (_set(["phases", 1, "tokens"], 2), "phases[1].tokens"),
    (_set(["phases", 0, "phase"], "warmup"), "phases"),
    (_set(["config", "n_layer"], 11), "config_hash"),
    (_set(["weights", "lm_head.weight"], {"shape": [1], "dtype": "bfloat16"}), "parameters"),
    # cross-op consistency (decode of gpt2-small, layer 0: ops 5/6 kv_append k/v, 7 attn_score,
    # 8 softmax, 9 attn_context; prefill ops 7 attn_score, 9 attn_context)
    (_set(["phases", 1, "ops", 5, "head_dim"], 32), "phases[1].ops[5].head_dim: expected 64"),
    (_set(["phases", 1, "ops", 6, "kv_heads"], 6), "phases[1].ops[6].kv_heads: expected 12"),
    (_set(["phases", 1, "ops", 9, "head_dim"], 32), "phases[1].ops[9].head_dim: expected 64"),
    (_set(["phases", 1, "ops", 9, "window"], 8), "phases[1].ops[9].window: expected null"),
    (_set(["phases", 1, "ops", 8, "heads"], 24), "phases[1].ops[8].heads: expected 12"),
    (_set(["phases", 1, "ops", 7, "q_len"], 4), "phases[1].ops[7].q_len"),
    (_set(["phases", 1, "ops", 5, "tokens"], 3), "phases[1].ops[5].tokens"),
    (_set(["phases", 1, "ops", 4, "tokens"], 5), "phases[1].ops[4].tokens"),
    (_set(["phases", 0, "ops", 5, "tokens"], 31), "phases[0].ops[5].tokens"),
    (_set(["phases", 1, "ops", 6, "target"], "k"), "one kv_append:k op per layer"),
    (_set(["phases", 1, "ops", 3, "features"], 512), "phases[1].ops[3].weight"),
    (_set(["phases", 1, "ops", 4, "out_features"], 2304 // 2), "phases[1].ops[4].weight"),
    (_set(["phases", 1, "ops", 0, "dim"], 384), "phases[1].ops[0].weight"),
]


def _copy_op(phase, src, dst):
    """Overwrite op ``dst`` with op ``src`` (keeping ``dst``'s deps)."""
    def apply(data):
        ops = data["phases"][phase]["ops"]
        ops[dst] = dict(copy.deepcopy(ops[src]), deps=ops[dst]["deps"])
    return apply


def _head_dim(phase, layer, value):
    """Give every attention op of one layer of one phase another head_dim (consistent
    within the phase)."""
    def apply(data):
        for op in data["phases"][phase]["ops"]:
            if op["layer"] == layer and "head_dim" in op:
                op["head_dim"] = value
    return apply


def _drop_op(phase, index):
    """Turn op ``index`` into an elementwise op (the layer loses that op's kind)."""
    def apply(data):
        op = data["phases"][phase]["ops"][index]
        keep = {k: op[k] for k in ("module", "layer", "deps", "dtype")}
        op.clear()
        op.update(keep, op="elementwise", kind="other", role="other", features=1, tokens=1,
                  operands=1, scalar=False)
    return apply


MALFORMED += [
    (_drop_op(1, 7), "it has no attn_score"),
    (_drop_op(1, 6), "it has no kv_append:v"),
    (_drop_op(0, 9), "it has no attn_context"),
    (_copy_op(1, 8, 9), "phases[1].ops[9].op: expected one softmax op per layer"),
    (_head_dim(0, 0, 32), "phases[1].ops[7].head_dim: expected 32, as in the prefill"),
]


@pytest.mark.parametrize("mutate,field", MALFORMED, ids=[m[1] for m in MALFORMED])
def test_loader_names_the_bad_field(tmp_path, mutate, field):
    data = _raw()
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(workloads.TraceError) as err:
        load_trace(path)
    msg = str(err.value)
    assert msg.startswith(str(path) + ": ") and field in msg and "\n" not in msg


def test_loader_rejects_invalid_json_with_the_line(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('{\n  "schema": "pimsim-trace",\n  oops\n}')
    with pytest.raises(workloads.TraceError, match=r"t\.json: line 3: not valid JSON"):
        load_trace(path)


def test_cli_check_of_a_malformed_trace_exits_2_without_traceback(tmp_path, capsys):
    data = _raw()
    data["phases"][1]["ops"][2]["features"] = -1
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    assert main(["trace", "--check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pimsim: error: ") and "phases[1].ops[2].features" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_cli_check_prints_the_summary(capsys):
    assert main(["trace", "--check", "llama-3.2-1b", "--ctx", "2048", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["parameters"] == PUBLISHED["llama-3.2-1b"] and out["decode"]["ctx"] == 2048


def test_cli_list_names_every_registry_model(capsys):
    assert main(["trace", "--list"]) == 0
    out = capsys.readouterr().out
    for name in REGISTRY:
        assert name in out


def test_cli_trace_needs_out(capsys):
    assert main(["trace", "--model", "gpt2-small"]) == 2
    assert "--out" in capsys.readouterr().err


def test_unknown_registry_model_is_a_clean_error(capsys):
    assert main(["trace", "--model", "gpt5", "--out", "x.json"]) == 2
    assert "gpt5" in capsys.readouterr().err


def test_write_is_canonical_and_atomic(tmp_path):
    data = _raw("qwen2.5-0.5b")
    path = tmp_path / "t.json"
    workloads.write_trace(data, path)
    assert path.read_text() == workloads.get_model("qwen2.5-0.5b").trace_path.read_text()
    data["parameters"] += 1
    with pytest.raises(workloads.TraceError):
        workloads.write_trace(data, tmp_path / "u.json")
    assert not (tmp_path / "u.json").exists() and len(list(tmp_path.iterdir())) == 1


def test_registry_file_errors_name_the_field(tmp_path, monkeypatch):
    from workloads import registry

    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({"name": "m", "family": "x", "paper_model": False,
                               "source": "", "notes": "", "config": {"model_type": "gpt2"}}))
    monkeypatch.setattr(registry, "MODELS_DIR", tmp_path)
    with pytest.raises(workloads.RegistryError, match=r"m\.json: source"):
        registry.get_model("m")


# --- no torch needed -------------------------------------------------------------------------


def test_bundled_traces_and_cli_work_without_torch(tmp_path):
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "sys.modules['transformers'] = None\n"
        "import pimsim, workloads\n"
        "t = workloads.load_bundled('gpt2-small')\n"
        "assert t.parameters > 0 and workloads.summarize(t, ctx=512)['decode']['flops'] > 0\n"
        "from pimsim.cli import main\n"
        "assert main(['trace', '--list']) == 0\n"
        "assert main(['trace', '--check', 'gpt2-small']) == 0\n"
        f"rc = main(['trace', '--model', 'gpt2-small', '--out', r'{tmp_path / 'x.json'}'])\n"
        "assert rc == 2, rc\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "pip install -e '.[models]'" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "x.json").exists()


# --- docs/traces.md examples are executed ---------------------------------------------------

DOC = Path(__file__).resolve().parents[1] / "docs" / "traces.md"


def doc_commands(needs_torch: bool) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.S)
    lines = [ln for b in blocks for ln in b.splitlines() if ln.startswith("pimsim trace ")]
    return [ln for ln in lines if (" --out " in ln) == needs_torch]


@pytest.mark.parametrize("command", doc_commands(needs_torch=False))
def test_docs_example_runs(command, capsys):
    assert main(shlex.split(command)[1:]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip()


def test_docs_python_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, str(DOC), "exec"), {})
    assert "attn_score" in capsys.readouterr().out
