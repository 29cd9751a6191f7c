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
