"""Presets, overrides and timing files: valid ones load; bad ones name file, key and value."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from pimsim.config import (
    load_preset, load_timing_file, preset_leaf_keys, preset_names, preset_path, recognised_quirks,
)
from pimsim.errors import ConfigError

pytestmark = pytest.mark.unit


def test_bundled_presets_load_and_every_value_has_a_source():
    assert {"pim-gpt", "gddr6-aim", "gddr6-14000"} <= set(preset_names())
    for name in preset_names():
        spec = load_preset(name)
        keys = preset_leaf_keys(name)
        missing = [k for k in keys if k not in ("standard",) and not spec.sources.get(k)]
        assert not missing, f"{name}: no source for {missing}"
        extra = set(spec.sources) - set(keys)
        assert not extra, f"{name}: sources for keys the preset lacks: {extra}"


def test_pim_gpt_defaults():
    spec = load_preset("pim-gpt")
    d = spec.dram
    assert (d.channels, d.banks, d.row_bytes, d.column_bytes) == (8, 16, 2048, 32)
    assert d.tCK_ps == 500 and spec.clock.data_rate_Gbps == 16 and spec.pim.clock_MHz == 1000
    assert d.refresh_policy == "ab"
    # refresh values are the GDDR6-14000 times (570 ps cycles) re-expressed in 500 ps cycles
    ref = load_preset("gddr6-14000").dram
    for key in ("nRFCab", "nRFCpb", "nRREFD"):
        assert d.timing[key] * 500 >= ref.timing[key] * 570 > (d.timing[key] - 1) * 500
    assert d.timing["nREFI"] * 500 <= ref.timing["nREFI"] * 570 < (d.timing["nREFI"] + 1) * 500
    # MAC16 every 2 cycles of 500 ps = one 1 GHz PIM cycle
    assert d.timing["nMAC"] * d.tCK_ps == 10**6 // int(spec.pim.clock_MHz)


def test_refresh_postponing_keys():
    d = load_preset("pim-gpt").dram
    assert (d.refresh_postpone, d.refresh_pull_in) == (8, 8)
    assert load_preset("pim-gpt", ["refresh.postpone=0", "refresh.pull_in=0"]).dram.refresh_postpone == 0
    # they count only under all-bank refresh
    off = load_preset("pim-gpt", ["refresh.policy=off"]).dram
    assert (off.refresh_postpone, off.refresh_pull_in) == (0, 0)
    assert d.with_refresh("pb").refresh_postpone == 0 and d.with_refresh("ab").refresh_pull_in == 8
    with pytest.raises(ConfigError, match=r"refresh.pull_in: pulling refreshes in needs "
                                          r"refresh.postpone > 0.*pull_in=8 with postpone=0"):
        load_preset("pim-gpt", ["refresh.postpone=0"])


def test_digest_is_stable_and_tracks_values():
    a, b = load_preset("pim-gpt"), load_preset("pim-gpt")
    assert a.digest == b.digest
    assert load_preset("pim-gpt", ["timing.nRP=33"]).digest != a.digest


def test_override_goes_through_validation():
    assert load_preset("pim-gpt", ["timing.nRP=30"]).dram.timing["nRP"] == 30
    assert load_preset("pim-gpt", ["refresh.policy=off"]).dram.refresh_policy == "off"
    assert load_preset("pim-gpt", ["organization.channels=16"]).dram.channels == 16


def test_overrides_as_a_mapping_read_as_the_same_texts():
    """From Python, ``{key: value}`` gives the spec that the ``KEY=VALUE`` texts give."""
    texts = ["timing.nRP=30", "refresh.policy=off", "asic.clock_MHz=500.0", "pim.gb_reuse=false",
             "organization.channels=16"]
    mapped = {"timing.nRP": 30, "refresh.policy": "off", "asic.clock_MHz": 500.0,
              "pim.gb_reuse": False, "organization.channels": 16}
    a, b = load_preset("pim-gpt", texts), load_preset("pim-gpt", mapped)
    assert a.digest == b.digest != load_preset("pim-gpt").digest
    assert b.dram.timing["nRP"] == 30 and b.dram.channels == 16 and b.asic.clock_MHz == 500.0
    with pytest.raises(ConfigError, match=r"--set timing.nRP=-3: must be a non-negative integer"):
        load_preset("pim-gpt", {"timing.nRP": -3})
    # numpy scalars are their Python values; None is no overrides
    numpy_mapped = {k: (np.float64(v) if isinstance(v, float) else np.bool_(v) if isinstance(v, bool)
                        else np.int64(v) if isinstance(v, int) else v) for k, v in mapped.items()}
    assert load_preset("pim-gpt", numpy_mapped).digest == a.digest
    assert load_preset("pim-gpt", None).digest == load_preset("pim-gpt").digest


@pytest.mark.parametrize("overrides,pattern", [
    ("timing.nRP=30", r"overrides: expected a list of KEY=VALUE texts or a mapping, got the "
                      r"single text 'timing.nRP=30'"),
    ([30], r"overrides: expected KEY=VALUE texts, got 30"),
    ({"timing.nRP": [30]}, r"overrides: timing.nRP: value must be a scalar, got \[30\]"),
    ({"timing.nRP": object()}, r"overrides: timing.nRP: value must be a scalar, got <object"),
    (5, r"overrides: expected a list of KEY=VALUE texts or a mapping, got 5"),
])
def test_overrides_of_the_wrong_shape(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_preset("pim-gpt", overrides)


@pytest.mark.parametrize("override,pattern", [
    ("timing.nRP=-3", r"--set timing.nRP=-3: must be a non-negative integer \(cycles\), got -3"),
    ("timing.nRP=3.5", r"--set timing.nRP=3.5: .*got 3.5"),
    ("timing.nXYZ=3", r"--set timing.nXYZ=3: unknown timing parameter"),
    ("timing.nMAC=3", r"--set timing.nMAC=3: is derived"),
    ("organization.channels=0", r"--set organization.channels=0: must be positive.*got 0"),
    ("organization.banks=4", r"--set organization.banks=4: unknown key"),
    ("clock.tCK_ps=0.5ns", r"--set clock.tCK_ps=0.5ns: must be an integer \(ps\), got '0.5ns'"),
    ("pim.mac_lanes=3", r"--set pim.mac_lanes=3: 3 lanes do not divide the 16 BF16 values"),
    ("organization.row_bytes=4096", r"--set organization.row_bytes=4096: 4096 is not columns x column_bytes"),
    ("refresh.policy=sometimes", r"--set refresh.policy=sometimes: must be one of off, ab, pb"),
    ("timing.nREFI=100", r"refresh.*nRFCab.*must be shorter than nREFI \(100\)"),
    ("nRP", r"--set nRP: expected KEY=VALUE"),
    ("timing..nRP=3", r"malformed key"),
    ("standard=ddr9", r"unknown standard 'ddr9'"),
    ("pim.result_registers=0", r"--set pim.result_registers=0: must be positive, got 0"),
    ("pim.result_registers=2.5", r"--set pim.result_registers=2.5: must be an integer, got 2.5"),
    ("pim.gb_reuse=1", r"--set pim.gb_reuse=1: must be true or false, got 1"),
    ("pim.gb_reuse=maybe", r"--set pim.gb_reuse=maybe: must be true or false, got 'maybe'"),
    ("refresh.postpone=-1", r"--set refresh.postpone=-1: .*got -1"),
    ("refresh.pull_in=two", r"--set refresh.pull_in=two: must be an integer, got 'two'"),
    # YAML 1.1 forms that would silently become another number stay text
    ("timing.nRP=1:30", r"--set timing.nRP=1:30: must be a non-negative integer \(cycles\), got '1:30'"),
    ("timing.nRP=0x1F", r"--set timing.nRP=0x1F: .*got '0x1F'"),
    # values no 64-bit simulation can hold, and clocks too slow to mean anything
    ("timing.nRP=4611686018427387904", r"--set timing.nRP=4611686018427387904: must be at most 2,147,483,647"),
    ("organization.channels=100000000000000000000000", r"organization.channels=.*: must be at most 1,024"),
    ("organization.channels=1025", r"--set organization.channels=1025: must be at most 1,024, got 1025"),
    ("organization.rows=2147483648", r"--set organization.rows=2147483648: must be at most 2,147,483,647"),
    ("link.latency_ps=100000000000000000000", r"link.latency_ps=.*: must be at most 2,147,483,647 \(ps\)"),
    ("asic.clock_MHz=0.000001", r"--set asic.clock_MHz=0.000001: must be >= 1 \(MHz\), got 1e-06"),
    ("pim.clock_MHz=0.5", r"--set pim.clock_MHz=0.5: must be >= 1 \(MHz\)"),
    # pipelines and iteration counts past any design (each op would idle the channels for
    # seconds of simulated time)
    ("asic.add_latency=1001", r"--set asic.add_latency=1001: must be at most 1,000 \(cycles\), got 1001"),
    ("asic.recip_iterations=65", r"--set asic.recip_iterations=65: must be at most 64, got 65"),
    ("sources.timing.nRP=x", r"--set sources.timing.nRP=x: sources describes a preset file"),
])
def test_bad_overrides(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_preset("pim-gpt", [override])


def test_override_numbers_read_as_decimals():
    over = load_preset("pim-gpt", ["pim.clock_MHz=1e3", "asic.clock_MHz=2.5e2", "timing.nRP=010"])
    assert (over.pim.clock_MHz, over.asic.clock_MHz, over.dram.timing["nRP"]) == (1000.0, 250.0, 10)


def test_result_registers_and_buffer_reuse_keys(tmp_path):
    pim = load_preset("pim-gpt").pim
    assert (pim.result_registers, pim.gb_reuse) == (64, True)
    aim = load_preset("gddr6-aim").pim
    assert (aim.result_registers, aim.gb_reuse) == (1, False)
    over = load_preset("pim-gpt", ["pim.result_registers=7", "pim.gb_reuse=false"]).pim
    assert (over.result_registers, over.gb_reuse) == (7, False)
    # optional: a preset written without them loads with one register and no reuse
    old = load_preset(_write_preset(tmp_path, lambda d: [d["pim"].pop(k) for k in
                                                         ("result_registers", "gb_reuse")]))
    assert (old.pim.result_registers, old.pim.gb_reuse) == (1, False)
    assert old.digest != load_preset("pim-gpt").digest


def _write_preset(tmp_path, mutate):
    doc = yaml.safe_load(preset_path("pim-gpt")[0].read_text())
    mutate(doc)
    p = tmp_path / "my.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


@pytest.mark.parametrize("mutate,pattern", [
    (lambda d: d["timing"].pop("nRCDRDMAC"), r"my.yaml: timing.nRCDRDMAC: missing"),
    (lambda d: d.pop("pim"), r"my.yaml: pim: missing section"),
    (lambda d: d["organization"].pop("rows"), r"my.yaml: organization.rows: missing key"),
    (lambda d: d.update(colour="blue"), r"my.yaml: colour: unknown key"),
    (lambda d: d["pim"].update(global_buffer_bytes=100), r"my.yaml: pim.global_buffer_bytes: 100 is not a multiple"),
    (lambda d: d["pim"].update(global_buffer_bytes=4096),
     r"my.yaml: pim.global_buffer_bytes: 4096 B is more than one row \(2048 B\)"),
    (lambda d: d["clock"].update(data_rate_Gbps=True), r"my.yaml: clock.data_rate_Gbps: must be a number"),
    (lambda d: d["sources"].update({"timing.nXX": "a datasheet"}), r"my.yaml: sources.timing.nXX: names no preset key"),
    (lambda d: d["sources"].update({"timing.nRP": ""}), r"my.yaml: sources.timing.nRP: must be a text naming"),
])
def test_bad_preset_files(tmp_path, mutate, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_preset(_write_preset(tmp_path, mutate))


def test_malformed_yaml_names_file_and_line(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("preset: x\ntiming:\n  nRP: [1,\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: malformed YAML at line \d+"):
        load_preset(p)


def test_preset_files_with_a_key_twice_or_not_utf8(tmp_path):
    text = preset_path("pim-gpt")[0].read_text()
    p = tmp_path / "twice.yaml"
    p.write_text(text.replace("  nRP: 32\n", "  nRP: 32\n  nRP: 33\n", 1))
    line = text.splitlines().index("  nRP: 32") + 1
    with pytest.raises(ConfigError, match=rf"twice.yaml: malformed YAML at line {line + 1}: "
                                          rf"key 'nRP' given twice \(first at line {line}\)"):
        load_preset(p)
    p = tmp_path / "latin1.yaml"
    p.write_bytes(text.replace("pimsim's", "pimsim\xe9s", 1).encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml: not UTF-8 text \(byte 0xe9 at offset \d+\)"):
        load_preset(p)


def test_unknown_preset_name():
    with pytest.raises(ConfigError, match=r"unknown preset 'nope' \(bundled: .*pim-gpt"):
        load_preset("nope")


def test_timing_file_errors(tmp_path, refdata):
    src = next((refdata / "dram").glob("*.timing.yaml")).read_text()

    def write(text):
        p = tmp_path / "t.timing.yaml"
        p.write_text(text)
        return p

    with pytest.raises(ConfigError, match=r"t.timing.yaml: constraints\[0\].cycles: 3 disagrees with its formula"):
        load_timing_file(write(src.replace("cycles: 2, formula: \"max(nBL, nCCDS)\"", "cycles: 3, formula: \"max(nBL, nCCDS)\"", 1)))
    with pytest.raises(ConfigError, match=r"t.timing.yaml: constraints\[0\].from: unknown command 'RDX'"):
        load_timing_file(write(src.replace("{from: [RD]", "{from: [RDX]", 1)))
    with pytest.raises(ConfigError, match=r"t.timing.yaml: timing.nFOO: unknown timing parameter"):
        load_timing_file(write(src.replace("  nBL:    2", "  nFOO:    2", 1)))
    with pytest.raises(ConfigError, match=r"t.timing.yaml: constraints\[0\].scope: must be one of"):
        load_timing_file(write(src.replace("scope: channel", "scope: rank", 1)))
    with pytest.raises(ConfigError, match=r"no such timing file"):
        load_timing_file(tmp_path / "missing.timing.yaml")
    # every formula is checked: one that does not evaluate is an error, not prose
    for formula, why in [("max(nBL, nCCDS) +", "malformed latency expression"),
                         ("nBL // 0", "division or modulo by zero"),
                         ("max(nBL, nCCDX)", "uses undefined parameter\\(s\\) nCCDX")]:
        with pytest.raises(ConfigError, match=r"t.timing.yaml: constraints\[0\].formula: .* cannot be "
                                              r"evaluated against the file's timing: .*" + why):
            load_timing_file(write(src.replace('formula: "max(nBL, nCCDS)"', f'formula: "{formula}"', 1)))
    # a timing value the formulas use cannot go missing
    with pytest.raises(ConfigError, match=r"constraints\[\d+\].formula: .*undefined parameter\(s\) nRP"):
        load_timing_file(write(src.replace("\n  nRP:", "\n  # nRP:", 1)))
    spec = load_timing_file(write(src))
    no_rfc = load_timing_file(write(src.replace("\n  nRFCab:", "\n  # nRFCab:", 1)
                                    .replace('formula: "nRFCab"', 'formula: ""')))
    assert "nRFCab" in spec.timing and "nRFCab" not in no_rfc.timing
    with pytest.raises(ConfigError, match=r"timing.nRFCab: refresh policy 'ab' needs it"):
        no_rfc.with_refresh("ab")


def test_timing_file_quirks_change_behaviour(refdata):
    pim = load_timing_file(next((refdata / "pim").glob("*.timing.yaml")))
    dram = load_timing_file(next((refdata / "dram").glob("*.timing.yaml")))
    assert pim.tmod_lookahead and not dram.tmod_lookahead
    assert not any(c.window for c in pim.constraints)        # "no four-activate window"
    assert any(c.window for c in dram.constraints)
    assert {"tmod_lookahead", "no_faw", "refresh_off"} <= recognised_quirks(pim.quirks)
    assert "refresh_ab" in recognised_quirks(dram.quirks)
