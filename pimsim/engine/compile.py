"""The one function that turns a :class:`~pimsim.config.DramSpec` into kernel inputs.

Two forms of the same constraint table are produced:

* the **record form** (``rec_*``): one row per constraint record, read by the pure-Python
  twin exactly as the records are written (latest A in the shared scope, or the W-th most
  recent A for a window);
* the **update form** (``upd_*``, ``all_*``, ``win_*``): for each command A, the list of
  (B, latency) pairs it imposes, per scope, which the numba kernel folds into
  "earliest next issue" tables. Constraints between the same pair in the same scope are
  merged by their maximum.

Both come from the same records; tests require the kernel and the twin to agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pimsim.config import DramSpec
from pimsim.errors import ConfigError
from pimsim.standard import BANK_ADDRESSED, CMD_ID, COLUMN, COMMANDS, N_COMMANDS, SCOPE_ID

REFRESH_CODES = {"off": 0, "ab": 1, "pb": 2}

# command ids used by the kernels (fixed by pimsim.standard.COMMANDS)
ACT, RD, WR, PRE, PREA, REFAB, REFPB, ACT16, MAC16, WRGB, RDMAC16, TMOD = range(N_COMMANDS)
assert COMMANDS[TMOD] == "TMOD" and COMMANDS[ACT16] == "ACT16"


@dataclass(frozen=True, eq=False)
class CompiledTiming:
    """Integer arrays for the kernels; built only by :func:`compile_timing`."""

    n_bankgroups: int
    banks_per_bankgroup: int
    n_banks: int
    rows: int
    columns: int
    gb_slots: int
    supported: np.ndarray      # uint8[12]
    addr_all: np.ndarray       # uint8[12]: command acts on all banks
    is_column: np.ndarray      # uint8[12]
    # record form
    rec_from: np.ndarray       # uint8[R, 12]
    rec_to: np.ndarray         # uint8[R, 12]
    rec_scope: np.ndarray      # int64[R]
    rec_cycles: np.ndarray     # int64[R]
    rec_window: np.ndarray     # int64[R] (0: none)
    # update form
    upd_ptr: np.ndarray        # int64[3, 13]: CSR per scope for bank-addressed A
    upd_to: np.ndarray         # int64[3, K]
    upd_lat: np.ndarray        # int64[3, K]
    all_ptr: np.ndarray        # int64[13]: CSR for all-bank A (scopes merged)
    all_to: np.ndarray
    all_lat: np.ndarray
    win_from: np.ndarray       # uint8[W, 12]
    win_to: np.ndarray         # uint8[W, 12]
    win_lat: np.ndarray        # int64[W]
    win_size: np.ndarray       # int64[W]
    has_win_to: np.ndarray     # uint8[12]
    tmod_lookahead: bool
    refresh: int               # REFRESH_CODES
    refresh_interval: int      # cycles between refresh commands (nREFI, or nREFI/banks for pb)
    refresh_first_due: int     # relative cycle at which the first refresh falls due

    def kernel_args(self) -> tuple:
        """The tuple of static arrays the numba kernel takes (one place, one order)."""
        return (self.n_bankgroups, self.banks_per_bankgroup, self.n_banks, self.addr_all,
                self.is_column, self.supported, self.upd_ptr, self.upd_to, self.upd_lat,
                self.all_ptr, self.all_to, self.all_lat, self.win_from, self.win_to,
                self.win_lat, self.win_size, self.has_win_to, self.tmod_lookahead)


def _csr(lat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ptr = np.zeros(N_COMMANDS + 1, dtype=np.int64)
    tos, lats = [], []
    for a in range(N_COMMANDS):
        for b in range(N_COMMANDS):
            if lat[a, b] >= 0:
                tos.append(b)
                lats.append(lat[a, b])
        ptr[a + 1] = len(tos)
    return ptr, np.array(tos, dtype=np.int64), np.array(lats, dtype=np.int64)


def compile_timing(dram: DramSpec) -> CompiledTiming:
    """Resolve a DramSpec into the integer arrays both engine paths read."""
    n = N_COMMANDS
    cons = dram.constraints
    r = len(cons)
    rec_from = np.zeros((r, n), dtype=np.uint8)
    rec_to = np.zeros((r, n), dtype=np.uint8)
    rec_scope = np.zeros(r, dtype=np.int64)
    rec_cycles = np.zeros(r, dtype=np.int64)
    rec_window = np.zeros(r, dtype=np.int64)
    lat = np.full((3, n, n), -1, dtype=np.int64)
    windows: list[tuple[np.ndarray, np.ndarray, int, int]] = []
    for i, c in enumerate(cons):
        if c.window and c.scope != "channel":
            raise ConfigError(f"{dram.origin or dram.name}: constraint {c.describe()}: "
                              f"windows are supported only at channel scope")
        for a in c.from_:
            rec_from[i, CMD_ID[a]] = 1
        for b in c.to:
            rec_to[i, CMD_ID[b]] = 1
        rec_scope[i] = SCOPE_ID[c.scope]
        rec_cycles[i] = c.cycles
        rec_window[i] = c.window
        if c.window:
            windows.append((rec_from[i].copy(), rec_to[i].copy(), c.cycles, c.window))
            continue
        s = SCOPE_ID[c.scope]
        for a in c.from_:
            for b in c.to:
                lat[s, CMD_ID[a], CMD_ID[b]] = max(lat[s, CMD_ID[a], CMD_ID[b]], c.cycles)

    ptrs, tos, lats = zip(*(_csr(lat[s]) for s in range(3)))
    k = max(len(t) for t in tos)
    upd_to = np.zeros((3, max(k, 1)), dtype=np.int64)
    upd_lat = np.zeros((3, max(k, 1)), dtype=np.int64)
    for s in range(3):
        upd_to[s, :len(tos[s])] = tos[s]
        upd_lat[s, :len(lats[s])] = lats[s]
    all_ptr, all_to, all_lat = _csr(lat.max(axis=0))

    nw = len(windows)
    win_from = np.zeros((nw, n), dtype=np.uint8)
    win_to = np.zeros((nw, n), dtype=np.uint8)
    win_lat = np.zeros(nw, dtype=np.int64)
    win_size = np.ones(nw, dtype=np.int64)
    for w, (f, t, cyc, size) in enumerate(windows):
        win_from[w], win_to[w], win_lat[w], win_size[w] = f, t, cyc, size
    has_win_to = (win_to.sum(axis=0) > 0).astype(np.uint8) if nw else np.zeros(n, dtype=np.uint8)

    supported = np.array([c in dram.commands for c in COMMANDS], dtype=np.uint8)
    addr_all = np.array([c not in BANK_ADDRESSED for c in COMMANDS], dtype=np.uint8)
    is_column = np.array([c in COLUMN for c in COMMANDS], dtype=np.uint8)

    policy = dram.refresh_policy
    interval = 0
    if policy == "ab":
        interval = dram.timing["nREFI"]
    elif policy == "pb":
        interval = dram.timing["nREFI"] // dram.banks
    if policy != "off":
        need = ("REFab", "PREA") if policy == "ab" else ("REFpb", "PRE")
        for c in need:
            if c not in dram.commands:
                raise ConfigError(f"{dram.origin or dram.name}: refresh policy {policy!r} needs "
                                  f"command {c}, which the timing table lacks")
    return CompiledTiming(
        n_bankgroups=dram.bankgroups, banks_per_bankgroup=dram.banks_per_bankgroup,
        n_banks=dram.banks, rows=dram.rows, columns=dram.columns, gb_slots=dram.gb_slots,
        supported=supported, addr_all=addr_all, is_column=is_column,
        rec_from=rec_from, rec_to=rec_to, rec_scope=rec_scope, rec_cycles=rec_cycles,
        rec_window=rec_window,
        upd_ptr=np.stack(ptrs), upd_to=upd_to, upd_lat=upd_lat,
        all_ptr=all_ptr, all_to=all_to, all_lat=all_lat,
        win_from=win_from, win_to=win_to, win_lat=win_lat, win_size=win_size,
        has_win_to=has_win_to, tmod_lookahead=bool(dram.tmod_lookahead),
        refresh=REFRESH_CODES[policy], refresh_interval=int(interval),
        refresh_first_due=int(interval - dram.refresh_phase_cycles % interval) if interval else 0,
    )
