"""Bad input on the command line: one line naming the file, key or value, exit status 2,
no traceback, no output left behind (map, trace, simulate, functional, presets, --out)."""

from __future__ import annotations

import json

import pytest

import workloads
from pimsim.cli import main
from workloads.schema import config_hash

pytestmark = pytest.mark.e2e

JUNK = bytes(range(128, 256)) * 4      # not UTF-8 anywhere


def _fails(argv, capsys, *needles, lines: int = 1) -> str:
    """Run ``pimsim argv``: exit 2, nothing on standard output, an error of ``lines`` lines
    (the last one the error) containing every needle and no traceback; the error line."""
    assert main(argv) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    assert "Traceback" not in cap.err
    err = cap.err.splitlines()
    assert len(err) == lines, cap.err
    assert err[-1].startswith("pimsim: error: ")
    for needle in needles:
        assert needle in err[-1], err[-1]
    return err[-1]


def _gpt2_trace(tmp_path, name="t.json", **config) -> str:
    """The bundled gpt2-small trace with ``config`` keys replaced (hash recomputed)."""
    data = json.loads(workloads.bundled_trace_path("gpt2-small").read_text())
    data["config"].update(config)
    data["config_hash"] = config_hash(data["config"])
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def _need_models():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")


# --------------------------------------------------------------------- files not UTF-8
@pytest.mark.parametrize("argv", [
    ["simulate", "{f}", "--tokens", "1"],
    ["trace", "--check", "{f}"],
    ["map", "{f}"],
], ids=["simulate", "trace-check", "map"])
def test_trace_file_not_utf8(argv, tmp_path, capsys):
    f = tmp_path / "bin.json"
    f.write_bytes(JUNK)
    _fails([a.format(f=f) for a in argv], capsys, f"{f}: not UTF-8 text", "byte 0x80")


def test_hf_config_not_utf8_writes_nothing(tmp_path, capsys):
    f = tmp_path / "junk.yaml"
    f.write_bytes(JUNK)
    out = tmp_path / "x.json"
    _fails(["trace", "--hf-config", str(f), "--out", str(out)], capsys,
           f"{f}: not UTF-8 text")
    assert not out.exists()


def test_registry_file_not_utf8(tmp_path):
    from workloads.registry import RegistryError, _load_entry

    f = tmp_path / "m.json"
    f.write_bytes(JUNK)
    with pytest.raises(RegistryError, match=r"m\.json: not UTF-8 text"):
        _load_entry(f)


# --------------------------------------------------------------------- map --max-context
@pytest.mark.parametrize("value", ["0", "-5"])
def test_map_max_context_not_positive(value, capsys):
    _fails(["map", "gpt2-small", "--max-context", value], capsys,
           "--max-context must be a positive integer", f"got {value}")


def test_map_kv_len_not_positive(capsys):
    _fails(["map", "gpt2-small", "--kv-len", "0"], capsys, "--kv-len must be a positive", "got 0")


def test_map_max_context_beyond_capacity_is_a_capacity_error(capsys):
    huge = "99999999999999999999999"
    _fails(["map", "gpt2-small", "--max-context", huge], capsys,
           "does not fit pim-gpt", f"KV reserve for {huge} positions", "max_context")


def test_map_trace_with_huge_n_positions(tmp_path, capsys):
    f = _gpt2_trace(tmp_path, n_positions=10**30)
    _fails(["map", f], capsys, "does not fit pim-gpt", f"KV reserve for {10**30} positions")


def test_library_max_context_checked():
    import mappings
    from pimsim.config import load_preset

    t = workloads.load_bundled("gpt2-small")
    with pytest.raises(mappings.MappingError, match="max_context must be a positive integer.*got 0"):
        mappings.map(t, load_preset("pim-gpt"), max_context=0)
    with pytest.raises(mappings.CapacityError, match="KV reserve for 10000000000 positions"):
        mappings.map(t, load_preset("pim-gpt"), max_context=10**10)


# --------------------------------------------------------------------- traces: n_positions
@pytest.mark.parametrize("value", [0, -3, "big", 33.5])
@pytest.mark.parametrize("command", [["trace", "--check"], ["simulate"]])
def test_trace_with_bad_n_positions(command, value, tmp_path, capsys):
    f = _gpt2_trace(tmp_path, n_positions=value)
    argv = command + [f] + (["--tokens", "1"] if command == ["simulate"] else [])
    _fails(argv, capsys, f"{f}: config.n_positions", json.dumps(value))


def test_trace_without_a_context_key_still_loads(tmp_path):
    f = _gpt2_trace(tmp_path, n_positions=None, n_ctx=None)
    assert workloads.load_trace(f).config["n_positions"] is None


# --------------------------------------------------------------------- trace --ctx
def test_trace_check_ctx_beyond_the_model(capsys):
    _fails(["trace", "--check", "gpt2-small", "--ctx", "99999999999999999999"], capsys,
           "--ctx 99999999999999999999", "1024 positions", "config.n_positions")


def test_trace_check_ctx_not_positive(capsys):
    _fails(["trace", "--check", "gpt2-small", "--ctx", "0"], capsys,
           "--ctx must be a positive integer", "got 0")


def test_trace_check_ctx_at_the_limit_is_fine(capsys):
    assert main(["trace", "--check", "gpt2-small", "--ctx", "1024"]) == 0
    assert "decode step at ctx 1024" in capsys.readouterr().out


# --------------------------------------------------------------------- trace --hf-config sizes
@pytest.mark.models
@pytest.mark.parametrize("config,needle", [
    ({"model_type": "gpt2", "n_layer": -1}, "n_layer: expected a positive integer, got -1"),
    ({"model_type": "llama", "num_hidden_layers": -2, "hidden_size": 64,
      "num_attention_heads": 2, "vocab_size": 100},
     "num_hidden_layers: expected a positive integer, got -2"),
    ({"model_type": "gpt2", "n_layer": 1, "n_head": 0}, "n_head: expected a positive integer, got 0"),
    ({"model_type": "gpt2", "n_layer": 1, "vocab_size": "abc"},
     "vocab_size: expected a positive integer, got 'abc'"),
], ids=["n_layer", "num_hidden_layers", "n_head", "vocab_size"])
def test_hf_config_sizes_must_be_positive(config, needle, tmp_path, capsys):
    _need_models()
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(config))
    out = tmp_path / "o.json"
    # the progress line "tracing ..." comes first
    _fails(["trace", "--hf-config", str(cfg), "--out", str(out)], capsys, f"{cfg}: {needle}",
           lines=2)
    assert not out.exists()


# --------------------------------------------------------------------- empty --out
@pytest.mark.parametrize("argv,kind", [
    (["simulate", "gpt2-small", "--tokens", "1"], "folder"),
    (["functional", "gpt2-small", "--steps", "1", "--prompt", "1"], "folder"),
    (["trace", "--model", "gpt2-small"], "file"),
    (["replay"], "file"),
    (["validate"], "folder"),
], ids=["simulate", "functional", "trace", "replay", "validate"])
def test_empty_out_is_an_error(argv, kind, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _fails(argv + ["--out", ""], capsys, "--out: empty path", kind)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------- presets --set
def test_presets_set_without_a_name(capsys):
    _fails(["presets", "--set", "foo=1"], capsys, "--set foo=1", "needs a preset NAME")


# --------------------------------------------------------------------- functional
@pytest.mark.models
@pytest.mark.parametrize("seed", ["-1", str(2**64)])
def test_functional_seed_out_of_range(seed, tmp_path, capsys):
    _need_models()
    out = tmp_path / "D"
    _fails(["functional", "gpt2-small", "--seed", seed, "--steps", "1", "--prompt", "1",
            "--out", str(out)], capsys, "seed must be an integer in 0 .. 2**64 - 1", f"got {seed}")
    assert not out.exists()


@pytest.mark.models
def test_functional_checks_the_asic_buffer_like_simulate(tmp_path, capsys):
    _need_models()
    out = tmp_path / "D"
    argv = ["--steps", "1", "--prompt", "1", "--set", "asic.sram_bytes=1", "--out", str(out)]
    sim = _fails(["simulate", "gpt2-small", "--tokens", "1", "--prompt", "1", "--set",
                  "asic.sram_bytes=1"], capsys, "more than asic.sram_bytes = 1 B")
    fun = _fails(["functional", "gpt2-small"] + argv, capsys, "more than asic.sram_bytes = 1 B")
    assert fun == sim
    assert not out.exists()


# --------------------------------------------------------------------- functional: presets
@pytest.mark.parametrize("preset,needle", [
    ("gddr6-14000", "preset gddr6-14000 has no PIM units (no 'pim' section)"),
    ("gddr6-aim", "preset gddr6-aim has no 'asic' section"),
])
@pytest.mark.models
def test_functional_preset_without_pim_or_asic(preset, needle, tmp_path, capsys):
    _need_models()
    out = tmp_path / "D"
    _fails(["functional", "gpt2-small", "--steps", "1", "--prompt", "1", "--preset", preset,
            "--out", str(out)], capsys, needle)
    assert not out.exists()


@pytest.mark.models
def test_functional_preset_without_pim_matches_simulate(capsys):
    _need_models()
    sim = _fails(["simulate", "gpt2-small", "--tokens", "1", "--prompt", "1", "--preset",
                  "gddr6-14000"], capsys, "no PIM units")
    fun = _fails(["functional", "gpt2-small", "--steps", "1", "--prompt", "1", "--preset",
                  "gddr6-14000"], capsys, "no PIM units")
    assert fun == sim


# --------------------------------------------------------------------- trace files: JSON types
def _edited_trace(tmp_path, edit, name="t.json") -> str:
    """The bundled gpt2-small trace after ``edit(data)`` (config hash recomputed)."""
    data = json.loads(workloads.bundled_trace_path("gpt2-small").read_text())
    edit(data)
    data["config_hash"] = config_hash(data["config"])
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def _set_op(phase, index, key, value):
    def edit(data):
        data["phases"][phase]["ops"][index][key] = value
    return edit


WRONG_TYPES = [
    (_set_op(1, 3, "op", ["layernorm"]), 'phases[1].ops[3].op: expected one of embedding',
     'got ["layernorm"]'),
    (_set_op(1, 3, "op", {"a": 1}), "phases[1].ops[3].op: expected one of", 'got {"a": 1}'),
    (_set_op(1, 3, "op", True), "phases[1].ops[3].op: expected one of", "got true"),
    (lambda d: d.update(schema_version=True), "schema_version: expected 1", "got true"),
    (lambda d: d.update(schema_version=1.0), "schema_version: expected 1", "got 1.0"),
    (_set_op(1, 14, "kind", ["gelu_tanh"]), "phases[1].ops[14].kind: expected one of gelu",
     'got ["gelu_tanh"]'),
    (_set_op(1, 5, "target", {"k": 1}), "phases[1].ops[5].target: expected one of k, v",
     'got {"k": 1}'),
    (_set_op(1, 3, "eps", True), "phases[1].ops[3].eps: expected null or a finite number",
     "got true"),
]


WRONG_IDS = ["op-list", "op-object", "op-bool", "version-bool", "version-float", "kind-list",
             "target-object", "eps-bool"]


@pytest.mark.parametrize("edit,where,got", WRONG_TYPES, ids=WRONG_IDS)
@pytest.mark.parametrize("command", [["trace", "--check"], ["simulate"], ["map"]])
def test_trace_field_of_the_wrong_json_type(command, edit, where, got, tmp_path, capsys):
    f = _edited_trace(tmp_path, edit)
    argv = command + [f] + (["--tokens", "1"] if command == ["simulate"] else [])
    _fails(argv, capsys, f"{f}: {where}", got)


@pytest.mark.parametrize("edit,where,got", WRONG_TYPES, ids=WRONG_IDS)
def test_trace_from_dict_wrong_json_type_is_a_trace_error(edit, where, got):
    data = json.loads(workloads.bundled_trace_path("gpt2-small").read_text())
    edit(data)
    data["config_hash"] = config_hash(data["config"])
    with pytest.raises(workloads.TraceError) as exc:
        workloads.trace_from_dict(data, "X")
    assert str(exc.value).startswith(f"X: {where}") and got in str(exc.value)


# --------------------------------------------------------------------- NaN and Infinity
@pytest.mark.parametrize("literal,shown", [("NaN", "NaN"), ("Infinity", "Infinity"),
                                           ("-Infinity", "-Infinity"), ("1e400", "Infinity")])
@pytest.mark.parametrize("edit,where", [
    (lambda d: d["config"].update(x="@@"), "config.x"),
    (_set_op(1, 3, "eps", "@@"), "phases[1].ops[3].eps"),
    (_set_op(1, 7, "scale", "@@"), "phases[1].ops[7].scale"),
], ids=["config", "eps", "scale"])
@pytest.mark.parametrize("command", [["trace", "--check"], ["simulate"]])
def test_trace_with_non_finite_numbers(command, edit, where, literal, shown, tmp_path, capsys):
    f = _edited_trace(tmp_path, edit)
    path = tmp_path / "t.json"
    path.write_text(path.read_text().replace('"@@"', literal))   # (config_hash not reached)
    argv = command + [f] + (["--tokens", "1"] if command == ["simulate"] else [])
    _fails(argv, capsys, f"{f}: {where}: expected a finite number", f"got {shown}")


def test_python_trace_with_nan_is_a_trace_error(tmp_path):
    data = json.loads(workloads.bundled_trace_path("gpt2-small").read_text())
    data["config"]["x"] = float("nan")
    with pytest.raises(workloads.TraceError, match=r"^X: config\.x: expected a finite number"):
        workloads.trace_from_dict(data, "X")
    out = tmp_path / "w.json"
    with pytest.raises(workloads.TraceError, match=r"w\.json: config\.x: .* got NaN"):
        workloads.write_trace(data, out)
    assert not out.exists()
    with pytest.raises(workloads.TraceError, match=r"^config: not JSON data"):
        config_hash({"x": float("inf")})


# --------------------------------------------------------------------- Python API: arguments
@pytest.fixture(scope="module")
def gpt2():
    return workloads.load_bundled("gpt2-small")


@pytest.fixture(scope="module")
def pim_gpt():
    from pimsim.config import load_preset

    return load_preset("pim-gpt")


@pytest.mark.parametrize("args,needle", [
    ((None, "spec"), "trace: expected a workloads.Trace .* got None"),
    (("gpt2-small", "spec"), "trace: expected a workloads.Trace .* got the string 'gpt2-small'"),
    (("trace", None), r"spec: expected a pimsim.config.SystemSpec .* got None"),
    (("trace", "pim-gpt"), r"spec: expected a pimsim.config.SystemSpec .* got the string "
                           r"'pim-gpt'"),
    (("trace", "spec", ["x"]), r"unknown mapping strategy \['x'\] \(known: pim-gpt"),
    (("trace", "spec", None), r"unknown mapping strategy None \(known: pim-gpt"),
])
def test_map_argument_types(args, needle, gpt2, pim_gpt):
    import mappings

    args = [gpt2 if a == "trace" else pim_gpt if a == "spec" else a for a in args]
    with pytest.raises(mappings.MappingError, match=needle):
        mappings.map(*args)


def test_geometry_of_none():
    import mappings

    with pytest.raises(mappings.MappingError, match="spec: expected a pimsim.config.SystemSpec"):
        mappings.geometry(None)


@pytest.fixture(scope="module")
def small_mapping(gpt2, pim_gpt):
    import mappings

    return mappings.map(gpt2, pim_gpt, max_context=4)


@pytest.mark.parametrize("kwargs,needle", [
    ({"kv_len": 2, "token": "a"}, "token must be a token id .* got 'a'"),
    ({"kv_len": 2, "token": None}, "token must be a token id .* got None"),
    ({"kv_len": 2, "token": True}, "token must be a token id .* got True"),
    ({"kv_len": 2, "token": -1}, "token must be a token id .* got -1"),
    ({"kv_len": 2, "token": 50257}, r"token must be a token id in 0 \.\. 50256 .* got 50257"),
    ({"kv_len": True}, "kv_len must be a positive integer, got True"),
    ({"kv_len": "2"}, "kv_len must be a positive integer, got '2'"),
])
def test_program_argument_types(kwargs, needle, small_mapping):
    import mappings

    with pytest.raises(mappings.MappingError, match=f"gpt2-small: {needle}"):
        small_mapping.program(**kwargs)


def test_program_accepts_numpy_integers(small_mapping):
    import numpy as np

    assert small_mapping.program(np.int64(2), token=np.int32(7)).kv_len == 2


@pytest.mark.parametrize("prompt", ["3", True, -1, 2.0])
def test_prefill_argument_type(prompt, small_mapping):
    import mappings

    with pytest.raises(mappings.MappingError,
                       match=f"prompt must be a non-negative number of tokens, got {prompt!r}"):
        small_mapping.prefill(prompt)


@pytest.mark.parametrize("fn", ["load_bundled", "get_model", "bundled_trace_path"])
@pytest.mark.parametrize("name", [None, 5, ["gpt2-small"]])
def test_registry_name_not_a_string(fn, name):
    with pytest.raises(workloads.RegistryError, match=r"model name: expected a string .* got "
                                                       + __import__("re").escape(repr(name))):
        getattr(workloads, fn)(name)


def test_registry_name_empty():
    with pytest.raises(workloads.RegistryError, match="model '': not in the registry"):
        workloads.load_bundled("")


@pytest.mark.parametrize("path,needle", [
    (None, r"trace path: expected a file path \(str or os.PathLike\), got None"),
    (5, r"trace path: expected a file path \(str or os.PathLike\), got 5"),
    (b"t.json", r"trace path: expected a file path .* got b't.json'"),
    ("", r"trace path: empty"),
    ("a\0b.json", r"cannot read trace: .*null"),
])
def test_load_trace_path_argument(path, needle):
    with pytest.raises(workloads.TraceError, match=needle):
        workloads.load_trace(path)


def test_write_trace_empty_path(gpt2):
    with pytest.raises(workloads.TraceError, match="trace path: empty"):
        workloads.write_trace(dict(gpt2.raw), "")


@pytest.mark.parametrize("args,needle", [
    ((None,), r"summarize: expected a workloads.Trace .* got None"),
    (("trace", "5"), r"ctx must be a positive integer .* got '5'"),
    (("trace", True), r"ctx must be a positive integer .* got True"),
    (("trace", 2.5), r"ctx must be a positive integer .* got 2.5"),
])
def test_summarize_argument_types(args, needle, gpt2):
    args = [gpt2 if a == "trace" else a for a in args]
    with pytest.raises(workloads.TraceError, match=needle):
        workloads.summarize(*args)


def test_summarize_accepts_numpy_ctx(gpt2):
    import numpy as np

    assert workloads.summarize(gpt2, np.int64(16))["decode"]["ctx"] == 16


# --------------------------------------------------------------------- functional.run arguments
@pytest.mark.parametrize("kwargs,needle", [
    ({"exact": None}, r"exact must be a list of approximation names .* got None"),
    ({"exact": [["exp"]]}, r"exact must be a list of approximation names .* got \['exp'\] in it"),
    ({"exact": "exp"}, r"exact must be a list of approximation names .* got 'exp'"),
    ({"references": 5}, r"references must be a list of reference names .* got 5"),
    ({"references": "fp32"}, r"references must be a list of reference names .* got 'fp32'"),
    ({"tokens": 5}, r"tokens must be a list of token ids .* got 5"),
    ({"tokens": "ab"}, r"tokens must be a list of token ids .* got 'ab'"),
    ({"tokens": [True, 0]}, r"tokens: expected 2 token ids in 0\.\.50256 .* got \[True, 0\]"),
    ({"steps": True}, r"steps must be a positive number of decode steps, got True"),
    ({"prompt": True}, r"prompt must be a non-negative number of tokens, got True"),
    ({"strategy": ["x"]}, r"unknown mapping strategy \['x'\]"),
    ({"progress": 5}, r"progress must be a callable .* got 5"),
    ({"preset": "gddr6-14000"}, r"preset gddr6-14000 has no PIM units \(no 'pim' section\)"),
    ({"preset": "gddr6-aim"}, r"preset gddr6-aim has no 'asic' section"),
])
def test_functional_run_argument_types(kwargs, needle, monkeypatch):
    from pimsim.errors import PimsimError
    from pimsim.functional import reference, run

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(reference, "load_model", no_model)
    with pytest.raises(PimsimError, match=needle):
        run("gpt2-small", **{"steps": 1, "prompt": 1, **kwargs})
