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
