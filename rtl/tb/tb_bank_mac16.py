"""cocotb test bench of the bank MAC unit (bank_mac16.v) against pimsim.numerics.

A cycle model of the documented pipeline (5 stages between the input and the
accumulator; stall freezes everything; clear, MAC and read of a beat happen in that order)
predicts rd_valid, rd_data and acc after every clock edge; the numbers come from the golden
model (bf16_mul, adder_tree16, fp32_add, bank_dot). Streams: one 1024-element dot product,
directed corner beats, then PIMSIM_RTL_VECTORS random beats with random stalls, bubbles,
clears, reads and one reset.
"""

from __future__ import annotations

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge

import vectors as V
from pimsim import numerics as N

LATENCY = 5  # pipeline registers between the input and the accumulator (rtl/README.md)


def _pack(lanes) -> int:
    v = 0
    for i, lane in enumerate(lanes):
        v |= int(lane) << (16 * i)
    return v


class MacModel:
    """The documented timing of bank_mac16 with golden arithmetic."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.pipe = [None] * LATENCY  # beats in flight: dict(valid, clear, rd, tree)
        self.acc = 0
        self.rd_valid = 0
        self.rd_data = 0

    def clock(self, stall: int, beat: dict | None):
        if stall:
            self.rd_valid = 0
            return
        leaving = self.pipe[-1]
        self.pipe = [beat] + self.pipe[:-1]
        self.rd_valid = 0
        if leaving is None:
            return
        if leaving["clear"]:
            self.acc = 0
        if leaving["valid"]:
            self.acc = int(N.fp32_add(self.acc, leaving["tree"]))
        if leaving["rd"]:
            self.rd_valid = 1
            self.rd_data = self.acc


class Checker:
    def __init__(self, dut):
        self.dut = dut
        self.errors: list[str] = []
        self.reads = 0

    def check(self, model: MacModel, cycle: int):
        dut = self.dut
        rv = int(dut.rd_valid.value)
        acc = dut.acc.value.to_unsigned()
        if rv != model.rd_valid:
            self.errors.append(f"cycle {cycle}: rd_valid={rv}, model {model.rd_valid}")
        elif rv:
            self.reads += 1
            got = dut.rd_data.value.to_unsigned()
            if got != model.rd_data:
                self.errors.append(f"cycle {cycle}: rd_data={got:#010x}, golden {model.rd_data:#010x}")
        if acc != model.acc:
            self.errors.append(f"cycle {cycle}: acc={acc:#010x}, golden {model.acc:#010x}")


async def _start(dut):
    Clock(dut.clk, 10, unit="ns").start()
    for name in ("stall", "in_valid", "clear", "rd", "w", "x"):
        getattr(dut, name).value = 0
    dut.rst_n.value = 0
    await ClockCycles(dut.clk, 2)
    await FallingEdge(dut.clk)
    dut.rst_n.value = 1


async def _drive(dut, model: MacModel, checker: Checker, beats, ctrl, garbage):
    """Drive beats (w, x, tree) under ctrl rows (stall, valid, clear, rd, reset)."""
    w_all, x_all, tree_all = beats
    for c in range(len(ctrl)):
        stall, valid, clear, rd, rst = (int(v) for v in ctrl[c])
        dut.stall.value = stall
        dut.in_valid.value = valid
        dut.clear.value = clear
        dut.rd.value = rd
        dut.rst_n.value = 0 if rst else 1
        if valid or stall:
            dut.w.value = _pack(w_all[c] if valid else garbage[0])
            dut.x.value = _pack(x_all[c] if valid else garbage[1])
        await FallingEdge(dut.clk)  # the rising edge in between samples the inputs
        if rst:
            model.reset()
        else:
            beat = None if (stall or not (valid or clear or rd)) else {
                "valid": valid, "clear": clear, "rd": rd, "tree": int(tree_all[c])}
            model.clock(stall, beat)
        checker.check(model, c)


def _trees(w, x):
    return N.adder_tree16(N.bf16_mul(w, x))


def _finish(dut, checker: Checker, expect_reads: int | None):
    for e in checker.errors[:10]:
        dut._log.error(e)
    assert not checker.errors, f"{len(checker.errors)} mismatches against the golden model"
    if expect_reads is not None:
        assert checker.reads == expect_reads, f"{checker.reads} reads seen, {expect_reads} issued"


def _drain(n):
    return np.zeros((n, 5), np.int64)


@cocotb.test()
async def dot_product_1024(dut):
    """64 back-to-back MACs (one 2 KB row) from a clear, then a read: equals bank_dot."""
    await _start(dut)
    g = V.rng("mac-dot")
    w, x = V.mac_lanes(g, 64)
    ctrl = np.zeros((64 + LATENCY + 2, 5), np.int64)
    ctrl[:64, 1] = 1
    ctrl[0, 2] = 1
    ctrl[63, 3] = 1
    pad = np.zeros((LATENCY + 2, 16), np.uint16)
    beats = (np.concatenate([w, pad]), np.concatenate([x, pad]), np.concatenate([_trees(w, x), np.zeros(LATENCY + 2, np.uint32)]))
    model, checker = MacModel(), Checker(dut)
    await _drive(dut, model, checker, beats, ctrl, (w[0], x[0]))
    expected = int(N.bank_dot(w.reshape(-1), x.reshape(-1)))
    assert model.rd_data == expected or checker.errors, "model and bank_dot disagree"
    _finish(dut, checker, 1)
    assert dut.rd_data.value.to_unsigned() == expected


@cocotb.test()
async def directed_corners(dut):
    """BF16 corner pairs (zeros, extremes, subnormals, inf, NaN, ties), each beat cleared and read."""
    await _start(dut)
    w, x = V.mac_directed()
    n = len(w)
    ctrl = np.zeros((n + LATENCY + 2, 5), np.int64)
    ctrl[:n, 1] = 1
    ctrl[:n:2, 2] = 1  # every other beat clears: pairs accumulate two corner beats
    ctrl[:n, 3] = 1
    pad = np.zeros((LATENCY + 2, 16), np.uint16)
    beats = (np.concatenate([w, pad]), np.concatenate([x, pad]), np.concatenate([_trees(w, x), np.zeros(LATENCY + 2, np.uint32)]))
    model, checker = MacModel(), Checker(dut)
    await _drive(dut, model, checker, beats, ctrl, (w[0], x[0]))
    _finish(dut, checker, n)


@cocotb.test()
async def random_stream_with_stalls(dut):
    """Random beats with stalls (garbage on the inputs), bubbles, clears, reads and a reset."""
    await _start(dut)
    n = V.vector_count()
    g = V.rng("mac-random")
    w, x = V.mac_lanes(g, n)
    u = g.random((n, 4))
    ctrl = np.zeros((n, 5), np.int64)
    ctrl[:, 0] = u[:, 0] < 0.10  # stall
    ctrl[:, 1] = u[:, 1] < 0.85  # MAC
    ctrl[:, 2] = u[:, 2] < 0.08  # clear
    ctrl[:, 3] = u[:, 3] < 0.30  # read
    ctrl[n // 2, :] = [0, 0, 0, 0, 1]  # one synchronous reset mid-stream
    # back-to-back burst without stalls in the first 64 beats
    ctrl[:64, 0] = 0
    ctrl = np.concatenate([ctrl, _drain(LATENCY + 2)])
    pad = np.zeros((LATENCY + 2, 16), np.uint16)
    beats = (np.concatenate([w, pad]), np.concatenate([x, pad]), np.concatenate([_trees(w, x), np.zeros(LATENCY + 2, np.uint32)]))
    garbage = V.mac_lanes(g, 1)
    model, checker = MacModel(), Checker(dut)
    await _drive(dut, model, checker, beats, ctrl, (garbage[0][0], garbage[1][0]))
    # rd_valid was compared with the model on every cycle; reads cut by the reset vanish
    _finish(dut, checker, None)
    assert checker.reads > n // 10, f"only {checker.reads} reads completed"
