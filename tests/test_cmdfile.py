"""Command-file parsing and formatting."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from pimsim.engine.cmdfile import format_log, parse_commands, read_commands
from pimsim.errors import TraceFormatError
from pimsim.standard import CMD_ID

pytestmark = pytest.mark.unit


def test_parse_all_commands_comments_blank_lines_and_crlf():
    text = (b"# header line\r\n\r\nACT 1 2 300 -1\r\nRD 1 2 300 63\nWR 3 3 0 0\nPRE 0 1 -1 -1\n"
            b"PREA -1 -1 -1 -1\nREFab -1 -1 -1 -1\nREFpb 2 0 -1 -1\nACT16 -1 -1 16383 -1\n"
            b"MAC16 -1 -1 16383 5\nWRGB -1 -1 -1 7\nRDMAC16 -1 -1 -1 -1\nTMOD -1 -1 -1 -1")
    s = parse_commands(text, "t.cmds")
    assert [r[0] for r in s.records()] == ["ACT", "RD", "WR", "PRE", "PREA", "REFab", "REFpb",
                                           "ACT16", "MAC16", "WRGB", "RDMAC16", "TMOD"]
    assert s.records()[1] == ("RD", 1, 2, 300, 63)
    assert list(s.line[:3]) == [3, 4, 5]
    assert s.cmd.dtype == np.int64


def test_expected_files_carry_cycles_and_first_cycle(refdata):
    e = read_commands(refdata / "dram" / "stream_linear.expected")
    assert e.first_cycle == 1 and e.cycle[0] == 0 and e.cycle[-1] > e.cycle[0]
    c = read_commands(refdata / "dram" / "stream_linear.cmds")
    assert c.cycle is None and np.array_equal(c.cmd, e.cmd)


def test_gzip_roundtrip_and_format(tmp_path, refdata):
    src = (refdata / "pim" / "gemv_tile_ch0.expected").read_bytes()
    gz = tmp_path / "x.expected.gz"
    gz.write_bytes(gzip.compress(src))
    e = read_commands(gz)
    body = b"".join(l for l in src.splitlines(True) if not l.startswith(b"#"))
    assert format_log(e.cycle, e) == body


def test_format_negative_and_large_numbers():
    s = parse_commands(b"ACT 3 3 16383 -1\n", "t")
    assert format_log(np.array([12345678901]), s) == b"12345678901 ACT 3 3 16383 -1\n"


@pytest.mark.parametrize("text,pattern", [
    (b"ACT 0 0 1 -1 7\n", r"t.cmds:1: expected 5 fields"),
    (b"ACT 0 0 1 -1 \n#\nACT 0 0 1 --1\n", r"t.cmds:3: expected integers"),
    (b"act 0 0 1 -1\n", r"t.cmds:1: unknown command 'act'"),
    (b"ACT\t0 0 1 -1\n", r"t.cmds:1: unknown command"),
    (b"ACT 0 0 1 -1\n\xff\n", r"t.cmds:2: not ASCII"),
    (b" ACT 0 0 1 -1\n", r"t.cmds:1: expected 5 fields"),
])
def test_malformed_lines(text, pattern):
    with pytest.raises(TraceFormatError, match=pattern):
        parse_commands(text, "t.cmds")


@pytest.mark.parametrize("text,pattern", [
    (b"0 ACT16 -1 -1 0 -1\n-44 MAC16 -1 -1 0 0\n",
     r"t.expected:2: cycle -44 is negative \(cycles count from the first command, at cycle 0\)"),
    (b"0 ACT16 -1 -1 0 -1\n9223372036854775000 MAC16 -1 -1 0 0\n",
     r"t.expected:2: a number of more than 18 digits is out of range"),
])
def test_malformed_logs(text, pattern):
    with pytest.raises(TraceFormatError, match=pattern):
        parse_commands(text, "t.expected", with_cycle=True)
    assert parse_commands(b"0 ACT16 -1 -1 0 -1\n999999999999999999 MAC16 -1 -1 0 0\n",
                          "t.expected", with_cycle=True).cycle[-1] == 999999999999999999


def test_not_gzip(tmp_path):
    p = tmp_path / "x.cmds.gz"
    p.write_bytes(b"ACT 0 0 1 -1\n")
    with pytest.raises(TraceFormatError, match=r"x.cmds.gz: not a valid gzip file"):
        read_commands(p)


def test_from_records_roundtrip():
    from pimsim.engine import CommandStream
    recs = [("ACT", 0, 1, 2, -1), ("RD", 0, 1, 2, 3)]
    s = CommandStream.from_records(recs)
    assert s.records() == recs and s.cmd[1] == CMD_ID["RD"]
