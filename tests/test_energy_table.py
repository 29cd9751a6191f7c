"""The energy constants: every one sourced, ranges ordered, per-row arithmetic consistent."""

from __future__ import annotations

import pytest

from pimsim.energy_table import energy_table

pytestmark = pytest.mark.unit


def test_every_constant_has_source_unit_and_ordered_range():
    table = energy_table()
    assert len(table) >= 20
    for c in table.values():
        assert c.source.strip() and c.what.strip()
        assert c.low <= c.nominal <= c.high


def test_pin_energy_of_one_burst_matches_the_reference_arithmetic():
    # a 32 B burst is 256 bits: I3 = 256 x I1 (nominal 1408 pJ, range 1024 - 2970)
    pin = energy_table()["pin_read"]
    bits = 32 * 8
    assert (bits * pin.low, bits * pin.nominal) == (1024.0, 1408.0)
    assert bits * pin.high == pytest.approx(2969.6)


def test_corners():
    c = energy_table()["act_pre_bank"]
    assert [c.value(k) for k in ("low", "nominal", "high")] == [c.low, c.nominal, c.high]
    with pytest.raises(Exception, match="corner"):
        c.value("typical")


def test_energy_breakdown_charges_each_command_from_the_table():
    from pimsim.energy import energy_breakdown, energy_ranges

    t = energy_table()
    kw = dict(channels=8, banks=16, mac_lanes=16, sram_bytes=4096)
    zero = energy_breakdown({}, {}, 0.0, **kw)
    assert all(v == 0 for v in zero.values())
    one_mac = energy_breakdown({"MAC16": 1}, {}, 0.0, **kw)
    expected = (16 * t["col_bank_local"].nominal + 256 * t["mac_bf16"].nominal
                + t["gb_read"].nominal + t["gb_broadcast"].nominal) * 1e-12
    assert one_mac["pim_mac"] == pytest.approx(expected)
    assert one_mac["controller"] == pytest.approx(t["ctrl_command"].nominal * 1e-12)
    act16 = energy_breakdown({"ACT16": 1}, {}, 0.0, **kw)["dram_activate"]
    assert act16 == pytest.approx(16 * t["act_pre_bank"].nominal * 1e-9)
    idle = energy_breakdown({}, {}, 1e-3, **kw)["background"]
    assert idle == pytest.approx((t["standby_act"].nominal + t["gb_leakage"].nominal) * 1e-3 * 8 * 1e-3)
    r = energy_ranges({"MAC16": 10, "RD": 3, "REFab": 1}, {"adds": 100, "muls": 50}, 1e-6, **kw)
    for cat in r["nominal"]:
        assert r["low"][cat] <= r["nominal"][cat] <= r["high"][cat]
