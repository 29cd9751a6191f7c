"""The cycle-accurate channel engine.

:func:`issue` issues one channel's command stream, :func:`issue_channels` many channels
(independent streams, or one stream driving all channels in lock-step). Both validate
their inputs, compile the spec once (:func:`compiled`), and run the numba kernel or, with
``backend="python"``, its pure-Python twin. :func:`check` runs the independent protocol
checker on any log.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from pimsim.config import DramSpec
from pimsim.engine.cmdfile import CommandStream, validate
from pimsim.engine.compile import CompiledTiming, compile_timing
from pimsim.errors import PimsimError
from pimsim.standard import CMD_ID, COMMANDS, N_COMMANDS

__all__ = ["CommandStream", "EngineState", "IssueResult", "issue", "issue_channels", "compiled", "check",
           "merge_log", "issue_repeated", "RepeatResult", "BACKENDS", "issue_postponed_refresh"]

BACKENDS = ("numba", "python")


@dataclass(frozen=True, eq=False)
class IssueResult:
    """What the engine returns for one channel."""

    #: Issue cycle of every input command (relative to cycle 0).
    cycles: np.ndarray
    #: Commands issued per type, inserted refresh and re-activations included.
    counts: dict[str, int]
    #: Commands the engine inserted (refresh, precharge before it, re-activation after it):
    #: ``before`` is the index of the input command they precede.
    inserted: dict[str, np.ndarray]
    #: Cycles by which refresh delayed the input commands, summed.
    refresh_stall_cycles: int

    @property
    def last_cycle(self) -> int:
        ins = self.inserted["cycle"]
        last = int(self.cycles[-1]) if self.cycles.size else -1
        return max(last, int(ins.max()) if ins.size else -1)


@functools.lru_cache(maxsize=32)
def _compiled_cached(spec: DramSpec) -> CompiledTiming:
    return compile_timing(spec)


def compiled(spec: DramSpec) -> CompiledTiming:
    """The kernel inputs of a spec (compiled once per spec)."""
    try:
        return _compiled_cached(spec)
    except TypeError:  # unhashable (should not happen for loader-built specs)
        return compile_timing(spec)


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise PimsimError(f"unknown engine backend {backend!r} (known: {', '.join(BACKENDS)})")


def _validate(spec: DramSpec, stream: CommandStream) -> None:
    validate(stream, bankgroups=spec.bankgroups, banks_per_bankgroup=spec.banks_per_bankgroup,
             rows=spec.rows, columns=spec.columns, gb_slots=spec.gb_slots,
             commands=spec.commands, what=f" of {spec.name}")


def _status_error(status: int, spec: DramSpec) -> PimsimError:
    return PimsimError(f"{spec.name}: refresh cannot make progress (nREFI "
                       f"{spec.timing.get('nREFI')} too short for the stream; status {status})")


class EngineState:
    """Where one channel stands after some commands: the kernel's tables (or, for the
    twin, its record history), open rows, pending re-activations, the last issue cycle,
    the next refresh due and the per-bank refresh pointer. :func:`issue` continues from it
    and advances it, so a channel's work can be issued piece by piece with the same
    result as in one go."""

    def __init__(self, spec: DramSpec, backend: str = "numba", refresh_phase: int | None = None):
        from pimsim.engine.kernel import new_state

        _check_backend(backend)
        self.spec = spec
        self.backend = backend
        self.ct = ct = compiled(spec)
        phase = spec.refresh_phase_cycles if refresh_phase is None else refresh_phase
        first_due = ct.refresh_interval - phase % ct.refresh_interval if ct.refresh_interval else 0
        self.arrays = new_state(ct.n_bankgroups, ct.n_banks, ct.win_size, first_due)
        self.history = None
        if backend == "python":
            from pimsim.engine.twin import new_history
            self.history = new_history(ct)

    @property
    def last_cycle(self) -> int:
        """Issue cycle of the last command so far (-1 before any)."""
        return int(self.arrays[-1][0])

    def _snapshot(self):
        import copy
        history = None if self.history is None else copy.deepcopy(self.history)
        return tuple(a.copy() for a in self.arrays), history

    def _restore(self, snap) -> None:
        self.arrays, self.history = snap


def issue(spec: DramSpec, stream: CommandStream, *, backend: str = "numba",
          validate_stream: bool = True, state: EngineState | None = None,
          release: np.ndarray | None = None, _ct: CompiledTiming | None = None) -> IssueResult:
    """Issue one channel's stream at the earliest legal cycles under ``spec``.

    ``state`` continues a channel (it is advanced in place); without it the channel starts
    fresh. Issuing a stream in pieces on one state gives the same cycles as issuing it at
    once, provided no piece ends with a TMOD (a TMOD is placed by the command after it). ``release[i]`` is the earliest cycle at which command i may issue for reasons
    outside the channel (e.g. its input data arriving).
    """
    _check_backend(backend)
    if state is None:
        state = EngineState(spec, backend)
    elif state.spec is not spec and state.spec.digest != spec.digest:
        raise PimsimError("issue(): the state belongs to another spec")
    elif state.backend != backend:
        raise PimsimError(f"issue(): the state belongs to the {state.backend} backend, not {backend}")
    if validate_stream:
        _validate(spec, stream)
    n = len(stream)
    if release is None:
        release = np.zeros(n, dtype=np.int64)
    else:
        release = np.ascontiguousarray(release, dtype=np.int64)
        if release.shape != (n,):
            raise PimsimError(f"issue(): release has shape {release.shape}, the stream has {n} commands")
    ct = _ct if _ct is not None else state.ct
    cap = 64 + n // 8
    snap = state._snapshot()
    while True:
        cycles = np.zeros(n, dtype=np.int64)
        counts = np.zeros(N_COMMANDS, dtype=np.int64)
        ins = {k: np.zeros(cap, dtype=np.int64) for k in ("before", "cmd", "bg", "ba", "row", "cycle")}
        args = ct.kernel_args() + (stream.cmd, stream.bg, stream.ba, stream.row, release,
                                   ct.refresh, ct.refresh_interval) + tuple(state.arrays) + (
                                   cycles, ins["before"], ins["cmd"], ins["bg"], ins["ba"],
                                   ins["row"], ins["cycle"], counts)
        if backend == "numba":
            from pimsim.engine.kernel import run_channel
            status, n_ins, stall = run_channel(*args)
        else:
            from pimsim.engine import twin
            status, n_ins, stall = twin.run_channel(*args, history=state.history)
        if status == -1:
            state._restore(snap)
            snap = state._snapshot()
            cap *= 4
            continue
        if status != 0:
            state._restore(snap)
            raise _status_error(status, spec)
        break
    inserted = {k: v[:n_ins].copy() for k, v in ins.items()}
    inserted["col"] = np.full(n_ins, -1, dtype=np.int64)
    return IssueResult(cycles=cycles, counts=dict(zip(COMMANDS, counts.tolist())),
                       inserted=inserted, refresh_stall_cycles=int(stall))


def issue_postponed_refresh(state: EngineState, until: int, postpone: int, pull_in: int = 0):
    """Issue the all-bank refreshes a controller held back, before the channel's next kernel,
    and pull later ones into the idle time before it.

    With postponing, the state's refresh due cycle (``sc[1]``) is ``postpone`` intervals
    after the oldest refresh not yet issued, so the channel kernel forces a refresh only
    when more than ``postpone`` are outstanding. This issues, in order:

    * every outstanding refresh whose due cycle is at or before ``until`` (the next kernel's
      release): PREA first if a bank is open, then one REFab each, every command at the
      earliest legal cycle and no earlier than its refresh's due cycle;
    * then refreshes not yet due (pulled in), each at the earliest legal cycle, while it
      completes (issue + nRFCab) by ``until`` and, once it is issued, at most ``pull_in``
      refreshes stand issued ahead of their due cycle.

    Returns ``(cycles, stream)`` of what it issued, or None.
    """
    from pimsim.engine.kernel import postponed_refresh

    ct = state.ct
    if ct.refresh != 1 or postpone <= 0:
        return None
    if state.backend != "numba":
        raise PimsimError("issue_postponed_refresh(): needs a numba-backend state")
    if not _channel_wide_ok(ct):
        raise PimsimError(f"{state.spec.name}: postponed refresh needs PREA and REFab free of "
                          f"window rules")
    nx, open_row, reopen, sc = state.arrays[0], state.arrays[4], state.arrays[5], state.arrays[6]
    interval = ct.refresh_interval
    rfc = int(state.spec.timing.get("nRFCab", 0))
    owed = max(0, (until - (int(sc[1]) - postpone * interval)) // interval + 1)
    cap = owed + 1 + max(pull_in, 0)
    cmd = np.empty(cap, dtype=np.int64)
    cycles = np.empty(cap, dtype=np.int64)
    n = postponed_refresh(nx, open_row, reopen, sc, ct.all_ptr, ct.all_to, ct.all_lat, until,
                          postpone, pull_in, interval, rfc, cmd, cycles)
    if n < 0:
        raise PimsimError(f"{state.spec.name}: a pulled-in refresh was not {rfc} cycles after "
                          f"the one before it")
    if n == 0:
        return None
    neg = np.full(n, -1, dtype=np.int64)
    return cycles[:n], CommandStream(cmd=cmd[:n], bg=neg, ba=neg.copy(), row=neg.copy(),
                                     col=neg.copy(), source="refresh")


@functools.lru_cache(maxsize=32)
def _channel_wide_ok(ct: CompiledTiming) -> bool:
    from pimsim.engine.compile import PREA, REFAB

    c = [PREA, REFAB]
    return bool(ct.addr_all[c].all() and not (ct.win_from[:, c].any() or ct.win_to[:, c].any()))


@dataclass(frozen=True, eq=False)
class RepeatResult:
    """What :func:`issue_repeated` returns."""

    counts: dict[str, int]
    #: Last issue cycle on the channel (inserted commands included).
    last_cycle: int
    refresh_stall_cycles: int
    inserted: int
    #: Blocks issued command by command (the rest were jumped over exactly).
    blocks_in_full: int
    #: Issue cycle of every block command (blocks x block length) when asked for.
    cycles: np.ndarray | None = None


def issue_repeated(spec: DramSpec, block: CommandStream, row_bases, *,
                   state: EngineState | None = None, not_before: int = 0,
                   with_cycles: bool = False, validate_stream: bool = True) -> RepeatResult:
    """Issue ``block`` once per entry of ``row_bases`` (its rows offset by the entry), the
    first command no earlier than ``not_before``; exactly as :func:`issue` on the whole
    concatenated stream would, but jumping over the steady stretches between refreshes
    (:mod:`pimsim.engine.fastforward`). Numba backend; ``state`` is continued if given."""
    from pimsim.engine.fastforward import run_repeated

    bases = np.ascontiguousarray(row_bases, dtype=np.int64)
    if bases.ndim != 1:
        raise PimsimError("issue_repeated(): row_bases must be one-dimensional")
    if len(block) == 0:
        raise PimsimError("issue_repeated(): empty block")
    if spec.tmod_lookahead and block.cmd[-1] == CMD_ID["TMOD"]:
        raise PimsimError("issue_repeated(): a block must not end with TMOD (it is placed by "
                          "the command after it)")
    if state is None:
        state = EngineState(spec)
    elif state.backend != "numba":
        raise PimsimError("issue_repeated(): needs a numba-backend state")
    if validate_stream and bases.size:
        rows = block.row[block.row >= 0]
        if rows.size and (bases.min() + rows.min() < 0 or bases.max() + rows.max() >= spec.rows):
            raise PimsimError(f"issue_repeated(): rows {bases.min() + rows.min()}.."
                              f"{bases.max() + rows.max()} out of range 0..{spec.rows - 1}")
        _validate(spec, block)
    ct = compiled(spec)
    counts = np.zeros(N_COMMANDS, dtype=np.int64)
    cycles = np.zeros((bases.size, len(block)) if with_cycles else (1, 1), dtype=np.int64)
    snap = state._snapshot()
    status, full, stall, inserted = run_repeated(
        *ct.kernel_args(), block.cmd, block.bg, block.ba, block.row, bases, int(not_before),
        ct.refresh, ct.refresh_interval, *state.arrays, cycles, counts, with_cycles)
    if status != 0:
        state._restore(snap)
        if status == -1:
            raise PimsimError("issue_repeated(): a block inserted more refresh commands than "
                              "the block buffer holds; issue the stream with issue()")
        raise _status_error(status, spec)
    return RepeatResult(counts=dict(zip(COMMANDS, counts.tolist())), last_cycle=state.last_cycle,
                        refresh_stall_cycles=int(stall), inserted=int(inserted),
                        blocks_in_full=int(full), cycles=cycles if with_cycles else None)


def issue_channels(spec: DramSpec, streams: CommandStream | list[CommandStream], *,
                   channels: int | None = None, refresh_phases: list[int] | None = None,
                   validate_stream: bool = True) -> list[IssueResult]:
    """Issue several channels at once (numba, channels in parallel).

    ``streams`` is one stream per channel, or a single stream that drives ``channels``
    channels in lock-step (default: the spec's channel count). ``refresh_phases`` gives each
    channel's refresh phase in cycles (default: the spec's phase for every channel).
    """
    from pimsim.engine.kernel import run_channels

    if isinstance(streams, CommandStream):
        k = spec.channels if channels is None else channels
        if validate_stream:
            _validate(spec, streams)
        n = len(streams)
        cmd, bg, ba, row = streams.cmd, streams.bg, streams.ba, streams.row
        starts = np.zeros(k, dtype=np.int64)
        lengths = np.full(k, n, dtype=np.int64)
    else:
        k = len(streams)
        if channels is not None and channels != k:
            raise PimsimError(f"{k} streams given for {channels} channels")
        if validate_stream:
            for s in streams:
                _validate(spec, s)
        lengths = np.array([len(s) for s in streams], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        cmd, bg, ba, row = (np.concatenate([getattr(s, f) for s in streams]) if k else
                            np.zeros(0, dtype=np.int64) for f in ("cmd", "bg", "ba", "row"))
    if k == 0:
        return []
    out_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    ct = compiled(spec)
    phases = refresh_phases if refresh_phases is not None else [spec.refresh_phase_cycles] * k
    if len(phases) != k:
        raise PimsimError(f"{len(phases)} refresh phases given for {k} channels")
    if ct.refresh_interval:
        first_due = np.array([ct.refresh_interval - p % ct.refresh_interval for p in phases], dtype=np.int64)
    else:
        first_due = np.zeros(k, dtype=np.int64)
    cap = 64 + int(lengths.max()) // 8
    while True:
        cycles = np.zeros(int(lengths.sum()), dtype=np.int64)
        counts = np.zeros((k, N_COMMANDS), dtype=np.int64)
        ins = {f: np.zeros((k, cap), dtype=np.int64) for f in ("before", "cmd", "bg", "ba", "row", "cycle")}
        status = np.zeros(k, dtype=np.int64)
        n_ins = np.zeros(k, dtype=np.int64)
        stall = np.zeros(k, dtype=np.int64)
        run_channels(*ct.kernel_args(), cmd, bg, ba, row, starts, lengths, out_starts,
                     ct.refresh, ct.refresh_interval, first_due, cycles, ins["before"],
                     ins["cmd"], ins["bg"], ins["ba"], ins["row"], ins["cycle"], counts,
                     status, n_ins, stall)
        if (status == -1).any():
            cap *= 4
            continue
        bad = status[status != 0]
        if bad.size:
            raise _status_error(int(bad[0]), spec)
        break
    results = []
    for c in range(k):
        m = int(n_ins[c])
        inserted = {f: ins[f][c, :m].copy() for f in ins}
        inserted["col"] = np.full(m, -1, dtype=np.int64)
        o = out_starts[c]
        results.append(IssueResult(cycles=cycles[o:o + lengths[c]].copy(),
                                   counts=dict(zip(COMMANDS, counts[c].tolist())),
                                   inserted=inserted, refresh_stall_cycles=int(stall[c])))
    return results


def merge_log(stream: CommandStream, result: IssueResult) -> tuple[np.ndarray, CommandStream]:
    """The full issued log (input and inserted commands) in issue order."""
    ins = result.inserted
    n, m = len(stream), ins["cycle"].size
    if m == 0:
        return result.cycles, stream
    # inserted command j goes before input command ins["before"][j], after earlier inserted ones
    pos = np.concatenate([np.arange(n) * 2 + 1, ins["before"] * 2])
    order = np.argsort(pos, kind="stable")
    cat = lambda a, b: np.concatenate([a, b])[order]  # noqa: E731
    merged = CommandStream(cmd=cat(stream.cmd, ins["cmd"]), bg=cat(stream.bg, ins["bg"]),
                           ba=cat(stream.ba, ins["ba"]), row=cat(stream.row, ins["row"]),
                           col=cat(stream.col, ins["col"]), source=stream.source)
    assert merged.cmd.size == n + m
    return cat(result.cycles, ins["cycle"]), merged


def check(spec: DramSpec, cycles: np.ndarray, stream: CommandStream, *, state: bool = True,
          limit: int | None = None):
    """Protocol-check a log; returns the list of violations (empty when clean)."""
    from pimsim.engine.checker import check_log

    return check_log(spec, cycles, stream.cmd, stream.bg, stream.ba, stream.row, stream.col,
                     state=state, limit=limit)
