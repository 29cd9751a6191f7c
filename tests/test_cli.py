"""The command line: replay output, the built-in example, and bad input (exit 2, one line,
no traceback, no partial output)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pytest

from pimsim.cli import main
from pimsim.config import load_preset

pytestmark = pytest.mark.e2e


def _pim(refdata):
    return refdata / "pim", next((refdata / "pim").glob("*.timing.yaml"))


def test_replay_prints_expected_format(refdata, capsysbinary):
    d, timing = _pim(refdata)
    assert main(["replay", str(d / "gemv_tile_ch0.cmds"), "--timing", str(timing), "--check"]) == 0
    out = capsysbinary.readouterr()
    expected = b"".join(l for l in (d / "gemv_tile_ch0.expected").read_bytes().splitlines(True)
                        if not l.startswith(b"#"))
    assert out.out == expected
    assert b"no violation in 595 commands" in out.err


def test_replay_gzip_and_out_file(refdata, tmp_path, capsys):
    d, timing = _pim(refdata)
    gz = tmp_path / "case.cmds.gz"
    gz.write_bytes(gzip.compress((d / "mac_abk_8rows_ch0.cmds").read_bytes()))
    out = tmp_path / "sub" / "log.txt"
    assert main(["replay", str(gz), "--timing", str(timing), "--out", str(out)]) == 0
    lines = [l for l in (d / "mac_abk_8rows_ch0.expected").read_text().splitlines() if not l.startswith("#")]
    assert out.read_text().splitlines() == lines
    assert list(out.parent.iterdir()) == [out]


def test_replay_with_refresh_on_a_preset(refdata, tmp_path, capsys):
    d, _ = _pim(refdata)
    assert main(["replay", str(d / "mac_abk_8rows_ch0.cmds"), "--preset", "pim-gpt",
                 "--set", "timing.nREFI=600", "--refresh", "ab", "--check", "--summary"]) == 0
    out = capsys.readouterr().out
    assert "refresh ab" in out and "REFab" in out and "no violation" in out


def test_builtin_example_runs_and_checks(capsys):
    assert main(["replay"]) == 0
    out = capsys.readouterr().out
    assert "pim-gpt" in out and "no violation" in out and "REFab" in out


def _bad(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("text,pattern", [
    ("ACT 0 0 1 -1\nRD 0 0 1\n", r"bad.cmds:2: expected 5 fields"),
    ("ACT 0 0 1 -1\nFOO 0 0 1 2\n", r"bad.cmds:2: unknown command 'FOO'"),
    ("# header\nACT 0 9 1 -1\n", r"bad.cmds:2: ACT: bank 9 out of range 0..3"),
    ("ACT 7 0 1 -1\n", r"bad.cmds:1: ACT: bank group 7 out of range 0..3"),
    ("ACT 0 0 16384 -1\n", r"bad.cmds:1: ACT: row 16384 out of range 0..16383"),
    ("ACT 0 0 1 -1\nRD 0 0 1 64\n", r"bad.cmds:2: RD: column 64 out of range 0..63"),
    ("ACT 0 0 x -1\n", r"bad.cmds:1: expected integers"),
    ("PREA 0 0 -1 -1\n", r"bad.cmds:1: PREA: acts on all banks, so bg and ba must be -1"),
    ("ACT  0 0 1 -1\n", r"bad.cmds:1: expected 5 fields"),
])
def test_bad_command_files(tmp_path, capsys, text, pattern, refdata):
    import re
    _, timing = _pim(refdata)
    out = tmp_path / "out.txt"
    code = main(["replay", str(_bad(tmp_path, "bad.cmds", text)), "--timing", str(timing),
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert re.search(pattern, err), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_dram_timing_rejects_pim_commands(tmp_path, capsys, refdata):
    timing = next((refdata / "dram").glob("*.timing.yaml"))
    code = main(["replay", str(_bad(tmp_path, "p.cmds", "ACT16 -1 -1 0 -1\n")), "--timing", str(timing)])
    assert code == 2
    assert "p.cmds:1: ACT16: command not in the standard" in capsys.readouterr().err


@pytest.mark.parametrize("argv,pattern", [
    (["replay", "--preset", "pim-gpt", "--set", "timing.nRP=-1"], "--set timing.nRP=-1: must be a non-negative integer"),
    (["replay", "--preset", "nope"], "unknown preset 'nope'"),
    (["replay", "missing.cmds"], "missing.cmds: cannot read"),
    (["presets", "pim-gpt", "--set", "organization.colour=3"], "--set organization.colour=3: unknown key"),
])
def test_bad_arguments(capsys, argv, pattern):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert pattern in err and err.count("\n") == 1


def test_bad_yaml_through_the_real_process(tmp_path):
    """The installed entry point: exit status 2, one line on stderr, no traceback."""
    bad = _bad(tmp_path, "bad.yaml", "preset: x\norganization: [1,\n")
    proc = subprocess.run([sys.executable, "-m", "pimsim", "replay", "--preset", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"pimsim: error: {bad}: malformed YAML at line")
    assert proc.stderr.count("\n") == 1 and proc.stdout == ""


def test_check_command_finds_violations_and_exits_1(refdata, capsys):
    """The reference log is legal under its own timing, not under a slower nRP."""
    d, timing = _pim(refdata)
    log = str(d / "mac_abk_8rows_ch0.expected")
    assert main(["check", log, "--timing", str(timing)]) == 0
    assert "no violation in 527 commands" in capsys.readouterr().out
    assert main(["check", log, "--preset", "gddr6-aim", "--set", "timing.nRP=40"]) == 1
    out = capsys.readouterr()
    lines = out.out.splitlines()
    # 7 row changes, each breaking the two rules that carry nRP (PRE/PREA -> ACT16 and
    # PREA -> ACT/ACT16): ACT16 32 cycles after PREA where 40 are needed
    assert len(lines) == 14
    assert len({l.split(":")[1] for l in lines}) == 7
    assert all("ACT16" in l and "PREA" in l and "nRP needs 40" in l and " is 32 cycles after" in l
               for l in lines)
    assert lines[0].startswith(f"{log}:")
    assert "14 violation(s)" in out.err


def test_presets_listing_and_show(capsys):
    assert main(["presets"]) == 0
    assert "pim-gpt" in capsys.readouterr().out
    assert main(["presets", "pim-gpt"]) == 0
    out = capsys.readouterr().out
    assert "timing.nRCDRDMAC" in out and "AiM" in out and "timing.nMAC" in out
    # every sourced value is shown, with its value and its source
    spec = load_preset("pim-gpt")
    shown = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    for key, source in spec.sources.items():
        sec, name = key.split(".", 1)
        part = spec.dram.timing if sec == "timing" else spec.to_dict().get(sec, {})
        assert key in shown and source[:40] in shown[key], key
        if sec in ("asic", "link", "pim", "timing"):
            assert shown[key].split()[1] == str(part[name]).lower(), key
    assert main(["presets", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["pim-gpt"]["digest"] == load_preset("pim-gpt").digest
    assert set(listed) >= {"pim-gpt", "gddr6-aim", "gddr6-14000"}


@pytest.mark.parametrize("argv,folder", [
    (["simulate", "gpt2-small", "--tokens", "1"], True),
    (["functional", "gpt2-small", "--steps", "1"], True),
    (["validate", "--quick"], True),
    (["sweep", "sweep.yaml"], True),
    (["replay"], False),
    (["trace", "--model", "gpt2-small"], False),
])
def test_an_unwritable_out_fails_before_any_work(tmp_path, capsys, argv, folder):
    """--out under a regular file: exit 2 with one line naming it, from the check made
    before the run (its message starts with the option), and nothing written."""
    blocker = tmp_path / "afile"
    blocker.write_text("keep\n")
    out = blocker / ("dir" if folder else "out.txt")
    assert main(argv + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"pimsim: error: --out {out}: {blocker} is not a folder\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
    assert blocker.read_text() == "keep\n"


def test_replay_out_that_is_a_folder(tmp_path, capsys):
    assert main(["replay", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"pimsim: error: --out {tmp_path}: is a folder, not a file\n"
    assert list(tmp_path.iterdir()) == []


def test_output_files_are_written_all_or_none(tmp_path, capsys):
    """A clash found when the files are written (a folder where steps.csv goes) leaves
    none of them, and no temporary file, in the output folder."""
    out = tmp_path / "o"
    (out / "steps.csv").mkdir(parents=True)
    assert main(["simulate", "gpt2-small", "--prompt", "8", "--tokens", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"pimsim: error: {out / 'steps.csv'}: is a folder, not a file\n"
    assert [p.name for p in out.iterdir()] == ["steps.csv"]


def test_write_all_leaves_nothing_when_a_write_fails(tmp_path):
    from pimsim.errors import OutputError
    from pimsim.io import write_all

    out = tmp_path / "new" / "folder"
    with pytest.raises(TypeError):
        write_all(out, {"a.json": b"{}", "b.csv": 3})      # the second file cannot be written
    assert list(tmp_path.iterdir()) == []             # the folders it made are gone too
    with pytest.raises(TypeError):
        write_all(out, {"figures/a.png": b"", "figures/deeper/b.png": None})
    assert list(tmp_path.iterdir()) == []
    write_all(out, {"a.json": b"{}", "b.csv": b"x\n", "figures/c.png": b"png"})
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "b.csv", "figures"]
    assert (out / "figures" / "c.png").read_bytes() == b"png"
    with pytest.raises(OutputError, match="is not a folder"):
        write_all(out / "a.json" / "x", {"c": b""})
