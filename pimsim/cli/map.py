"""``pimsim map``: place a model on a preset and summarise one decode step's program."""

from __future__ import annotations

import json
import os

from pimsim.cli._common import add_preset_arguments


def add_parser(sub) -> None:
    p = sub.add_parser("map", help="place a model in the PIM banks; capacity, row-hit rate, "
                                   "command counts of one decode step",
                       description="Map a model (registry name or trace file) with a strategy "
                                   "and print the placement, the capacity used, and for the "
                                   "decode step at --kv-len the row-hit rate and the command "
                                   "counts per kernel kind (no cycle simulation).")
    p.add_argument("model", help="registry model name or trace JSON file")
    add_preset_arguments(p)
    p.add_argument("--strategy", default="pim-gpt",
                   help="mapping strategy, or 'all' (default pim-gpt)")
    p.add_argument("--kv-len", type=int, default=None,
                   help="KV length of the decode step (default: the KV reserve)")
    p.add_argument("--max-context", type=int, default=None,
                   help="KV positions to reserve (default: the model's maximum context)")
    p.add_argument("--kernels", action="store_true", help="also list every PIM kernel")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def summarize(trace, spec, strategy: str, kv_len: int | None, max_context: int | None,
              kernels: bool = False) -> dict:
    """Plain data: placement summary and the decode step's counts (library-style, no I/O)."""
    import mappings

    m = mappings.map(trace, spec, strategy, max_context=max_context)
    pl = m.placement
    s = pl.summary()
    L = kv_len if kv_len is not None else s["kv_reserve_positions"] or 1
    prog = m.program(L)
    out = {
        "model": trace.model, "preset": spec.name, "spec_digest": spec.digest,
        "strategy": strategy, "kv_len": L, "placement": s,
        "row_hit_rate": prog.row_hit_rate(), "mac_utilization": prog.mac_utilization(),
        "counts": prog.counts(), "counts_by_kind": prog.by_op(),
        "transfer_bytes": prog.transfer_bytes(),
        "nodes": prog.graph.number_of_nodes(), "edges": prog.graph.number_of_edges(),
    }
    if kernels:
        out["kernels"] = prog.kernel_table()
    return out


def run(args) -> int:
    import mappings
    import workloads
    from pimsim.config import load_preset
    from pimsim.errors import PimsimError

    for flag, value, what in (("--max-context", args.max_context, "KV positions to reserve"),
                              ("--kv-len", args.kv_len, "KV length of the decode step")):
        if value is not None and value < 1:
            raise PimsimError(f"{flag} must be a positive integer ({what}), got {value}")
    if os.path.exists(args.model):
        trace = workloads.load_trace(args.model)
    else:
        trace = workloads.load_bundled(args.model)
    spec = load_preset(args.preset, args.overrides)
    names = list(mappings.STRATEGIES) if args.strategy == "all" else [args.strategy]
    results = [summarize(trace, spec, n, args.kv_len, args.max_context, args.kernels)
               for n in names]
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=2, sort_keys=True))
        return 0
    for r in results:
        s = r["placement"]
        print(f"{r['model']} on {r['preset']} ({r['strategy']}), decode step at kv_len {r['kv_len']}")
        print(f"  capacity: {s['bytes_used']} B used of {s['channels'] * s['bytes_per_channel']} B "
              f"(max {s['rows_used_max']} of {s['rows_per_bank']} rows per bank); weights "
              f"{s['weight_bytes_reserved']} B, dense {s['dense_bytes_reserved']} B, KV reserve "
              f"{s['kv_bytes_reserved']} B for {s['kv_reserve_positions']} positions")
        print(f"  row-hit rate {r['row_hit_rate']:.4f}   MAC utilisation {r['mac_utilization']:.4f}"
              f"   DAG {r['nodes']} nodes, {r['edges']} edges")
        tb = r["transfer_bytes"]
        print(f"  transfers: {tb['to_pim']} B to PIM, {tb['to_asic']} B to ASIC")
        for kind, c in sorted(r["counts_by_kind"].items()):
            cols = sum(c.get(k, 0) for k in ("MAC16", "RD", "WR"))
            acts = c.get("ACT16", 0) + c.get("ACT", 0)
            rate = (cols - acts) / cols if cols else 0.0
            shown = " ".join(f"{k}={v}" for k, v in sorted(c.items()))
            print(f"  {kind:8s} row-hit {rate:.4f}  {shown}")
        for k in r.get("kernels", []):
            shown = " ".join(f"{a}={b}" for a, b in sorted(k["counts"].items()))
            print(f"    {k['name']}  ch{k['channel']}  hit {k['row_hit_rate']:.4f}  {shown}")
    return 0
