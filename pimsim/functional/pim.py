"""Exact execution of all-bank MAC kernels with the bank MAC unit's arithmetic.

:func:`execute` runs a :class:`mappings.MacKernel`'s command stream on bank arrays of BF16
values (float32 arrays whose values are BF16) the way the hardware does: TMOD switches
between bank mode and buffer mode, WRGB writes one global-buffer slot with a column of the
input vector (BF16), each MAC16 multiplies one column of every bank with the slot of the
same index lane by lane and adds the 16 FP32 products by the 4-level tree of
:func:`pimsim.numerics.adder_tree16` into the result register the command selects
(:func:`pimsim.numerics.bank_mac16`), and the j-th RDMAC16 of a run of read-outs returns
and clears register j of every bank.

Two implementations give the same bits:

* a numba kernel in IEEE float32 (the default). IEEE binary32 with round to nearest even
  equals the golden model whenever no value is subnormal: inputs are BF16 (never
  subnormal), and if every non-zero product has a magnitude of at least 2**-100 then every
  product, tree sum and accumulator is a multiple of 2**-123, so no non-zero value falls
  below 2**-126 either. The kernel checks that condition on every product and that every
  read-out is finite;
* the golden functions of :mod:`pimsim.numerics` on bit patterns, command by command. They
  run when the check fails (never on model data in practice) and in the tests that
  compare both bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from pimsim import numerics as nx
from pimsim.standard import CMD_ID

_WRGB, _MAC, _RD, _TMOD, _ACT16, _PREA = (
    CMD_ID[c] for c in ("WRGB", "MAC16", "RDMAC16", "TMOD", "ACT16", "PREA"))
#: Smallest non-zero product magnitude for which the float32 kernel is exact (see above).
_SAFE = np.float32(2.0 ** -100)
_LANES = nx.MAC_LANES


class ExecutionError(ValueError):
    """A kernel's command stream does not match its plan, or issues in the wrong mode."""


def check_modes(cmd: np.ndarray, name: str) -> None:
    """TMOD toggles bank mode (ACT16, MAC16, PREA) and buffer mode (WRGB, RDMAC16); a
    kernel starts and ends in bank mode."""
    if not _modes_ok(np.ascontiguousarray(cmd, dtype=np.int64)):
        raise ExecutionError(f"{name}: a command issues in the wrong mode")


@njit(cache=True, nogil=True)
def _modes_ok(cmd) -> bool:
    buffer_mode = False
    for c in cmd:
        if c == _TMOD:
            buffer_mode = not buffer_mode
        elif (c == _WRGB or c == _RD) != buffer_mode and \
                (c == _WRGB or c == _RD or c == _ACT16 or c == _MAC or c == _PREA):
            return False
    return not buffer_mode


@njit(cache=True, inline="always")
def _nz(v):
    """|v|, or infinity for a zero (zero products are exact)."""
    return abs(v) if v != 0 else np.float32(np.inf)


@njit(cache=True, nogil=True, parallel=True)
def _run_f32(cmd, row, col, per, w_inp, w_kc, regs, n_regs, mem, base, inputs, gb, out):
    banks = mem.shape[0]
    values = mem.shape[3]
    beats = values // 16
    safe = np.ones(banks, dtype=np.bool_)
    for b in prange(banks):             # banks are independent: one stream walk each
        buf = gb.copy()
        acc = np.zeros(n_regs, dtype=np.float32)
        for r in range(out.shape[0]):
            iw = 0
            im = 0
            ird = 0
            run = 0
            prev_rd = False
            for j in range(r * per, (r + 1) * per):
                c = cmd[j]
                if c == _WRGB:
                    s = col[j]
                    for lane in range(values):
                        buf[s, lane] = inputs[r, w_inp[iw], w_kc[iw], lane]
                    iw += 1
                    prev_rd = False
                elif c == _MAC:
                    s = col[j]
                    rr = row[j] - base
                    g = regs[im]
                    im += 1
                    a = acc[g]
                    for beat in range(beats):
                        o = beat * 16
                        p0 = mem[b, rr, s, o] * buf[s, o]
                        p1 = mem[b, rr, s, o + 1] * buf[s, o + 1]
                        p2 = mem[b, rr, s, o + 2] * buf[s, o + 2]
                        p3 = mem[b, rr, s, o + 3] * buf[s, o + 3]
                        p4 = mem[b, rr, s, o + 4] * buf[s, o + 4]
                        p5 = mem[b, rr, s, o + 5] * buf[s, o + 5]
                        p6 = mem[b, rr, s, o + 6] * buf[s, o + 6]
                        p7 = mem[b, rr, s, o + 7] * buf[s, o + 7]
                        p8 = mem[b, rr, s, o + 8] * buf[s, o + 8]
                        p9 = mem[b, rr, s, o + 9] * buf[s, o + 9]
                        p10 = mem[b, rr, s, o + 10] * buf[s, o + 10]
                        p11 = mem[b, rr, s, o + 11] * buf[s, o + 11]
                        p12 = mem[b, rr, s, o + 12] * buf[s, o + 12]
                        p13 = mem[b, rr, s, o + 13] * buf[s, o + 13]
                        p14 = mem[b, rr, s, o + 14] * buf[s, o + 14]
                        p15 = mem[b, rr, s, o + 15] * buf[s, o + 15]
                        # smallest non-zero product magnitude (a zero product is exact)
                        lo = min(_nz(p0), _nz(p1), _nz(p2), _nz(p3), _nz(p4), _nz(p5), _nz(p6),
                                 _nz(p7), _nz(p8), _nz(p9), _nz(p10), _nz(p11), _nz(p12),
                                 _nz(p13), _nz(p14), _nz(p15))
                        if lo < _SAFE:
                            safe[b] = False
                        t = (((p0 + p1) + (p2 + p3)) + ((p4 + p5) + (p6 + p7))) + \
                            (((p8 + p9) + (p10 + p11)) + ((p12 + p13) + (p14 + p15)))
                        a = a + t
                    acc[g] = a
                    prev_rd = False
                elif c == _RD:
                    run = run + 1 if prev_rd else 0
                    v = acc[run]
                    if not np.isfinite(v):
                        safe[b] = False
                    out[r, b, ird] = v
                    acc[run] = 0
                    ird += 1
                    prev_rd = True
                else:
                    prev_rd = False
    # what the buffer holds afterwards: the last write of each slot
    for r in range(out.shape[0]):
        iw = 0
        for j in range(r * per, (r + 1) * per):
            if cmd[j] == _WRGB:
                for lane in range(values):
                    gb[col[j], lane] = inputs[r, w_inp[iw], w_kc[iw], lane]
                iw += 1
    return safe.all()


def _run_golden(cmd, row, col, per, w_inp, w_kc, regs, n_regs, mem, base, inputs, gb, out) -> None:
    """The same execution on bit patterns with the golden functions (slow)."""
    banks, values = mem.shape[0], mem.shape[3]
    bf = lambda a: (np.asarray(a, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)  # noqa: E731
    buf = bf(gb)
    acc = np.zeros((banks, n_regs), dtype=np.uint32)
    for r in range(out.shape[0]):
        iw = im = ird = run = 0
        prev_rd = False
        for j in range(r * per, (r + 1) * per):
            c = int(cmd[j])
            if c == _WRGB:
                buf[col[j]] = bf(inputs[r, w_inp[iw], w_kc[iw]])
                iw += 1
            elif c == _MAC:
                g = int(regs[im])
                im += 1
                w = bf(mem[:, row[j] - base, col[j], :]).reshape(banks, values // _LANES, _LANES)
                x = buf[col[j]].reshape(values // _LANES, _LANES)
                a = acc[:, g]
                for beat in range(values // _LANES):
                    a = nx.bank_mac16(a, w[:, beat], x[beat])
                acc[:, g] = a
            elif c == _RD:
                run = run + 1 if prev_rd else 0
                out[r, :, ird] = nx.bits_to_f32(acc[:, run])
                acc[:, run] = 0
                ird += 1
            prev_rd = c == _RD
    gb[...] = nx.bits_to_f32(nx.bf16_to_fp32(buf))


#: kernel name -> (its stream's command array, the checked plan of that stream)
_CHECKED: dict[str, tuple] = {}


def _plan(kernel):
    """(stream, commands per repeat, WRGB inputs, WRGB input columns, MAC registers, reads),
    checked against each other once per stream (kernels of later steps reuse the stream
    arrays of identical kernels)."""
    st = kernel.commands()
    seen = _CHECKED.get(kernel.name)
    if seen is not None and seen[0] is st.cmd:
        return (st,) + seen[1:]
    w_inp, w_kc = kernel.gb_writes()
    regs = kernel.mac_registers()
    n_reads = kernel.readouts()["slot"].size
    per = st.cmd.size // kernel.repeats if kernel.repeats else 0
    one = st.cmd[:per]
    check_modes(one, kernel.name)
    if int((one == _WRGB).sum()) != w_inp.size or int((one == _MAC).sum()) != regs.size or \
            int((one == _RD).sum()) != n_reads:
        raise ExecutionError(f"{kernel.name}: stream and kernel plan disagree")
    plan = (per, w_inp.astype(np.int64), w_kc.astype(np.int64), regs.astype(np.int64), n_reads)
    _CHECKED[kernel.name] = (st.cmd,) + plan
    return (st,) + plan


def execute(kernel, mem: np.ndarray, base: int, inputs: np.ndarray, gb: np.ndarray,
            golden: bool = False) -> tuple[np.ndarray, bool]:
    """Run ``kernel`` (a :class:`mappings.MacKernel`) on its channel's bank array.

    ``mem``: (banks, rows, columns, values) float32 BF16 values of the kernel's region on
    its channel, row ``base`` first. ``inputs``: (repeats, inputs, input columns, values)
    float32 BF16 values, what input ``i`` means in repeat ``r``. ``gb``: the channel's
    global buffer, (slots, values) float32 BF16 values, updated in place: a slot keeps its
    contents until a WRGB writes it, across repeats and kernels.

    Returns (values, fell_back): values (repeats, banks, read-outs) float32, the FP32 bits of
    each RDMAC16 of every bank; fell_back is True when the golden functions computed them.
    """
    st, per, w_inp, w_kc, regs, n_reads = _plan(kernel)
    out = np.zeros((kernel.repeats, mem.shape[0], n_reads), dtype=np.float32)
    n_regs = max(int(regs.max(initial=0)) + 1, n_reads, 1)
    args = (st.cmd, st.row, st.col, per, w_inp, w_kc, regs, n_regs, mem, base,
            np.ascontiguousarray(inputs, dtype=np.float32))
    if not golden:
        work = gb.copy()
        if _run_f32(*args, work, out):
            gb[...] = work
            return out, False
    _run_golden(*args, gb, out)
    return out, True
