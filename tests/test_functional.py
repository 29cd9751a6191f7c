"""Functional simulation: exact bank and ASIC arithmetic, whole models against PyTorch."""

from __future__ import annotations

import json

import numpy as np
import pytest

import mappings
import workloads
from pimsim import numerics as nx
from pimsim.config import load_preset
from pimsim.functional import asic as A
from pimsim.functional import pim
from pimsim.functional.model import FunctionalError, FunctionalModel

# --------------------------------------------------------------------------- bank MAC kernels


def _kernels(model="gpt2-small", kv_len=9, over=()):
    m = mappings.map(workloads.load_bundled(model), load_preset("pim-gpt", list(over)),
                     max_context=16)
    return m, [k for k in m.program(kv_len).kernels() if isinstance(k, mappings.MacKernel)]


def _bf16(x):
    return A.values(A.to_bf16(A.bits(np.asarray(x, dtype=np.float32))))


def _run_both(k, mem, inputs, gb):
    fast_gb, gold_gb = gb.copy(), gb.copy()
    fast, fell = pim.execute(k, mem, 0, inputs, fast_gb)
    gold, forced = pim.execute(k, mem, 0, inputs, gold_gb, golden=True)
    assert forced
    return fast, fell, gold, fast_gb, gold_gb


@pytest.mark.parametrize("over", [(), ("pim.result_registers=1",)])
def test_fast_mac_execution_equals_the_golden_functions_bit_for_bit(over):
    """Weights and inputs over a wide exponent range (every product above 2**-100): the
    float32 kernel gives the golden model's bits, read-out by read-out, and leaves the same
    global buffer; with one register and with 64 (continued accumulation)."""
    m, ks = _kernels(over=over)
    rng = np.random.default_rng(3)
    k = next(k for k in ks if k.what == "linear")
    st = k.commands()
    rows = int(st.row.max()) + 1
    g = m.placement.geometry
    scale = 2.0 ** rng.integers(-30, 30, (g.banks, rows, g.columns, g.values_per_column))
    mem = _bf16(rng.standard_normal(scale.shape) * scale)
    w_inp, w_kc = k.gb_writes()
    shape = (k.repeats, int(w_inp.max()) + 1, int(w_kc.max()) + 1, g.values_per_column)
    inputs = _bf16(rng.standard_normal(shape) * 2.0 ** rng.integers(-20, 20, shape))
    gb = _bf16(rng.uniform(-100, 100, (g.gb_slots, g.values_per_column)))
    fast, fell, gold, fgb, ggb = _run_both(k, mem, inputs, gb)
    assert not fell
    assert fast.shape == (k.repeats, g.banks, k.readouts()["slot"].size)
    np.testing.assert_array_equal(fast.view(np.uint32), gold.view(np.uint32))
    np.testing.assert_array_equal(fgb, ggb)
    assert not np.array_equal(fgb, gb)                     # the kernel did load the buffer


def test_tiny_products_make_the_kernel_fall_back_to_the_golden_functions():
    """Products below 2**-126 are flushed by the hardware but not by IEEE float32: the fast
    kernel notices and the golden functions give the result (here: all zeros where IEEE
    would not)."""
    m, ks = _kernels()
    k = next(k for k in ks if k.what == "linear")
    g = m.placement.geometry
    rows = int(k.commands().row.max()) + 1
    mem = np.full((g.banks, rows, g.columns, g.values_per_column), 2.0 ** -70, dtype=np.float32)
    w_inp, w_kc = k.gb_writes()
    inputs = np.full((1, int(w_inp.max()) + 1, int(w_kc.max()) + 1, g.values_per_column),
                     2.0 ** -60, dtype=np.float32)
    gb = np.zeros((g.gb_slots, g.values_per_column), dtype=np.float32)
    vals, fell = pim.execute(k, mem, 0, inputs, gb.copy())
    gold, _ = pim.execute(k, mem, 0, inputs, gb.copy(), golden=True)
    assert fell
    np.testing.assert_array_equal(vals.view(np.uint32), gold.view(np.uint32))
    assert (vals == 0).all()                  # 2**-130 products flush to zero in the banks


def test_a_stream_that_disagrees_with_its_plan_is_refused(monkeypatch):
    _, ks = _kernels()
    k = next(k for k in ks if k.what == "linear")
    monkeypatch.setattr(pim, "_CHECKED", {})
    regs = k.mac_registers()
    monkeypatch.setattr(type(k), "mac_registers", lambda self: regs[:-1])
    with pytest.raises(pim.ExecutionError, match="disagree"):
        pim.execute(k, np.zeros((16, 1, 64, 16), np.float32), 0, np.zeros((1, 1, 48, 16), np.float32),
                    np.zeros((64, 16), np.float32))


@pytest.mark.parametrize("seq,ok", [
    (["TMOD", "WRGB", "TMOD", "ACT16", "MAC16", "PREA", "TMOD", "RDMAC16", "TMOD"], True),
    (["WRGB"], False),                                   # buffer command in bank mode
    (["TMOD", "MAC16", "TMOD"], False),                  # bank command in buffer mode
    (["TMOD", "ACT16", "TMOD"], False),
    (["TMOD", "WRGB"], False),                           # ends in buffer mode
])
def test_commands_in_the_wrong_mode_are_refused(seq, ok):
    from pimsim.standard import CMD_ID

    cmd = np.array([CMD_ID[c] for c in seq])
    if ok:
        pim.check_modes(cmd, "k")
    else:
        with pytest.raises(pim.ExecutionError, match="wrong mode"):
            pim.check_modes(cmd, "k")


# --------------------------------------------------------------------------- ASIC arithmetic

def _patterns(rng, n):
    """FP32 bit patterns: normal values of every magnitude, zeros, subnormals, inf, NaN."""
    b = rng.integers(0, 2 ** 32, n, dtype=np.uint64).astype(np.uint32)
    special = np.array([0, 0x80000000, 1, 0x807FFFFF, 0x00800000, 0x7F800000, 0xFF800000,
                        0x7FC00001, 0x7F7FFFFF, 0x3F800000], dtype=np.uint32)
    return np.concatenate([b, special, A.bits(rng.standard_normal(n))])


def test_asic_add_and_mul_equal_the_golden_primitives_bit_for_bit():
    rng = np.random.default_rng(5)
    a, b = _patterns(rng, 4000), _patterns(rng, 4000)[::-1].copy()
    np.testing.assert_array_equal(A.add(a, b), nx.fp32_add(a, b))
    np.testing.assert_array_equal(A.mul(a, b), nx.fp32_mul(a, b))
    # products just below 2**-126 that IEEE rounds up to it, and sums that cancel into
    # the subnormal range
    x = A.bits(np.float32(2.0 ** -63) * np.float32(1 - 2.0 ** -23))
    y = A.bits(np.float32(2.0 ** -63))
    assert A.mul(x, y) == nx.fp32_mul(x, y)
    p, q = A.bits(np.float32(1.5 * 2.0 ** -126)), A.bits(np.float32(-1.25 * 2.0 ** -126))
    assert A.add(p, q) == nx.fp32_add(p, q) == 0


@pytest.mark.parametrize("name", A.APPROXIMATIONS)
def test_asic_approximations_equal_the_golden_units(name):
    rng = np.random.default_rng(6)
    x = np.concatenate([_patterns(rng, 3000), A.bits(rng.uniform(-30, 30, 3000))])
    golden = {"exp": nx.fp32_exp, "recip": nx.fp32_recip, "rsqrt": nx.fp32_rsqrt,
              "gelu": nx.fp32_gelu}[name]
    np.testing.assert_array_equal(getattr(A.Asic(), name)(x), golden(x))


def test_ordered_partial_sums_follow_arrival_order():
    """The ASIC adds partial sums one by one in arrival order: with values whose sum
    depends on the order, the result is the sequential FP32 sum, fast path and golden."""
    vals = A.bits(np.array([1e8, 1.0, -1e8, 1.0, 3.0, 2.0**-130], dtype=np.float32))
    idx = np.array([0, 0, 0, 1, 1, 1])
    got = A.Asic.ordered_sum(2, idx, vals)
    assert A.values(got)[0] == np.float32(np.float32(1e8) + np.float32(1.0)) - np.float32(1e8)
    assert A.values(got)[0] == 0.0                  # 1e8 + 1 rounds back to 1e8
    assert A.values(got)[1] == 4.0                  # the subnormal flushes (golden path)


def test_exact_functions_replace_only_what_they_name():
    x = A.bits(np.linspace(-6, 6, 101, dtype=np.float32))
    approx, exact = A.Asic(), A.Asic({"gelu"})
    assert not np.array_equal(approx.gelu(x), exact.gelu(x))
    np.testing.assert_array_equal(approx.exp(x), exact.exp(x))
    ref = 0.5 * A.values(x).astype(np.float64) * (1 + np.tanh(np.sqrt(2 / np.pi) * (
        A.values(x) + 0.044715 * A.values(x).astype(np.float64) ** 3)))
    np.testing.assert_array_equal(A.values(exact.gelu(x)), ref.astype(np.float32))
    with pytest.raises(ValueError, match="unknown ASIC approximation"):
        A.Asic({"tanh"})


# --------------------------------------------------------------------------- whole models
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def gpt2():
    from pimsim.functional import reference as R

    net = R.load_model("gpt2-small", 0)
    return net, R.bf16_weights(net)


def _model(weights, n, exact=A.APPROXIMATIONS, model="gpt2-small", rope=None):
    return FunctionalModel(workloads.load_bundled(model), load_preset("pim-gpt"), weights,
                           rope=rope, exact=exact, max_context=n)


@pytest.mark.models
@pytest.mark.parametrize("model", ["gpt2-small", "smollm2-135m"])
def test_functional_logits_equal_the_hardware_emulation_for_32_steps(model):
    """The acceptance run: 32 greedy decode steps after 8 prompt tokens, exact non-linear
    functions. Every step's logits are those of the PyTorch model run with BF16 weights
    and the hardware's arithmetic (well within 1e-3, in fact bit for bit), the top-1 tokens
    agree at every step, and the run stays close to the plain BF16-operand model."""
    from pimsim.functional import APPROXIMATIONS, run

    res = run(model, 32, 8, exact=APPROXIMATIONS, references=("hardware", "bf16-operands"))
    assert res.logits.shape[0] == 32 and len(res.tokens) == 40
    hw = res.metrics("hardware")
    assert max(m["max_rel"] for m in hw) <= 1e-3
    assert all(m["top1"] for m in hw)
    np.testing.assert_array_equal(res.logits.view(np.uint32),
                                  res.references["hardware"].view(np.uint32))
    assert res.meta["golden_fallbacks"] == 0
    # the hardware's BF16 operands against Hugging Face's own order: BF16-rounding noise
    ops = res.summary("bf16-operands")
    assert 0 < ops["max_rel"] < 0.05 and ops["top1"] >= 0.9


@pytest.mark.models
def test_approximations_run_through_the_same_chain(gpt2):
    """With the ASIC's approximations on, the functional run still equals the hardware
    emulation using the same approximations, and differs from the exact-function run."""
    from pimsim.functional.emulation import hardware_logits

    net, w = gpt2
    toks = [464, 3290, 318, 257]
    fm = _model(w, 4, exact=())
    got = np.stack([fm.step(t) for t in toks])
    np.testing.assert_array_equal(got, hardware_logits(net, toks, fm.mapping.trace, fm.mapping, ()))
    fe = _model(w, 4)
    exact = np.stack([fe.step(t) for t in toks])
    assert np.abs(got - exact).max() > 0


def _compare(fm, net, toks):
    from pimsim.functional import step_metrics
    from pimsim.functional.emulation import hardware_logits

    got = np.stack([fm.step(t) for t in toks])
    ref = hardware_logits(net, toks, fm.mapping.trace, fm.mapping, A.APPROXIMATIONS)
    return [step_metrics(got[i], ref[i]) for i in range(len(toks))]


@pytest.mark.models
def test_a_corrupted_tile_fails_the_comparison(gpt2):
    """One 64-column tile of one bank of layer 5's MLP weight gets other values: the
    logits no longer match."""
    net, w = gpt2
    fm = _model(w, 3)
    pl = fm.mapping.placement
    region = pl.by_weight["transformer.h.5.mlp.c_fc.weight"][0]
    part = region.parts[0]
    t = part.template
    seg = int(np.argmax(t.n))                              # the widest segment: a full tile
    bank = int(np.flatnonzero(part.slot_out[:, t.slot[seg]] >= 0)[0])
    arr, _ = fm.f._arr(region, part.channel)
    cols = slice(int(t.c0[seg]), int(t.c0[seg] + t.n[seg]))
    shape = arr[bank, int(t.row[seg]), cols].shape
    arr[bank, int(t.row[seg]), cols] = _bf16(np.random.default_rng(9).standard_normal(shape))
    worst = max(m["max_rel"] for m in _compare(fm, net, [11, 22, 33]))
    assert worst > 1e-3


@pytest.mark.models
def test_a_skipped_partial_sum_fails_the_comparison(gpt2, monkeypatch):
    """The ASIC drops one read-out value of one reduction (layer 2's attention output
    projection): the logits no longer match."""
    net, w = gpt2
    fm = _model(w, 3)
    target = next(op.index for op in fm.trace.decode.ops
                  if op.module == "transformer.h.2.attn.c_proj")
    real = FunctionalModel._reduce

    def skip_one(self, n, idx, parts):
        if self._op_index == target and idx:
            idx, parts = [idx[0][1:]] + idx[1:], [parts[0][1:]] + parts[1:]
        return real(self, n, idx, parts)

    real_op = FunctionalModel._op

    def tag(self, op, *a, **kw):
        self._op_index = op.index
        return real_op(self, op, *a, **kw)

    monkeypatch.setattr(FunctionalModel, "_reduce", skip_one)
    monkeypatch.setattr(FunctionalModel, "_op", tag)
    worst = max(m["max_rel"] for m in _compare(fm, net, [11, 22, 33]))
    assert worst > 1e-3


def test_unsupported_models_and_bad_weights_are_refused():
    opt = workloads.load_bundled("opt-1.3b")
    with pytest.raises(FunctionalError, match="scalar elementwise"):
        FunctionalModel(opt, load_preset("pim-gpt"), {})
    tr = workloads.load_bundled("gpt2-small")
    with pytest.raises(FunctionalError, match="no values for weight"):
        FunctionalModel(tr, load_preset("pim-gpt"), {})
    w = {k: np.zeros(v["shape"], np.float32) for k, v in tr.weights.items()}
    w["transformer.h.0.ln_1.weight"] = np.zeros(5, np.float32)
    with pytest.raises(FunctionalError, match=r"ln_1.weight: shape \[5\]"):
        FunctionalModel(tr, load_preset("pim-gpt"), w)
    llama = workloads.load_bundled("smollm2-135m")
    with pytest.raises(FunctionalError, match="rotary"):
        FunctionalModel(llama, load_preset("pim-gpt"), {})


@pytest.mark.models
def test_two_runs_give_identical_results_json():
    from pimsim.functional import run

    a = run("gpt2-small", 2, 1, references=("fp32",))
    b = run("gpt2-small", 2, 1, references=("fp32",))
    assert a.to_json() == b.to_json()
    d = json.loads(a.to_json())
    assert d["trace_hash"].startswith("sha256:") and d["pimsim_version"] and d["spec_digest"]
    assert len(d["steps"]) == 2 and d["tokens"][1] == int(np.argmax(a.logits[0]))


# --------------------------------------------------------------------------- command line
@pytest.mark.e2e
@pytest.mark.models
def test_cli_writes_results_and_prints_the_comparison(tmp_path, capsys):
    from pimsim.cli import main

    out = tmp_path / "f"
    assert main(["functional", "gpt2-small", "--steps", "2", "--prompt", "1", "--exact", "gelu",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "hardware" in text and "ASIC approximations  exp, recip, rsqrt" in text
    assert sorted(p.name for p in out.iterdir()) == ["error.png", "functional.json", "steps.csv"]
    d = json.loads((out / "functional.json").read_text())
    assert d["exact_functions"] == ["gelu"] and d["summary"]["hardware"]["max_rel"] == 0
    assert d["summary"]["fp32"]["max_rel"] > 0
    assert len((out / "steps.csv").read_text().splitlines()) == 3


@pytest.mark.e2e
@pytest.mark.parametrize("argv,pattern", [
    (["functional", "gpt2-small", "--steps", "0"], "steps must be a positive"),
    (["functional", "gpt2-small", "--prompt", "-1"], "prompt must be a non-negative"),
    (["functional", "no-such-model"], "needs a registry model"),
    (["functional", "gpt2-small", "--exact", "tanh"], "unknown approximation"),
    (["functional", "gpt2-small", "--prompt", "1000", "--steps", "100"], "the model has 1024"),
    (["functional", "opt-1.3b", "--steps", "1"], "scalar elementwise"),
])
def test_cli_bad_input_exits_2_and_writes_nothing(argv, pattern, tmp_path, capsys):
    from pimsim.cli import main

    pytest.importorskip("transformers")
    out = tmp_path / "never"
    assert main(argv + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert pattern in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()
