"""The system simulator: one decode step's program run on the ASIC, the links and the
cycle-accurate channel engines, event-driven with SimPy.

A program is a DAG (networkx) whose nodes carry an ``item``: a PIM kernel (anything with
``channel`` and ``commands()`` returning a :class:`pimsim.engine.CommandStream`), an ASIC
operator (``kind``, ``elements``, ``detail``) or a transfer (``direction``, ``channel``,
``bytes``). Edges are data dependencies. Each node is one SimPy process that waits for its
predecessors, takes its resource and holds it for the time the model gives:

* a kernel holds its channel while the channel engine issues its commands, continuing the
  channel's state (open rows, timing history, refresh schedule) from the previous kernel;
  its first command is released no earlier than the moment its inputs are ready, so every
  DRAM command, refresh included, is timed cycle-accurately by the engine, with no Python
  event per command. Its results are ready when the last read's data returns;
* an ASIC operator holds the ASIC for the cycles :func:`pimsim.asic.op_cost` gives;
* a transfer takes the link latency; its bytes cross the pins as the WRGB, WR, RD and
  RDMAC16 commands of the kernels next to it, whose data-bus spacing the engine enforces.

Times are integer picoseconds. The event core knows only time (SimPy); hardware meaning
stays in the node processes. Library code: it returns data and never prints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import simpy
from numba import njit

from pimsim.asic import op_cost
from pimsim.config import SystemSpec
from pimsim.engine import EngineState, check, issue, merge_log
from pimsim.errors import PimsimError
from pimsim.standard import CMD_ID, COMMANDS

KERNEL, ASIC, TRANSFER = "kernel", "asic", "transfer"
#: bounds of the kernel-run store: distinct command streams, entry states per stream
_MEMO_STREAMS, _MEMO_STATES = 8192, 64
#: a stream none of whose first runs could be stored is not keyed any more
_MEMO_GIVE_UP = 4

#: what a channel cycle after each command is spent on
COMMAND_CLASS = {"ACT": "activate", "ACT16": "activate", "MAC16": "mac", "RD": "read_write",
                 "WR": "read_write", "PRE": "precharge", "PREA": "precharge", "REFab": "refresh",
                 "REFpb": "refresh", "WRGB": "buffer_load", "RDMAC16": "result_readout",
                 "TMOD": "mode_switch"}
_CLASS_OF = np.array([sorted(set(COMMAND_CLASS.values())).index(COMMAND_CLASS[c]) for c in COMMANDS])
_CLASSES = sorted(set(COMMAND_CLASS.values()))


def _priority(item) -> int:
    """Program order of a node's operator (lower first when several wait for a resource)."""
    return int(getattr(item, "op_index", -1))


def node_kind(item) -> str:
    if hasattr(item, "commands") and hasattr(item, "channel"):
        return KERNEL
    if hasattr(item, "direction") and hasattr(item, "bytes"):
        return TRANSFER
    if hasattr(item, "elements") and hasattr(item, "kind"):
        return ASIC
    raise PimsimError(f"program node of unknown type {type(item).__name__}")


@dataclass
class StepStats:
    """What one decode step did."""

    start_ps: int
    end_ps: int
    #: busy picoseconds per category (kernels by their ``what``, ``asic``, ``transfer``)
    busy_ps: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    refresh_stall_cycles: int = 0
    asic: dict[str, int] = field(default_factory=dict)
    transfer_bytes: dict[str, int] = field(default_factory=dict)
    #: (name, category, channel or -1, start ps, end ps) per node, when a timeline is kept
    timeline: list[tuple] | None = None
    #: picoseconds of the step's critical path by category; "wait" is time a node on the
    #: path was ready but queued for its resource (sums to the step latency)
    critical_ps: dict[str, int] = field(default_factory=dict)
    #: channel cycles by what they were spent on, summed over channels: each interval
    #: between two commands of a kernel goes to the command before it (the one whose
    #: timing the next command waits out), the last command of a kernel gets one cycle
    channel_cycles: dict[str, int] = field(default_factory=dict)

    @property
    def latency_ps(self) -> int:
        return self.end_ps - self.start_ps


class SystemSimulator:
    """Runs decode-step programs one after another on one system; channel state persists."""

    def __init__(self, spec: SystemSpec, *, keep_timeline: bool = False, keep_logs: bool = False,
                 memo: bool = True):
        if spec.asic is None:
            raise PimsimError(f"preset {spec.name} has no 'asic' section; the system simulator needs one")
        self.spec = spec
        self.dram = spec.dram
        self.tck = spec.dram.tCK_ps
        self.asic_ps = spec.asic.cycle_ps
        self.link_latency_ps = spec.link_latency_ps
        self.env = simpy.Environment()
        self.channels = [EngineState(spec.dram) for _ in range(spec.dram.channels)]
        # a freed resource goes to the waiting node earliest in program order (op index)
        self.channel_res = [simpy.PriorityResource(self.env, 1) for _ in range(spec.dram.channels)]
        self.asic_res = simpy.PriorityResource(self.env, 1)
        self.keep_timeline = keep_timeline
        self.keep_logs = keep_logs
        self.logs: list[list] = [[] for _ in range(spec.dram.channels)]
        t = spec.dram.timing
        #: per command: cycles from its issue until its data is back at the ASIC (-1: no data)
        self._tail_of = np.full(len(COMMANDS), -1, dtype=np.int64)
        self._tail_of[CMD_ID["RD"]] = t.get("nCL", 0) + t.get("nBL", 0)
        self._tail_of[CMD_ID["RDMAC16"]] = t.get("nCLREG", 0) + t.get("nBL", 0)
        #: replay identical kernel runs (exact; see _issue_kernel)
        self.memo = memo
        self.memo_hits = 0
        self._memo: dict = {}
        ct = self.channels[0].ct
        self._refresh_on = bool(ct.refresh)
        self._in_window = (ct.win_from.any(axis=0) | ct.win_to.any(axis=0)).astype(bool)

    # ------------------------------------------------------------------ processes
    def _kernel(self, item, stats: StepStats):
        c = item.channel
        with self.channel_res[c].request(priority=_priority(item)) as req:
            yield req
            start = self.env.now
            stream = item.commands(self.spec)
            if len(stream) == 0:
                return start, start
            not_before = -(-start // self.tck)
            run = self._issue_kernel(c, stream, not_before)
            last = self.channels[c].last_cycle
            issue_end = (last + 1) * self.tck
            done = (last + run.tail) * self.tck
            for k, v in run.counts.items():
                if v:
                    stats.counts[k] = stats.counts.get(k, 0) + v
            stats.refresh_stall_cycles += run.stall
            for k, v in run.classes.items():
                stats.channel_cycles[k] = stats.channel_cycles.get(k, 0) + v
            if self.keep_logs:
                self.logs[c].append(run.log(stream))
            yield self.env.timeout(max(issue_end - self.env.now, 0))
        # the channel is free; the results arrive when the last read's data is back
        if done > self.env.now:
            yield self.env.timeout(done - self.env.now)
        return start, self.env.now

    def _issue_kernel(self, c: int, stream, not_before: int) -> "_KernelRun":
        """Issue one kernel on channel ``c``, or replay a stored identical run.

        A run is stored when no refresh fell due during it. Its outcome depends on the
        channel state only relative to its first possible cycle ``base`` (the later of the
        release and the cycle after the last issue): timing limits at or before ``base``
        bind nothing, rows compare by equality. The same command arrays issued later from
        the same relative state, with the next refresh due after the stored run's last
        command, therefore issue at the stored cycles shifted by the new ``base``; the
        engine's refresh logic only acts on commands at or after the due cycle."""
        st = self.channels[c]
        nx, ring, wcount, whead, open_row, reopen, sc = st.arrays
        base = max(not_before, int(sc[0]) + 1)
        key = entry = slot = None
        if self.memo:
            slot = self._memo.get(id(stream.cmd))
            if slot is None or slot.cmd is not stream.cmd:
                if len(self._memo) >= _MEMO_STREAMS:
                    self._memo.clear()
                slot = self._memo[id(stream.cmd)] = _Slot(stream.cmd, self._memo_able(stream))
            if not slot.active:
                slot = None
        if slot is not None:
            rel = nx - base
            np.maximum(rel, 0, out=rel)
            key = (rel.tobytes(), open_row.tobytes(), reopen.tobytes(), int(sc[3]))
            entry = slot.runs.get(key)
            if entry is None:
                slot.misses += 1
            elif not self._refresh_on or int(sc[1]) - base > entry.last_rel:
                self.memo_hits += 1
                touched = entry.end_nx >= 0
                nx[touched] = entry.end_nx[touched] + base
                open_row[:] = entry.end_open
                reopen[:] = entry.end_reopen
                sc[0] = base + entry.last_rel
                sc[3] = entry.end_n_reopen
                return entry.shifted(base)
        release = np.zeros(len(stream), dtype=np.int64)
        release[0] = not_before
        res = issue(self.dram, stream, state=st, release=release, validate_stream=False)
        ins = res.inserted
        classes, tail = _account(res.cycles, stream.cmd, ins["cycle"], ins["cmd"],
                                 self._tail_of)
        run = _KernelRun({k: v for k, v in res.counts.items() if v},
                         {k: v for k, v in zip(_CLASSES, classes.tolist()) if v},
                         int(res.refresh_stall_cycles), tail, res)
        if key is not None and ins["cycle"].size == 0 and (not self._refresh_on
                                                           or int(sc[1]) > int(sc[0])):
            end_nx = nx - base
            end_nx[nx < base] = -1
            if len(slot.runs) >= _MEMO_STATES:
                slot.runs.clear()
            slot.runs[key] = _Stored(res.cycles - base, int(sc[0]) - base, end_nx, open_row.copy(),
                                   reopen.copy(), int(sc[3]), run)
        if slot is not None and not slot.runs and slot.misses >= _MEMO_GIVE_UP:
            slot.active = False   # its runs keep meeting refresh: stop keying them
        return run

    def _memo_able(self, stream) -> bool:
        """Stored runs keep no four-activate-window history: only streams with no command
        in a window rule are replayed."""
        return not self._in_window[stream.cmd].any()

    def _asic(self, item, stats: StepStats):
        cost = op_cost(self.spec.asic, item.kind, item.elements, getattr(item, "detail", None))
        with self.asic_res.request(priority=_priority(item)) as req:
            yield req
            start = self.env.now
            yield self.env.timeout(int(math.ceil(cost.cycles * self.asic_ps)))
        for k in ("adds", "muls", "int_ops", "sram_read_bytes", "sram_write_bytes"):
            stats.asic[k] = stats.asic.get(k, 0) + getattr(cost, k)
        stats.asic["cycles"] = stats.asic.get("cycles", 0) + cost.cycles
        return start, self.env.now

    def _node(self, name, item, kind, deps, stats: StepStats, category: str, times: dict):
        # deps: (process, predecessor name, link delay in ps) per data dependency
        if deps:
            yield simpy.AllOf(self.env, list(dict.fromkeys(d[0] for d in deps)))
        # the input that arrived last (ties: the larger name) is the one the node waited for
        via, delay, last = None, 0, None
        for _, pred, lat in deps:
            arrive = times[pred][2] + lat
            if last is None or arrive > last or (arrive == last and pred > via):
                last, via, delay = arrive, pred, lat
        ready = self.env.now if last is None else max(self.env.now, last)
        if ready > self.env.now:
            yield self.env.timeout(ready - self.env.now)
        if kind == KERNEL:
            start, end = yield from self._kernel(item, stats)
        else:
            start, end = yield from self._asic(item, stats)
        stats.busy_ps[category] = stats.busy_ps.get(category, 0) + (end - start)
        times[name] = (ready, start, end, category, via, delay)
        if stats.timeline is not None:
            ch = getattr(item, "channel", -1)
            stats.timeline.append((name, category, ch, start, end))

    # ------------------------------------------------------------------ public
    def run_step(self, program) -> StepStats:
        """Run one program from the current time; returns its stats.

        Transfers hold no resource, so they are not processes of their own: a node whose
        input comes through a transfer waits the link latency after its producer finished
        (exactly what a transfer process would give), which halves the events per step."""
        import networkx as nx

        g = program.graph
        stats = StepStats(start_ps=self.env.now, end_ps=self.env.now,
                          timeline=[] if self.keep_timeline else None)
        procs = {}
        times: dict = {}
        kinds = {n: node_kind(g.nodes[n]["item"]) for n in g.nodes}

        def sources(name, lat, out):
            """(producer, accumulated link delay) behind a predecessor."""
            if kinds[name] != TRANSFER:
                out.append((name, lat))
                return
            for p in g.predecessors(name):
                sources(p, lat + self.link_latency_ps, out)
            if g.in_degree(name) == 0:
                out.append((None, lat))

        for name in nx.topological_sort(g):
            item = g.nodes[name]["item"]
            kind = kinds[name]
            if kind == TRANSFER:
                d = item.direction
                stats.transfer_bytes[d] = stats.transfer_bytes.get(d, 0) + item.bytes
                continue
            category = getattr(item, "what", None) if kind == KERNEL else kind
            found: list = []
            for p in g.predecessors(name):
                sources(p, 0, found)
            start_delay = max((lat for p, lat in found if p is None), default=0)
            deps = [(procs[p], p, lat) for p, lat in found if p is not None]
            if start_delay:
                deps.append((self.env.timeout(start_delay), "", 0))
            procs[name] = self.env.process(self._node(name, item, kind, deps, stats, category, times))
        times[""] = (stats.start_ps, stats.start_ps, stats.start_ps, "wait", None, 0)
        self.env.run()
        stats.end_ps = self.env.now
        del times[""]
        stats.critical_ps = _critical_path(times, stats.start_ps, stats.end_ps)
        if stats.timeline is not None:
            for name in g.nodes:
                if kinds[name] == TRANSFER:
                    ends = [times[p][2] for p in g.predecessors(name) if p in times]
                    t0 = max(ends, default=stats.start_ps)
                    it = g.nodes[name]["item"]
                    stats.timeline.append((name, TRANSFER, it.channel, t0, t0 + self.link_latency_ps))
        return stats

    def check_logs(self) -> list:
        """Protocol-check every channel's full command log (needs ``keep_logs``)."""
        from pimsim.engine import CommandStream

        out = []
        for c, parts in enumerate(self.logs):
            if not parts:
                continue
            cycles = np.concatenate([p[0] for p in parts])
            fields = {f: np.concatenate([getattr(p[1], f) for p in parts])
                      for f in ("cmd", "bg", "ba", "row", "col")}
            out += [(c, v) for v in check(self.dram, cycles, CommandStream(**fields))]
        return out


@dataclass
class _KernelRun:
    """One kernel's issue: counts, channel cycles by class, refresh stall, and the cycles
    after the last issue until its last read's data is back."""

    counts: dict
    classes: dict
    stall: int
    tail: int
    result: object = None     # IssueResult of an issued run
    cycles: np.ndarray | None = None   # issue cycles of a replayed run

    def log(self, stream):
        if self.result is not None:
            return merge_log(stream, self.result)
        return self.cycles, stream


@dataclass
class _Slot:
    """The stored runs of one command stream (kept alive by ``cmd``, its identity)."""

    cmd: np.ndarray
    active: bool              # worth keying: no window commands, not given up
    runs: dict = field(default_factory=dict)   # relative entry state -> _Stored
    misses: int = 0


@dataclass
class _Stored:
    cycles_rel: np.ndarray
    last_rel: int
    end_nx: np.ndarray        # end timing state relative to base; -1 where untouched and < base
    end_open: np.ndarray
    end_reopen: np.ndarray
    end_n_reopen: int
    run: _KernelRun

    def shifted(self, base: int) -> _KernelRun:
        r = self.run
        return _KernelRun(r.counts, r.classes, 0, r.tail, None, self.cycles_rel + base)


@njit(cache=True)
def _account_nb(cycles, cmd, ins_cycle, ins_cmd, class_of, n_classes, tail_of):
    """Channel cycles by class (each gap between consecutive issued commands goes to the
    command before it, the last command gets one cycle) and the data tail after the last
    issue; input and inserted commands are both in increasing cycle order."""
    out = np.zeros(n_classes, dtype=np.int64)
    n = cycles.shape[0]
    m = ins_cycle.shape[0]
    i = 0
    j = 0
    have = False
    pc = 0
    pk = 0
    last_read_end = -1
    while i < n or j < m:
        if j >= m or (i < n and cycles[i] < ins_cycle[j]):
            t = cycles[i]
            k = cmd[i]
            lat = tail_of[k]
            if lat >= 0 and t + lat > last_read_end:
                last_read_end = t + lat
            i += 1
        else:
            t = ins_cycle[j]
            k = ins_cmd[j]
            j += 1
        if have:
            out[class_of[pk]] += t - pc
        have = True
        pc = t
        pk = k
    if have:
        out[class_of[pk]] += 1
    tail = 1
    if last_read_end - pc > tail:
        tail = last_read_end - pc
    return out, tail


def _account(cycles, cmd, ins_cycle, ins_cmd, tail_of):
    out, tail = _account_nb(cycles, cmd, ins_cycle, ins_cmd, _CLASS_OF, len(_CLASSES), tail_of)
    return out, int(tail)


def _critical_path(times: dict, start_ps: int, end_ps: int) -> dict[str, int]:
    """Walk back from the node that finished last through the input that arrived last:
    each node on the path adds its run time to its category, the link latency on the way
    to "transfer", and the time it waited for its resource to "wait"."""
    out: dict[str, int] = {}
    if not times:
        out["wait"] = end_ps - start_ps
        return out
    node = max(times, key=lambda n: (times[n][2], n))
    t = end_ps
    while node is not None:
        ready, start, end, cat, via, delay = times[node]
        out[cat] = out.get(cat, 0) + (min(end, t) - start)
        out["wait"] = out.get("wait", 0) + (start - ready) + (t - min(end, t))
        if delay:
            out["transfer"] = out.get("transfer", 0) + delay
        t = ready - delay
        node = via if via in times else None
    out["wait"] = out.get("wait", 0) + (t - start_ps)
    return out


__all__ = ["SystemSimulator", "StepStats", "node_kind", "COMMANDS"]
