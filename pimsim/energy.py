"""The energy model: command counts, ASIC operations and time into joules, with ranges.

Every constant comes from :mod:`pimsim.energy_table` (nominal, low and high, each with its
source). :func:`energy_breakdown` charges, for one corner:

* ``dram_activate``: ACT (one bank) and ACT16 (all banks) with their precharge (D1);
* ``pim_mac``: MAC16 = the bank-local column access of every bank (D3), 16 x 16 BF16 MACs
  (P1), the global-buffer read (P4) and its broadcast to the banks (P6);
* ``dram_read_write``: RD and WR column accesses inside the die (D4, D5);
* ``global_buffer``: WRGB into the buffer (P5 + P6) and RDMAC16 read-out (P8);
* ``refresh``: REFab (D6) and REFpb (D6 / banks);
* ``background``: active-standby power (D9) of every channel for the whole time;
* ``pins``: 256 bits per burst of WRGB/WR (I2) and RD/RDMAC16 (I1);
* ``controller``: memory-controller logic per command (I5);
* ``asic``: FP32 adds and multiplies, integer operations, SRAM reads and writes (A1, A2,
  A7, A13, A15), logic leakage as a fraction of that (A17) and SRAM leakage (A16 per 4 KB).

The low and high corners take every constant at its low or high value together, so the
range bounds the combinations of the sources' spreads.
"""

from __future__ import annotations

import math
from typing import Mapping

from pimsim.energy_table import energy_table

CORNERS = ("low", "nominal", "high")
BURST_BITS = 256


def energy_breakdown(counts: Mapping[str, int], asic_ops: Mapping[str, int], seconds: float,
                     *, channels: int, banks: int, mac_lanes: int, sram_bytes: int,
                     corner: str = "nominal") -> dict[str, float]:
    """Joules per category for one corner."""
    t = energy_table()

    def v(name: str) -> float:
        return t[name].value(corner)

    pj, nj, mw = 1e-12, 1e-9, 1e-3
    n = {k: int(counts.get(k, 0)) for k in ("ACT", "ACT16", "MAC16", "RD", "WR", "WRGB",
                                              "RDMAC16", "REFab", "REFpb")}
    all_cmds = sum(int(x) for x in counts.values())
    out = {
        "dram_activate": (n["ACT"] + banks * n["ACT16"]) * v("act_pre_bank") * nj,
        "pim_mac": n["MAC16"] * (banks * v("col_bank_local") + banks * mac_lanes * v("mac_bf16")
                                 + v("gb_read") + v("gb_broadcast")) * pj,
        "dram_read_write": (n["RD"] * v("col_read") + n["WR"] * v("col_write")) * pj,
        "global_buffer": (n["WRGB"] * (v("gb_write") + v("gb_broadcast"))
                          + n["RDMAC16"] * v("rdmac_internal")) * pj,
        "refresh": (n["REFab"] + n["REFpb"] / banks) * v("refab") * nj,
        "background": (v("standby_act") + v("gb_leakage")) * mw * channels * seconds,
        "pins": ((n["WRGB"] + n["WR"]) * v("pin_write")
                 + (n["RD"] + n["RDMAC16"]) * v("pin_read")) * BURST_BITS * pj,
        "controller": all_cmds * v("ctrl_command") * pj,
    }
    dynamic = (asic_ops.get("adds", 0) * v("fp32_add") + asic_ops.get("muls", 0) * v("fp32_mul")
               + asic_ops.get("int_ops", 0) * v("int32_add")
               + asic_ops.get("sram_read_bytes", 0) * v("sram_read")
               + asic_ops.get("sram_write_bytes", 0) * v("sram_write")) * pj
    leak = v("sram_leakage") * mw * math.ceil(sram_bytes / 4096) * seconds
    out["asic"] = dynamic * (1 + v("logic_leakage")) + leak
    return out


def energy_ranges(counts, asic_ops, seconds, **kw) -> dict[str, dict[str, float]]:
    """{corner: breakdown} for the low, nominal and high corners."""
    return {c: energy_breakdown(counts, asic_ops, seconds, corner=c, **kw) for c in CORNERS}
