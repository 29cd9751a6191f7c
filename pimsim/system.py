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

from pimsim.asic import op_cost
from pimsim.config import SystemSpec
from pimsim.engine import EngineState, check, issue, merge_log
from pimsim.errors import PimsimError
from pimsim.standard import CMD_ID, COMMANDS

KERNEL, ASIC, TRANSFER = "kernel", "asic", "transfer"

#: what a channel cycle after each command is spent on
COMMAND_CLASS = {"ACT": "activate", "ACT16": "activate", "MAC16": "mac", "RD": "read_write",
                 "WR": "read_write", "PRE": "precharge", "PREA": "precharge", "REFab": "refresh",
                 "REFpb": "refresh", "WRGB": "buffer_load", "RDMAC16": "result_readout",
                 "TMOD": "mode_switch"}
_CLASS_OF = np.array([sorted(set(COMMAND_CLASS.values())).index(COMMAND_CLASS[c]) for c in COMMANDS])
_CLASSES = sorted(set(COMMAND_CLASS.values()))


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

    def __init__(self, spec: SystemSpec, *, keep_timeline: bool = False, keep_logs: bool = False):
        if spec.asic is None:
            raise PimsimError(f"preset {spec.name} has no 'asic' section; the system simulator needs one")
        self.spec = spec
        self.dram = spec.dram
        self.tck = spec.dram.tCK_ps
        self.asic_ps = spec.asic.cycle_ps
        self.link_latency_ps = spec.link_latency_ps
        self.env = simpy.Environment()
        self.channels = [EngineState(spec.dram) for _ in range(spec.dram.channels)]
        self.channel_res = [simpy.Resource(self.env, 1) for _ in range(spec.dram.channels)]
        self.asic_res = simpy.Resource(self.env, 1)
        self.keep_timeline = keep_timeline
        self.keep_logs = keep_logs
        self.logs: list[list] = [[] for _ in range(spec.dram.channels)]
        t = spec.dram.timing
        self._read_tail = {CMD_ID["RD"]: t.get("nCL", 0) + t.get("nBL", 0),
                           CMD_ID["RDMAC16"]: t.get("nCLREG", 0) + t.get("nBL", 0)}

    # ------------------------------------------------------------------ processes
    def _kernel(self, item, stats: StepStats):
        c = item.channel
        with self.channel_res[c].request() as req:
            yield req
            start = self.env.now
            stream = item.commands(self.spec)
            if len(stream) == 0:
                return start, start
            release = np.zeros(len(stream), dtype=np.int64)
            release[0] = -(-start // self.tck)
            res = issue(self.dram, stream, state=self.channels[c], release=release,
                        validate_stream=False)
            last = self.channels[c].last_cycle
            # data of the kernel's reads return after their latency
            tail = 1
            for code, lat in self._read_tail.items():
                idx = np.flatnonzero(stream.cmd == code)
                if idx.size:
                    tail = max(tail, int(res.cycles[idx[-1]]) + lat - last)
            issue_end = (last + 1) * self.tck
            done = (last + tail) * self.tck
            for k, v in res.counts.items():
                if v:
                    stats.counts[k] = stats.counts.get(k, 0) + v
            stats.refresh_stall_cycles += res.refresh_stall_cycles
            ins = res.inserted
            if ins["cycle"].size:
                # issue cycles strictly increase in issue order: sorting merges the log
                cyc = np.concatenate([res.cycles, ins["cycle"]])
                order = np.argsort(cyc, kind="stable")
                cyc, cmds = cyc[order], np.concatenate([stream.cmd, ins["cmd"]])[order]
            else:
                cyc, cmds = res.cycles, stream.cmd
            spans = np.empty(cyc.size, dtype=np.int64)
            spans[:-1] = np.diff(cyc)
            spans[-1] = 1
            per_class = np.bincount(_CLASS_OF[cmds], weights=spans, minlength=len(_CLASSES))
            for name, v in zip(_CLASSES, per_class.tolist()):
                if v:
                    stats.channel_cycles[name] = stats.channel_cycles.get(name, 0) + int(v)
            if self.keep_logs:
                self.logs[c].append(merge_log(stream, res))
            yield self.env.timeout(max(issue_end - self.env.now, 0))
        # the channel is free; the results arrive when the last read's data is back
        if done > self.env.now:
            yield self.env.timeout(done - self.env.now)
        return start, self.env.now

    def _asic(self, item, stats: StepStats):
        cost = op_cost(self.spec.asic, item.kind, item.elements, getattr(item, "detail", None))
        with self.asic_res.request() as req:
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
        ready, via, delay = self.env.now, None, 0
        for _, pred, lat in deps:
            arrive = times[pred][2] + lat
            if via is None or arrive > ready or (arrive == ready and pred > via):
                ready, via, delay = max(arrive, ready), pred, lat
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
