"""Protocol stories: issue A, expect B at the earliest cycle the named parameters allow.

Part 1 walks every constraint record of every standard: for each (A, B) pair it places the
two commands so that they share exactly the record's scope, and expects B at the largest
latency of all records that apply to that placement, each latency evaluated from its
named timing parameters. Part 2 tells the stories that matter most in words: row cycles,
the four-activate window, TMOD placement, refresh.
"""

from __future__ import annotations

import pytest

from pimsim.config import load_preset
from pimsim.engine import CommandStream, check, issue, merge_log
from pimsim.engine.streams import mac_rows
from pimsim.standard import BANK_ADDRESSED, evaluate, load_standard

pytestmark = pytest.mark.timing

PRESETS = {"gddr6": "gddr6-14000", "gddr6-aim": "gddr6-aim", "gddr6-pim": "pim-gpt"}


def _spec(preset, *overrides, refresh="off"):
    return load_preset(preset, list(overrides)).dram.with_refresh(refresh)


def _record(cmd, bg=-1, ba=-1, row=-1, col=-1):
    if cmd in ("ACT", "ACT16") and row < 0:
        row = 5
    if cmd in ("RD", "WR", "MAC16") and row < 0:
        row = 5
    if cmd in ("RD", "WR", "MAC16", "WRGB") and col < 0:
        col = 3
    if cmd not in BANK_ADDRESSED:
        bg = ba = -1
    return (cmd, bg, ba, row, col)


def _placement(scope, a, b):
    """Addresses for A and B sharing exactly ``scope`` (when both are bank-addressed)."""
    if scope == "bank":
        return (0, 0), (0, 0)
    if scope == "bankgroup":
        return (0, 0), (0, 1)
    return (0, 0), (1, 0)


def _shares(scope, addr_a, addr_b, a, b):
    if scope == "channel" or a not in BANK_ADDRESSED or b not in BANK_ADDRESSED:
        return True
    if scope == "bankgroup":
        return addr_a[0] == addr_b[0]
    return addr_a == addr_b


def _rule_cases():
    for std, preset in PRESETS.items():
        for i, rule in enumerate(load_standard(std).rules):
            if rule.window:
                continue  # told as stories below (test_every_windowed_rule_has_a_story)
            yield pytest.param(std, preset, i, id=f"{std}[{i}]:{'/'.join(rule.from_)}->{'/'.join(rule.to)}:{rule.scope}")


@pytest.mark.parametrize("std,preset,index", list(_rule_cases()))
def test_every_constraint_rule(std, preset, index):
    standard = load_standard(std)
    spec = _spec(preset)
    timing = dict(spec.timing)
    rule = standard.rules[index]
    for a in rule.from_:
        for b in rule.to:
            addr_a, addr_b = _placement(rule.scope, a, b)
            stream = CommandStream.from_records([_record(a, *addr_a), _record(b, *addr_b)])
            # every non-window rule that applies to this placement, latency from its parameters
            expected = 1
            for other in standard.rules:
                if (not other.window and a in other.from_ and b in other.to
                        and _shares(other.scope, addr_a, addr_b, a, b)):
                    expected = max(expected, evaluate(other.latency, timing))
            got = issue(spec, stream).cycles
            assert got[0] == 0, (a, b)
            assert got[1] == expected, f"{a}@{addr_a} -> {b}@{addr_b}: {got[1]} != {expected} ({rule.latency})"


def test_every_windowed_rule_has_a_story():
    windowed = {(s, r.from_, r.to) for s in PRESETS for r in load_standard(s).rules if r.window}
    told = {("gddr6", ("ACT",), ("ACT", "REFpb")), ("gddr6", ("REFpb",), ("ACT", "REFpb")),
            ("gddr6-pim", ("ACT",), ("ACT",))}
    assert windowed == told


# ----------------------------------------------------------------------------- stories

def test_act_to_read_to_precharge_to_act_same_bank():
    spec = _spec("gddr6-14000")
    p = spec.timing
    s = CommandStream.from_records([("ACT", 1, 2, 7, -1), ("RD", 1, 2, 7, 0),
                                    ("PRE", 1, 2, -1, -1), ("ACT", 1, 2, 8, -1)])
    act, rd, pre, act2 = issue(spec, s).cycles
    assert rd == act + p["nRCDRD"]
    assert pre == max(act + p["nRAS"], rd + p["nRTP"])
    assert act2 == max(pre + p["nRP"], act + p["nRC"])


def test_write_to_read_turnaround_same_and_other_bank_group():
    spec = _spec("gddr6-14000")
    p = spec.timing
    s = CommandStream.from_records([("ACT", 1, 0, 1, -1), ("ACT", 0, 0, 1, -1),
                                    ("WR", 0, 0, 1, 0), ("RD", 1, 0, 1, 0), ("RD", 0, 0, 1, 1)])
    act1, act0, wr, rd_other, rd_same = issue(spec, s).cycles
    assert act0 == act1 + p["nRRDS"]
    assert wr == act0 + p["nRCDWR"]
    assert act1 + p["nRCDRD"] < wr + p["nCWL"] + p["nBL"] + p["nWTRS"]  # the turnaround binds
    assert rd_other == wr + p["nCWL"] + p["nBL"] + p["nWTRS"]
    assert rd_same == max(wr + p["nCWL"] + p["nBL"] + p["nWTRL"], rd_other + p["nCCDS"])


def test_column_spacing_same_vs_other_bank_group():
    spec = _spec("gddr6-14000")
    p = spec.timing
    s = CommandStream.from_records([("ACT", 0, 0, 1, -1), ("ACT", 1, 0, 1, -1),
                                    ("RD", 1, 0, 1, 0), ("RD", 0, 0, 1, 0), ("RD", 0, 0, 1, 1)])
    _, act1, rd_a, rd_b, rd_c = issue(spec, s).cycles
    assert rd_a == act1 + p["nRCDRD"]
    assert rd_b == rd_a + max(p["nBL"], p["nCCDS"])  # other bank group
    assert rd_c == rd_b + p["nCCDL"]                  # same bank group


def test_four_activate_window_gddr6():
    spec = _spec("gddr6-14000", "timing.nFAW=40")
    p = spec.timing
    acts = [("ACT", bg, ba, 1, -1) for bg, ba in [(0, 0), (1, 0), (2, 0), (3, 0), (0, 1)]]
    c = issue(spec, CommandStream.from_records(acts)).cycles
    assert list(c[:4]) == [i * p["nRRDS"] for i in range(4)]
    assert c[4] == max(c[3] + p["nRRDS"], c[0] + p["nFAW"], c[0] + p["nRRDL"])
    assert c[4] == c[0] + p["nFAW"]  # the window is what binds here


def test_four_activate_window_counts_refpb_separately():
    spec = _spec("gddr6-14000", "timing.nFAW=60", "timing.nRREFD=2")
    p = spec.timing
    refs = [("REFpb", bg, 1, -1, -1) for bg in range(4)] + [("REFpb", 0, 2, -1, -1), ("ACT", 1, 3, 1, -1)]
    c = issue(spec, CommandStream.from_records(refs)).cycles
    assert list(c[:4]) == [i * p["nRREFD"] for i in range(4)]
    assert c[4] == c[0] + p["nFAW"]                          # 5th REFpb: REFpb window
    assert c[5] == max(c[4] + p["nRREFD"], c[1] + p["nFAW"])  # ACT: 4th most recent REFpb


def test_four_activate_window_pim_single_bank_acts_only():
    spec = _spec("pim-gpt")
    p = spec.timing
    acts = [("ACT", bg, ba, 1, -1) for bg, ba in [(0, 0), (1, 0), (2, 0), (3, 0), (0, 1)]]
    c = issue(spec, CommandStream.from_records(acts)).cycles
    assert list(c[:4]) == [i * p["nRRDS"] for i in range(4)]
    assert c[4] == max(c[3] + p["nRRDS"], c[0] + p["nRRDL"], c[0] + p["nFAW"])
    assert c[4] == c[0] + p["nFAW"]


def test_all_bank_mac_row_cycle():
    """ACT16 -> 64 MAC16 -> PREA -> ACT16: the cost of streaming one row per bank."""
    for preset in ("gddr6-aim", "pim-gpt"):
        spec = _spec(preset)
        p = spec.timing
        cols = spec.columns
        c = issue(spec, mac_rows(2, cols)).cycles
        mac_gap = max(p["nCCDL"], p.get("nMAC", 0))
        assert c[1] == c[0] + p["nRCDRDMAC"]
        assert c[cols] == c[1] + (cols - 1) * mac_gap
        assert c[cols + 1] == c[cols] + p["nRTP"]  # PREA
        assert c[cols + 2] == max(c[cols + 1] + p["nRP"], c[0] + p["nRC"])  # next ACT16
        assert c[cols + 2] - c[0] == p["nRCDRDMAC"] + (cols - 1) * mac_gap + p["nRTP"] + p["nRP"]


def test_mac_spacing_follows_pim_clock():
    fast = _spec("pim-gpt")
    slow = _spec("pim-gpt", "pim.clock_MHz=250")
    assert slow.timing["nMAC"] == 4 * fast.timing["nMAC"]  # 4x slower unit, 2 cycles -> 8
    c = issue(slow, mac_rows(1, 8)).cycles
    assert c[2] - c[1] == slow.timing["nMAC"]


def test_tmod_waits_for_the_command_it_precedes():
    spec = _spec("gddr6-aim")
    p = spec.timing
    s = CommandStream.from_records([("ACT16", -1, -1, 0, -1), ("MAC16", -1, -1, 0, 0),
                                    ("TMOD", -1, -1, -1, -1), ("RDMAC16", -1, -1, -1, -1)])
    act, mac, tmod, rd = issue(spec, s).cycles
    assert mac == act + p["nRCDRDMAC"]
    assert tmod == mac + p["nCCDL"]  # when RDMAC16 would be allowed after MAC16
    assert rd == tmod + p["nMODCH"]


def test_all_bank_refresh_blocks_the_channel():
    spec = _spec("pim-gpt", refresh="ab")
    p = spec.timing
    stream = mac_rows(40, spec.columns)
    res = issue(spec, stream)
    cycles, log = merge_log(stream, res)
    names = [r[0] for r in log.records()]
    i = names.index("REFab")
    # due at nREFI: the open row finishes its MACs, PREA then REFab no earlier than due
    assert cycles[i] >= p["nREFI"]
    assert cycles[i + 1] >= cycles[i] + p["nRFCab"]  # nothing issues during the refresh
    # one refresh per interval that fell due before the last command
    assert res.counts["REFab"] == int(res.cycles[-1]) // p["nREFI"]
    # a due refresh lets the open row's MACs finish (column commands to an open row go
    # first while they come before the PREA could), so no row needs re-opening
    assert check(spec, cycles, log) == []
    assert res.counts["ACT16"] == 40
    assert names[i - 1] == "PREA" and names[i - 2] == "MAC16"
    assert log.col[i - 2] == spec.columns - 1


def test_per_bank_refresh_round_robin():
    spec = _spec("pim-gpt", refresh="pb")
    p = spec.timing
    stream = mac_rows(20, spec.columns)
    res = issue(spec, stream)
    cycles, log = merge_log(stream, res)
    refs = [(c, r) for c, r in zip(cycles, log.records()) if r[0] == "REFpb"]
    banks = [r[1] * spec.banks_per_bankgroup + r[2] for _, r in refs]
    assert banks == [k % spec.banks for k in range(len(banks))]
    interval = p["nREFI"] // spec.banks
    for k, (c, _) in enumerate(refs):
        assert c >= (k + 1) * interval
