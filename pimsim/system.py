"""The system simulator: one decode step's program run on the ASIC, the links and the
cycle-accurate channel engines, event-driven with SimPy.

A program is a DAG (networkx) whose nodes carry an ``item``: a PIM kernel (anything with
``channel`` and ``commands()`` returning a :class:`pimsim.engine.CommandStream`), an ASIC
operator (``kind``, ``elements``, ``detail``) or a transfer (``direction``, ``channel``,
``bytes``). Edges are data dependencies. Each node waits for its predecessors, takes its
resource and holds it for the time the model gives:

* a kernel holds its channel while the channel engine issues its commands, continuing the
  channel's state (open rows, timing history, refresh schedule) from the previous kernel;
  its first command is released no earlier than the moment its inputs are ready, so every
  DRAM command, refresh included, is timed cycle-accurately by the engine, with no Python
  event per command. Its results are ready when the last read's data returns;
* an ASIC operator holds the ASIC for the cycles :func:`pimsim.asic.op_cost` gives;
* a transfer takes the link latency; its bytes cross the pins as the WRGB, WR, RD and
  RDMAC16 commands of the kernels next to it, whose data-bus spacing the engine enforces.

A resource falls to the waiting node with the least (operator index, ready time, program
position) at the end of each instant. Three schedulers give this same schedule: the
default, a compiled time-ordered event list over the step's arrays (``"compiled"``,
:mod:`pimsim.stepkernel`, with a finer store of kernel runs); the same event list in
Python (``"listed"``), and SimPy processes (``"simpy"``); tests require identical results.

Times are integer picoseconds. The event core knows only time; hardware meaning stays in
the node work. Library code: it returns data and never prints.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np
import simpy

from pimsim.asic import op_cost
from pimsim.config import SystemSpec
from pimsim.engine import EngineState, check, issue, issue_postponed_refresh, merge_log
from pimsim.errors import PimsimError
from pimsim.standard import CMD_ID, COMMANDS
from pimsim import stepkernel as sk
from pimsim.stepkernel import account_run

KERNEL, ASIC, TRANSFER = "kernel", "asic", "transfer"
SCHEDULERS = ("compiled", "listed", "simpy")
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
_ASIC_COUNTS = ("adds", "muls", "int_ops", "sram_read_bytes", "sram_write_bytes")


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


def _same_node(a, b) -> bool:
    """Whether program item ``a`` gives the scheduler the same node as ``b`` (the same
    command stream, channel, priority and category; the same ASIC work; the same transfer):
    items say so through a ``same_node`` method (the item classes of
    :mod:`mappings.program` have one); others only when identical."""
    f = getattr(a, "same_node", None)
    return f is not None and type(a) is type(b) and f(b)


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
    #: run time of the critical path's nodes by the trace op they belong to (op index ->
    #: ps; a node's op index is the prefix of its name): the path's time less "wait" and
    #: "transfer"
    critical_by_op_ps: dict[int, int] = field(default_factory=dict)
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
                 memo: bool = True, scheduler: str = "compiled"):
        if spec.asic is None:
            raise PimsimError(f"preset {spec.name} has no 'asic' section; the system simulator needs one")
        self.spec = spec
        self.dram = spec.dram
        self.tck = spec.dram.tCK_ps
        self.asic_ps = spec.asic.cycle_ps
        self.link_latency_ps = spec.link_latency_ps
        if scheduler not in SCHEDULERS:
            raise PimsimError(f"unknown scheduler {scheduler!r} (known: {', '.join(SCHEDULERS)})")
        #: "compiled" (default), "listed" or "simpy": the same schedule, from the compiled
        #: event list, the Python event list or SimPy processes (tests require identical
        #: results); kept command logs come from the Python schedulers
        self.scheduler = scheduler
        self._compiled = None
        self._info: dict = {}
        self._plans: dict = {}
        self.env = simpy.Environment()
        self._now = 0
        self.channels = [EngineState(spec.dram) for _ in range(spec.dram.channels)]
        # a freed resource goes to the waiting node earliest in program order (op index);
        # the channels' arbiters, then the ASIC's
        self._arbiters = [_Arbiter(self.env) for _ in range(spec.dram.channels + 1)]
        self.keep_timeline = keep_timeline
        self.keep_logs = keep_logs
        self.logs: list[list] = [[] for _ in range(spec.dram.channels)]
        t = spec.dram.timing
        #: per command k: [0, k] cycles from its issue until its data is back at the ASIC
        #: (-1: no data); [1, k] the most channel cycles an engine-inserted k is charged
        #: (0: no limit): a refresh inserted into idle time blocks the channel for nRFC,
        #: and the wait beyond that for the next kernel's first command is idle
        self._cmd_acct = np.full((2, len(COMMANDS)), -1, dtype=np.int64)
        self._cmd_acct[1] = 0
        self._cmd_acct[0, CMD_ID["RD"]] = t.get("nCL", 0) + t.get("nBL", 0)
        self._cmd_acct[0, CMD_ID["RDMAC16"]] = t.get("nCLREG", 0) + t.get("nBL", 0)
        for name, key in (("REFab", "nRFCab"), ("REFpb", "nRFCpb")):
            if name in CMD_ID:
                self._cmd_acct[1, CMD_ID[name]] = t.get(key, 0)
        #: replay identical kernel runs (exact; see _issue_kernel)
        self.memo = memo
        self.memo_hits = 0
        #: kernels issued command by command (not replayed), and their commands
        self.issued_runs = 0
        self.issued_commands = 0
        self._memo: dict = {}
        ct = self.channels[0].ct
        self._refresh_on = bool(ct.refresh)
        #: all-bank refreshes held back while kernels stream, issued before the channel's
        #: next kernel; the engine forces one only when more would be outstanding
        self.postpone = spec.dram.refresh_postpone if ct.refresh == 1 else 0
        self.pull_in = spec.dram.refresh_pull_in if self.postpone else 0
        if self.postpone:
            for st in self.channels:
                st.arrays[-1][1] += self.postpone * ct.refresh_interval
        t = spec.dram.timing
        self._blocks = {CMD_ID["REFab"]: t.get("nRFCab", 0), CMD_ID["PREA"]: t.get("nRP", 0)}
        self._in_window = (ct.win_from.any(axis=0) | ct.win_to.any(axis=0)).astype(bool)

    # ------------------------------------------------------------------ node work
    def _start_kernel(self, item, stats: StepStats, start: int) -> tuple[int, int]:
        """Issue a kernel granted its channel at ``start`` (ps): postponed refreshes first,
        then its commands. Returns when the channel falls free and when its results are
        ready (ps)."""
        c = item.channel
        stream = item.commands(self.spec)
        if len(stream) == 0:
            return start, start
        not_before = -(-start // self.tck)
        prev0 = self.channels[c].last_cycle
        flushed = (issue_postponed_refresh(self.channels[c], not_before, self.postpone,
                                           self.pull_in)
                   if self.postpone else None)
        run = self._issue_kernel(c, stream, not_before)
        if flushed is not None:
            self._account_flush(c, flushed, run, not_before, prev0, stats)
        last = self.channels[c].last_cycle
        free = max((last + 1) * self.tck, start)
        done = (last + run.tail) * self.tck
        for k, v in run.counts.items():
            if v:
                stats.counts[k] = stats.counts.get(k, 0) + v
        stats.refresh_stall_cycles += run.stall
        for k, v in run.classes.items():
            stats.channel_cycles[k] = stats.channel_cycles.get(k, 0) + v
        if self.keep_logs:
            self.logs[c].append(run.log(stream))
        # the channel is free after the last issue; the results arrive when the last
        # read's data is back
        return free, max(done, free)

    def _start_asic(self, item, stats: StepStats) -> int:
        """An ASIC operator's work and its duration (ps)."""
        cost = op_cost(self.spec.asic, item.kind, item.elements, getattr(item, "detail", None))
        for k in ("adds", "muls", "int_ops", "sram_read_bytes", "sram_write_bytes"):
            stats.asic[k] = stats.asic.get(k, 0) + getattr(cost, k)
        stats.asic["cycles"] = stats.asic.get("cycles", 0) + cost.cycles
        return int(math.ceil(cost.cycles * self.asic_ps))

    # ------------------------------------------------------------------ SimPy processes
    def _kernel(self, item, stats: StepStats, key: tuple):
        arbiter = self._arbiters[item.channel]
        yield arbiter.request(key)
        start = self.env.now
        free, end = self._start_kernel(item, stats, start)
        if free > start:
            yield self.env.timeout(free - start)
        arbiter.release()
        if end > self.env.now:
            yield self.env.timeout(end - self.env.now)
        return start, self.env.now

    def _asic(self, item, stats: StepStats, key: tuple):
        arbiter = self._arbiters[-1]
        yield arbiter.request(key)
        start = self.env.now
        yield self.env.timeout(self._start_asic(item, stats))
        arbiter.release()
        return start, self.env.now

    def _node(self, node: "_Node", procs: list, stats: StepStats, times: dict):
        if node.producers:
            events = [procs[i] for i in node.producers]
            if node.start_delay:
                events.append(self.env.timeout(node.start_delay))
            yield simpy.AllOf(self.env, events)
        elif node.start_delay:
            yield self.env.timeout(node.start_delay)
        via, delay, ready = _arrival(node, times, stats.start_ps)
        if ready > self.env.now:
            yield self.env.timeout(ready - self.env.now)
        key = (_priority(node.item), ready, node.index)
        if node.kind == KERNEL:
            start, end = yield from self._kernel(node.item, stats, key)
        else:
            start, end = yield from self._asic(node.item, stats, key)
        _finish(node, ready, start, end, via, delay, stats, times)

    def _account_flush(self, c, flushed, run, not_before: int, prev0: int, stats: StepStats) -> None:
        """Counts, channel cycles and stall of the postponed refreshes issued before a kernel.

        Each command's cycles run to the next command, at most for as long as it blocks the
        channel (nRFCab, nRP); the stall is how far the last refresh pushes the kernel's
        start past its release."""
        cycles, fs = flushed
        cyc = cycles.tolist()
        nxt = cyc[1:] + [run.first_cycle]
        for cmd, t, t2 in zip(fs.cmd.tolist(), cyc, nxt):
            name = COMMANDS[cmd]
            stats.counts[name] = stats.counts.get(name, 0) + 1
            cls = COMMAND_CLASS[name]
            stats.channel_cycles[cls] = stats.channel_cycles.get(cls, 0) + min(t2 - t, self._blocks[cmd])
        end = cyc[-1] + self._blocks[int(fs.cmd[-1])]
        stats.refresh_stall_cycles += max(0, end - max(not_before, prev0 + 1))
        if self.keep_logs:
            self.logs[c].append((cycles, fs))

    def _issue_kernel(self, c: int, stream, not_before: int) -> "_KernelRun":
        """Issue one kernel on channel ``c``, or replay a stored identical run.

        A run is stored when no refresh fell due during it. Its outcome depends on the
        channel state only relative to its first possible cycle ``base`` (the latest of the
        release, the cycle after the last issue and the least channel-wide limit, which
        binds every command): timing limits at or before ``base``
        bind nothing, rows compare by equality. The same command arrays issued later from
        the same relative state, with the next refresh due after the stored run's last
        command, therefore issue at the stored cycles shifted by the new ``base``; the
        engine's refresh logic only acts on commands at or after the due cycle."""
        st = self.channels[c]
        nx, ring, wcount, whead, open_row, reopen, sc = st.arrays
        # no command can issue before base: nx[0] holds limits that bind every command
        base = max(not_before, int(sc[0]) + 1, int(nx[0].min()))
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
        self.issued_runs += 1
        self.issued_commands += len(stream)
        release = np.zeros(len(stream), dtype=np.int64)
        release[0] = not_before
        res = issue(self.dram, stream, state=st, release=release, validate_stream=False)
        ins = res.inserted
        classes, tail = _account(res.cycles, stream.cmd, ins["cycle"], ins["cmd"],
                                 self._cmd_acct)
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

    # ------------------------------------------------------------------ public
    def run_step(self, program) -> StepStats:
        """Run one program from the current time; returns its stats.

        Transfers hold no resource, so they are not processes of their own: a node whose
        input comes through a transfer waits the link latency after its producer finished
        (exactly what a transfer process would give), which halves the events per step."""
        if self.scheduler == "compiled" and not self.keep_logs:
            stats = StepStats(start_ps=self._now, end_ps=self._now,
                              timeline=[] if self.keep_timeline else None)
            self._run_compiled(program, stats)
            return stats
        nodes, transfers, stats = self._prepare(program)
        times: dict = {}
        if self.scheduler == "simpy":
            procs: list = []
            for node in nodes:
                procs.append(self.env.process(self._node(node, procs, stats, times)))
            self.env.run()
            self._now = self.env.now
        else:
            self._run_listed(nodes, stats, times)
        stats.end_ps = self._now
        stats.critical_ps, stats.critical_by_op_ps = _critical_path(times, stats.start_ps,
                                                                    stats.end_ps)
        if stats.timeline is not None:
            for name, item, preds in transfers:
                ends = [times[p][2] for p in preds if p in times]
                t0 = max(ends, default=stats.start_ps)
                stats.timeline.append((name, TRANSFER, item.channel, t0, t0 + self.link_latency_ps))
            stats.timeline.sort(key=lambda e: (e[3], e[4], e[0]))
        return stats

    def _prepare(self, program):
        """The step's non-transfer nodes in topological order with their producers (behind
        transfers, with the accumulated link latency), and its transfers."""
        import networkx as nx

        g = program.graph
        stats = StepStats(start_ps=self._now, end_ps=self._now,
                          timeline=[] if self.keep_timeline else None)
        kinds = {n: node_kind(g.nodes[n]["item"]) for n in g.nodes}
        index: dict[str, int] = {}
        nodes: list[_Node] = []
        transfers = []

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
                if stats.timeline is not None:
                    transfers.append((name, item, list(g.predecessors(name))))
                continue
            found: list = []
            for p in g.predecessors(name):
                sources(p, 0, found)
            inputs = tuple((p, lat) for p, lat in found if p is not None)
            index[name] = i = len(nodes)
            nodes.append(_Node(
                index=i, name=name, item=item, kind=kind,
                category=getattr(item, "what", None) if kind == KERNEL else kind,
                inputs=inputs,
                producers=tuple(dict.fromkeys(index[p] for p, _ in inputs)),
                start_delay=max((lat for p, lat in found if p is None), default=0),
                resource=item.channel if kind == KERNEL else len(self.channels)))
        return nodes, transfers, stats

    def _run_listed(self, nodes: list, stats: StepStats, times: dict) -> None:
        """The same schedule as the SimPy processes, from a time-ordered list of events:
        at each instant, every completion, release and arrival at that instant is taken in
        first, then each free resource goes to its waiting node with the least (operator
        index, ready time, program position), as the SimPy arbiters do at the end of an
        instant; work that ends at the same instant starts another such round."""
        t0 = stats.start_ps
        n_res = len(self.channels) + 1
        waiting: list[list] = [[] for _ in range(n_res)]
        busy = [False] * n_res
        left = [len(nd.producers) for nd in nodes]
        users: list[list[int]] = [[] for _ in nodes]
        for nd in nodes:
            for i in nd.producers:
                users[i].append(nd.index)
        heap: list = []
        seq = 0
        READY, RELEASE, FINISH = 0, 1, 2
        for nd in nodes:
            if not nd.producers:
                heap.append((t0 + nd.start_delay, seq, READY, nd.index))
                seq += 1
        heapq.heapify(heap)
        started: dict[int, tuple] = {}
        now = t0
        while heap:
            now = heap[0][0]
            while heap and heap[0][0] == now:
                _, _, what, x = heapq.heappop(heap)
                if what == READY:
                    nd = nodes[x]
                    heapq.heappush(waiting[nd.resource], ((_priority(nd.item), now, x), x))
                elif what == RELEASE:
                    busy[x] = False
                else:
                    nd = nodes[x]
                    ready, start, via, delay = started.pop(x)
                    _finish(nd, ready, start, now, via, delay, stats, times)
                    for u in users[x]:
                        left[u] -= 1
                        if left[u] == 0:
                            _, _, r = _arrival(nodes[u], times, t0)
                            heapq.heappush(heap, (max(r, now), seq, READY, u))
                            seq += 1
            for r in range(n_res):
                if busy[r] or not waiting[r]:
                    continue
                (_, ready, _), x = heapq.heappop(waiting[r])
                nd = nodes[x]
                busy[r] = True
                via, delay, _ = _arrival(nd, times, t0)
                if nd.kind == KERNEL:
                    free, end = self._start_kernel(nd.item, stats, now)
                else:
                    free = end = now + self._start_asic(nd.item, stats)
                started[x] = (ready, now, via, delay)
                heapq.heappush(heap, (free, seq, RELEASE, r))
                heapq.heappush(heap, (end, seq + 1, FINISH, x))
                seq += 2
        self._now = now

    # ------------------------------------------------------------------ compiled
    def _compiled_state(self) -> "_Compiled":
        if self._compiled is None:
            self._compiled = _Compiled(self)
        return self._compiled

    def _node_info(self, item) -> tuple:
        """What the compiled scheduler needs of a node's item, kept per item (items shared
        by steps are looked at once; the cache holds the item, so an id in it stays that
        item's): (item, kind code 0 kernel / 1 ASIC / 2 transfer, resource, priority,
        category, then the stream, the ASIC duration and counts, or the transfer's
        direction and bytes)."""
        if len(self._info) > 1 << 17:
            self._info.clear()
        kind = node_kind(item)
        if kind == KERNEL:
            # the compiled scheduler places commands by cmd, bank and row only
            timing = getattr(item, "timing_stream", None)
            stream = timing(self.spec) if timing is not None else item.commands(self.spec)
            info = (item, 0, item.channel, _priority(item), getattr(item, "what", None),
                    stream, None)
        elif kind == ASIC:
            cost = op_cost(self.spec.asic, item.kind, item.elements, getattr(item, "detail", None))
            info = (item, 1, len(self.channels), _priority(item), ASIC,
                    int(math.ceil(cost.cycles * self.asic_ps)),
                    tuple(getattr(cost, k) for k in _ASIC_COUNTS) + (cost.cycles,))
        else:
            info = (item, 2, -1, 0, TRANSFER, item.direction, item.bytes)
        self._info[id(item)] = info
        return info

    def _plan(self, program) -> "_StepPlan":
        """The step's arrays for the compiled scheduler. Steps sharing a layout (the same
        nodes and edges, items differing only at ``layout.dyn_pos``) share one plan: only
        what those items give is redone."""
        cs = self._compiled_state()
        flat = _flat(program)
        layout = getattr(program, "layout", None)
        plan = self._plans.get(id(layout)) if layout is not None else None
        if plan is None or plan.layout is not layout:
            plan = _StepPlan(self, flat, layout)
            if layout is not None:
                if len(self._plans) >= 32:
                    self._plans.clear()
                self._plans[id(layout)] = plan
        else:
            plan.update(self, flat[1])
        if plan.generation != cs.arena.generation:
            plan.register(self)
        return plan

    def _run_compiled(self, program, stats: StepStats) -> None:
        """The listed schedule, computed by :func:`pimsim.stepkernel.run_step` from the
        program's flat graph."""
        cs = self._compiled_state()
        plan = self._plan(program)
        n = plan.n
        t0 = stats.start_ps
        for k, v in zip(_ASIC_COUNTS + ("cycles",), plan.asic_sums()):
            stats.asic[k] = stats.asic.get(k, 0) + v
        for d, v in plan.transfer_sums().items():
            stats.transfer_bytes[d] = stats.transfer_bytes.get(d, 0) + v
        o_ready = np.zeros(n, dtype=np.int64)
        o_start = np.zeros(n, dtype=np.int64)
        o_end = np.zeros(n, dtype=np.int64)
        o_via = np.full(n, -2, dtype=np.int64)
        o_delay = np.zeros(n, dtype=np.int64)
        counts = np.zeros(len(COMMANDS), dtype=np.int64)
        classes = np.zeros(len(_CLASSES), dtype=np.int64)
        misc = np.zeros(7, dtype=np.int64)
        a = cs.arena.tables()
        store = cs.store.tables(cs.arena.n_pieces, self.channels[0].arrays[0].size)
        cs.ensure_buffers(cs.arena.max_len)
        chans = cs.load(self.channels)
        sk.run_step(plan.kind, plan.res, plan.prio, plan.start_delay, plan.in_ptr, plan.in_src,
                    plan.in_lat, plan.nrank, plan.n_prod, plan.user_ptr, plan.user_idx,
                    plan.dur, plan.ksid, plan.res, t0, len(self.channels) + 1, self.tck,
                    cs.eng, a, chans, cs.refr, self.memo, int(self._refresh_on), store, cs.bufs,
                    _CLASS_OF, len(_CLASSES), self._cmd_acct, o_ready, o_start, o_end, o_via,
                    o_delay, counts, classes, misc)
        cs.save(self.channels)
        if misc[sk.M_STATUS] == sk.ERR_CHANNEL:
            from pimsim.engine import _status_error
            raise _status_error(-2, self.dram)
        if misc[sk.M_STATUS] == sk.ERR_REFRESH:
            raise PimsimError(f"{self.dram.name}: a pulled-in refresh was not "
                              f"{self._blocks[CMD_ID['REFab']]} cycles after the one before it")
        self.memo_hits += int(misc[sk.M_HITS])
        self.issued_runs += int(misc[sk.M_ISSUED])
        self.issued_commands += int(misc[sk.M_ISSUED_CMDS])
        self._now = int(misc[sk.M_NOW]) if n else t0
        for k, v in zip(COMMANDS, counts.tolist()):
            if v:
                stats.counts[k] = stats.counts.get(k, 0) + v
        for k, v in zip(_CLASSES, classes.tolist()):
            if v:
                stats.channel_cycles[k] = stats.channel_cycles.get(k, 0) + v
        stats.refresh_stall_cycles += int(misc[sk.M_STALL])
        busy = np.zeros(len(plan.cat_names), dtype=np.int64)
        np.add.at(busy, plan.cat, o_end - o_start)
        for cat, b in zip(plan.cat_names, busy.tolist()):
            if cat in plan.cats_present:
                stats.busy_ps[cat] = stats.busy_ps.get(cat, 0) + b
        stats.end_ps = self._now
        stats.critical_ps, stats.critical_by_op_ps = _critical_path_arrays(
            plan.cat_names, plan.cat, plan.op, o_ready, o_start, o_end, o_via, o_delay,
            plan.nrank, stats.start_ps, stats.end_ps)
        if stats.timeline is not None:
            plan.timeline(self, stats, o_start.tolist(), o_end.tolist())

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


class _StepPlan:
    """One step layout's arrays for :func:`pimsim.stepkernel.run_step`: the prepared graph
    (topological order, inputs, users), names and their ranks, and per node its kind,
    resource, priority, category, stream number (kernels) or duration (ASIC operators).
    ``update`` takes a later step's items at the layout's step-dependent positions."""

    def __init__(self, sim: SystemSimulator, flat: tuple, layout):
        names_all, items_all, src, dst = flat
        self.layout = layout            # held, so its id stays its own while cached
        self.src, self.dst = src, dst
        self.names_all = names_all
        get, info_of = sim._info.get, sim._node_info
        infos = [get(id(it)) or info_of(it) for it in items_all]
        codes = np.fromiter((i[1] for i in infos), dtype=np.int64, count=len(infos))
        self.is_transfer = (codes == 2)
        (order, self.in_ptr, self.in_src, self.in_lat, self.start_delay, pr_ptr, _,
         self.user_ptr, self.user_idx) = sk.prepare(self.is_transfer.astype(np.uint8), src, dst,
                                                     sim.link_latency_ps)
        if len(order) == 0 and len(names_all) > int(self.is_transfer.sum()):
            raise PimsimError(f"a step program has a cycle ({len(names_all)} nodes)")
        self.n = n = len(order)
        self.order = order
        self.n_prod = np.diff(pr_ptr)
        self.topo_of = np.full(len(names_all), -1, dtype=np.int64)
        self.topo_of[order] = np.arange(n)
        order_l = order.tolist()
        self.names = [names_all[v] for v in order_l]
        self.op = np.fromiter((_op_of(nm) for nm in self.names), dtype=np.int64, count=n)
        self.nrank = np.empty(n, dtype=np.int64)
        self.nrank[sorted(range(n), key=self.names.__getitem__)] = np.arange(n)
        self.kind = codes[order]
        self.res = np.zeros(n, dtype=np.int64)
        self.prio = np.zeros(n, dtype=np.int64)
        self.cat_names: list = []
        self._cat_code: dict = {}
        self.cat = np.zeros(n, dtype=np.int64)
        self.dur = np.zeros(n, dtype=np.int64)
        self.ksid = np.full(n, -1, dtype=np.int64)
        self.streams: list = [None] * n
        self.asic_counts = np.zeros((n, len(_ASIC_COUNTS) + 1), dtype=np.int64)
        self.tr_dir: list = []
        self.tr_bytes = np.zeros(0, dtype=np.int64)
        dyn = set(getattr(layout, "dyn_pos", ()) or ())
        self.dyn_pos = sorted(dyn) if layout is not None else list(range(len(items_all)))
        static_tr: dict = {}
        for v, info in enumerate(infos):
            if info[1] == 2:
                if layout is not None and v not in dyn:
                    static_tr[info[5]] = static_tr.get(info[5], 0) + info[6]
            else:
                self._set(self.topo_of[v], info)
        self.static_transfers = static_tr
        self.cats_present = set(self.cat_names)
        self.dyn_transfers: dict = {}
        self._dyn_transfer_sums(infos if layout is None else [infos[v] for v in self.dyn_pos])
        self.generation = -1
        self.infos = infos
        # the items at the step-dependent positions that the arrays were last set from
        self.prev = [items_all[v] for v in self.dyn_pos]

    def _set(self, t: int, info: tuple) -> None:
        """Node t (topological position) from its item's info."""
        self.res[t] = info[2]
        self.prio[t] = info[3]
        c = self._cat_code.get(info[4])
        if c is None:
            c = self._cat_code[info[4]] = len(self.cat_names)
            self.cat_names.append(info[4])
        self.cat[t] = c
        if info[1] == 0:
            self.streams[t] = info[5]
        else:
            self.dur[t] = info[5]
            self.asic_counts[t] = info[6]

    def _dyn_transfer_sums(self, infos) -> None:
        """Bytes and count of the step-dependent transfers, per direction."""
        out: dict = {}
        for info in infos:
            if info[1] == 2:
                b, k = out.get(info[5], (0, 0))
                out[info[5]] = (b + info[6], k + 1)
        self.dyn_transfers = out

    def _transfer_changed(self, old: tuple, new: tuple) -> None:
        for info, sign in ((old, -1), (new, 1)):
            b, k = self.dyn_transfers.get(info[5], (0, 0))
            self.dyn_transfers[info[5]] = (b + sign * info[6], k + sign)

    def update(self, sim: SystemSimulator, items_all: list) -> None:
        get, info_of = sim._info.get, sim._node_info
        prev = self.prev
        kernels = []
        changed = False
        for i, v in enumerate(self.dyn_pos):
            it = items_all[v]
            p = prev[i]
            if it is p or _same_node(it, p):
                continue
            prev[i] = it
            changed = True
            info = get(id(it)) or info_of(it)
            if info[1] == 2 and self.infos[v][1] == 2:
                self._transfer_changed(self.infos[v], info)
            self.infos[v] = info
            t = self.topo_of[v]
            if t >= 0:
                if info[1] == 2 or int(self.kind[t]) != info[1]:
                    raise PimsimError(f"step layout: node {self.names_all[v]} changed kind")
                self._set(t, info)
                if info[1] == 0:
                    kernels.append(t)
            elif info[1] != 2:
                raise PimsimError(f"step layout: node {self.names_all[v]} changed kind")
        if not changed:
            return
        self.cats_present.update(self.cat_names)
        if kernels and self.generation == sim._compiled.arena.generation:
            before = sim._compiled.arena.generation
            sids = sim._compiled.sids([self.streams[t] for t in kernels])
            if sim._compiled.arena.generation == before:
                self.ksid[kernels] = sids
            else:
                self.generation = -1

    def register(self, sim: SystemSimulator) -> None:
        """Arena numbers of every kernel's stream (again after the arena was cleared)."""
        kernels = np.flatnonzero(self.kind == 0)
        self.ksid[kernels] = sim._compiled.sids([self.streams[t] for t in kernels.tolist()])
        self.generation = sim._compiled.arena.generation

    def asic_sums(self) -> list[int]:
        return self.asic_counts.sum(axis=0).tolist() if self.n and (self.kind == 1).any() else []

    def transfer_sums(self) -> dict:
        out = dict(self.static_transfers)
        for d, (v, k) in self.dyn_transfers.items():
            if k:
                out[d] = out.get(d, 0) + v
        return out

    def timeline(self, sim: SystemSimulator, stats: StepStats, starts: list, ends: list) -> None:
        for t in range(self.n):
            info = self.infos[int(self.order[t])]
            stats.timeline.append((self.names[t], self.cat_names[self.cat[t]],
                                   getattr(info[0], "channel", -1), starts[t], ends[t]))
        preds: dict[int, list] = {}
        for u, v in zip(self.src.tolist(), self.dst.tolist()):
            preds.setdefault(v, []).append(u)
        for v, info in enumerate(self.infos):
            if info[1] == 2:
                e = [ends[self.topo_of[p]] for p in preds.get(v, ()) if self.topo_of[p] >= 0]
                tt = max(e, default=stats.start_ps)
                stats.timeline.append((self.names_all[v], TRANSFER, info[0].channel, tt,
                                       tt + sim.link_latency_ps))
        stats.timeline.sort(key=lambda e: (e[3], e[4], e[0]))


class _Compiled:
    """What the compiled scheduler keeps between steps: the stream arena, the stored runs,
    scratch buffers, and the channel states stacked into arrays (copied in and out around
    each step, so the Python schedulers can continue any channel)."""

    def __init__(self, sim: SystemSimulator):
        from pimsim.engine import _channel_wide_ok

        ct = sim.channels[0].ct
        if sim.postpone and not _channel_wide_ok(ct):
            raise PimsimError(f"{sim.dram.name}: postponed refresh needs PREA and REFab free "
                              f"of window rules")
        self.arena = sk.Arena(ct.win_to, ct.win_from, CMD_ID["TMOD"], ct.addr_all,
                              ct.n_bankgroups, ct.banks_per_bankgroup)
        self.store = sk.RunStore(ct.n_banks, len(_CLASSES))
        self.generation = self.arena.generation
        self.eng = ct.kernel_args() + (ct.refresh, ct.refresh_interval)
        block_of = np.zeros(len(COMMANDS), dtype=np.int64)
        for k, v in sim._blocks.items():
            block_of[k] = v
        self.refr = (int(sim.postpone), int(sim.pull_in), int(sim._blocks[CMD_ID["REFab"]]),
                     block_of, np.zeros(64, dtype=np.int64), np.zeros(64, dtype=np.int64))
        self.bufs = None
        self.key_windows = int((ct.win_size + 1).sum())
        self.stack = tuple(np.stack([st.arrays[j] for st in sim.channels])
                           for j in range(len(sim.channels[0].arrays)))

    def sids(self, streams: list) -> list[int]:
        """Arena numbers of a step's streams; if the arena fills up on the way, it is
        cleared (with the stored runs) and the step's streams registered again."""
        out = [self.arena.sid_of(s) for s in streams]
        if self.arena.generation != self.generation:
            self.store.clear()
            self.arena.limit = max(self.arena.limit, sum(len(s) for s in streams))
            self.arena._clear()
            out = [self.arena.sid_of(s) for s in streams]
            self.generation = self.arena.generation
        return out

    def ensure_buffers(self, max_len: int) -> None:
        if self.bufs is None or self.bufs[0].shape[0] < max_len:
            n = max(max_len, 1 << 12)
            k = 1 + sk.KEY_MAX + self.key_windows
            c = len(COMMANDS) + len(_CLASSES)
            # release times, issue cycles (a whole stream), the keys of a (sub-)piece, of
            # a stream and of a piece issued in sub-pieces, the counts and channel cycles
            # before such a piece and before a stream
            self.bufs = (np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64),
                         np.zeros(k, dtype=np.int64), np.zeros(k, dtype=np.int64),
                         np.zeros(k, dtype=np.int64), np.zeros(c, dtype=np.int64),
                         np.zeros(c, dtype=np.int64))

    def load(self, channels: list) -> tuple:
        for c, st in enumerate(channels):
            for j, a in enumerate(st.arrays):
                self.stack[j][c] = a
        return self.stack

    def save(self, channels: list) -> None:
        for c, st in enumerate(channels):
            for j, a in enumerate(st.arrays):
                a[...] = self.stack[j][c]


def _flat(program) -> tuple:
    """(node names, items, edge sources, edge targets) of a program: nodes in insertion
    order, edges in first-insertion order (``program.flat`` where the builder keeps one)."""
    flat = getattr(program, "flat", None)
    if flat is not None:
        return (flat.names, flat.items, np.asarray(flat.src, dtype=np.int64),
                np.asarray(flat.dst, dtype=np.int64))
    g = program.graph
    names = list(g.nodes)
    index = {nm: i for i, nm in enumerate(names)}
    items = [g.nodes[nm]["item"] for nm in names]
    edges = [(index[u], index[v]) for u, v in g.edges()]
    src = np.array([e[0] for e in edges], dtype=np.int64)
    dst = np.array([e[1] for e in edges], dtype=np.int64)
    return names, items, src, dst


def _op_of(name: str) -> int:
    """The trace op index a node name starts with (``"74:transformer.h.5..."``)."""
    return int(name.split(":", 1)[0])


def _critical_path_arrays(cat_names, cat, op, ready, start, end, via, delay, nrank,
                          start_ps: int, end_ps: int) -> tuple[dict[str, int], dict[int, int]]:
    """:func:`_critical_path` over the compiled scheduler's arrays (``via``: producer
    position, -1 the step start; ``cat``: category code into ``cat_names``; ``op``: the
    trace op index of each node), walked by :func:`pimsim.stepkernel.critical_path`."""
    out: dict[str, int] = {}
    by_op: dict[int, int] = {}
    if not len(end):
        out["wait"] = end_ps - start_ps
        return out, by_op
    last = int(end.max())
    cand = np.flatnonzero(end == last)
    node = int(cand[np.argmax(nrank[cand])])
    n_cat = len(cat_names)
    n_op = int(op.max()) + 1
    cat_sum = np.zeros(n_cat, dtype=np.int64)
    cat_seen = np.zeros(n_cat, dtype=np.int64)
    op_sum = np.zeros(n_op, dtype=np.int64)
    op_seen = np.zeros(n_op, dtype=np.int64)
    wait, transfer, has_transfer = sk.critical_path(ready, start, end, via, delay, cat, op, node,
                                                    end_ps, start_ps, cat_sum, cat_seen, op_sum,
                                                    op_seen)
    for c in np.flatnonzero(cat_seen).tolist():
        out[cat_names[c]] = out.get(cat_names[c], 0) + int(cat_sum[c])
    out["wait"] = out.get("wait", 0) + int(wait)
    if has_transfer:
        out["transfer"] = out.get("transfer", 0) + int(transfer)
    for o in np.flatnonzero(op_seen).tolist():
        by_op[o] = int(op_sum[o])
    return out, by_op


@dataclass(frozen=True, eq=False)
class _Node:
    """One non-transfer node of a step: its producers (by position) and inputs (producer
    name, link latency), the link latency from the step start (inputs from outside), and
    the resource it takes (a channel, or the ASIC after the channels)."""

    index: int
    name: str
    item: object
    kind: str
    category: str
    inputs: tuple
    producers: tuple
    start_delay: int
    resource: int


def _arrival(node: _Node, times: dict, step_start: int) -> tuple:
    """(the input the node waited for, its link delay, ready time): the input that arrived
    last, ties to the larger name; inputs from outside the step arrive at the step start
    plus their link latency."""
    via, delay, last = None, 0, None
    if node.start_delay:
        via, last = "", step_start
    for pred, lat in node.inputs:
        arrive = times[pred][2] + lat
        if last is None or arrive > last or (arrive == last and pred > via):
            last, via, delay = arrive, pred, lat
    ready = step_start + node.start_delay
    if last is not None and last > ready:
        ready = last
    return via, delay, ready


def _finish(node: _Node, ready: int, start: int, end: int, via, delay: int, stats: StepStats,
            times: dict) -> None:
    stats.busy_ps[node.category] = stats.busy_ps.get(node.category, 0) + (end - start)
    times[node.name] = (ready, start, end, node.category, via, delay)
    if stats.timeline is not None:
        stats.timeline.append((node.name, node.category, getattr(node.item, "channel", -1), start, end))


class _EndOfInstant(simpy.events.Event):
    """An event processed after every other event of its instant (SimPy processes events
    of one instant by priority; URGENT and NORMAL are 0 and 1), scheduled the way
    ``simpy.Timeout`` schedules itself."""

    def __init__(self, env: simpy.Environment, callback):
        super().__init__(env)
        self._ok = True
        self._value = None
        self.callbacks.append(callback)
        env.schedule(self, priority=2)


class _Arbiter:
    """One resource unit (a channel or the ASIC). Requests made during an instant are
    collected; at the end of the instant the free unit goes to the least request key
    (operator index, ready time, program position), so the grant does not depend on the
    order in which SimPy happens to process the events of one instant."""

    def __init__(self, env: simpy.Environment):
        self.env = env
        self.busy = False
        self.waiting: list = []
        self._pending = False

    def request(self, key: tuple) -> simpy.Event:
        event = self.env.event()
        heapq.heappush(self.waiting, (key, id(event), event))
        self._schedule()
        return event

    def release(self) -> None:
        self.busy = False
        self._schedule()

    def _schedule(self) -> None:
        if not self._pending and not self.busy and self.waiting:
            self._pending = True
            _EndOfInstant(self.env, self._grant)

    def _grant(self, _event) -> None:
        self._pending = False
        if not self.busy and self.waiting:
            self.busy = True
            heapq.heappop(self.waiting)[2].succeed()


@dataclass
class _KernelRun:
    """One kernel's issue: counts, channel cycles by class, refresh stall, and the cycles
    after the last issue until its last read's data is back."""

    counts: dict
    classes: dict
    stall: int
    tail: int
    result: object = None     # IssueResult of an issued run
    cycles_rel: np.ndarray | None = None   # a replayed run: issue cycles relative to base
    base: int = 0

    @property
    def first_cycle(self) -> int:
        """The first command's issue cycle (inserted commands included)."""
        if self.result is None:
            return int(self.cycles_rel[0]) + self.base
        first = int(self.result.cycles[0])
        ins = self.result.inserted["cycle"]
        return min(first, int(ins[0])) if ins.size else first

    def log(self, stream):
        if self.result is not None:
            return merge_log(stream, self.result)
        return self.cycles_rel + self.base, stream


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
        return _KernelRun(r.counts, r.classes, 0, r.tail, None, self.cycles_rel, base)


def _account(cycles, cmd, ins_cycle, ins_cmd, cmd_acct):
    out, tail, _ = account_run(cycles, cmd, ins_cycle, ins_cmd, _CLASS_OF, len(_CLASSES), cmd_acct)
    return out, int(tail)


def _critical_path(times: dict, start_ps: int, end_ps: int) -> tuple[dict[str, int], dict[int, int]]:
    """Walk back from the node that finished last through the input that arrived last:
    each node on the path adds its run time to its category (and to its trace op), the
    link latency on the way to "transfer", and the time it waited for its resource to
    "wait"."""
    out: dict[str, int] = {}
    by_op: dict[int, int] = {}
    if not times:
        out["wait"] = end_ps - start_ps
        return out, by_op
    node = max(times, key=lambda n: (times[n][2], n))
    t = end_ps
    while node is not None:
        ready, start, end, cat, via, delay = times[node]
        out[cat] = out.get(cat, 0) + (min(end, t) - start)
        op = _op_of(node)
        by_op[op] = by_op.get(op, 0) + (min(end, t) - start)
        out["wait"] = out.get("wait", 0) + (start - ready) + (t - min(end, t))
        if delay:
            out["transfer"] = out.get("transfer", 0) + delay
        t = ready - delay
        node = via if via in times else None
    out["wait"] = out.get("wait", 0) + (t - start_ps)
    return out, by_op


__all__ = ["SystemSimulator", "StepStats", "node_kind", "COMMANDS"]
