"""``pimsim simulate``: a model's decode on a PIM-GPT configuration."""

from __future__ import annotations

import io
import json

from pimsim.cli._common import add_preset_arguments, check_out, progress_bar, write_files
from pimsim.errors import PimsimError

DEFAULT_MODEL = "gpt2-small"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "simulate", help="simulate decoding a model on a PIM-GPT configuration",
        description="Map MODEL (a registry name or a trace .json) onto the preset, decode TOKENS "
                    "tokens after a PROMPT-token context with every DRAM command timed by the "
                    "channel engines, and report latency per token, its breakdown, energy (with "
                    "its range), row-hit rate and bandwidth. Prefill is not simulated.")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                   help=f"registry model or trace file (default {DEFAULT_MODEL})")
    add_preset_arguments(p, "asic.clock_MHz=100")
    p.add_argument("--prompt", type=int, default=32, help="context length before decoding (default 32)")
    p.add_argument("--tokens", type=int, default=8, help="decode steps to simulate (default 8)")
    p.add_argument("--strategy", default="pim-gpt", help="mapping strategy (default pim-gpt)")
    p.add_argument("--out", metavar="DIR", help="write result.json, steps.csv and plots to DIR")
    p.add_argument("--timeline", action="store_true",
                   help="also write timeline.json (Chrome/Perfetto trace of every node)")
    p.add_argument("--check", action="store_true", help="protocol-check every issued command")
    p.add_argument("--json", action="store_true",
                   help="print result.json to standard output instead of the summary")
    p.set_defaults(func=run)


def run(args) -> int:
    from pimsim.api import simulate

    if args.timeline and not args.out:
        raise PimsimError("--timeline needs --out DIR")
    check_out(args.out, folder=True)
    result = simulate(args.model, preset=args.preset, overrides=args.overrides,
                      prompt=args.prompt, tokens=args.tokens, strategy=args.strategy,
                      timeline=args.timeline, check=args.check, progress=progress_bar("simulating", "tokens"))
    files = {}
    if args.out:
        files = render(result)
        write_files(args.out, files)
    if args.json:
        print(result.to_json(), end="")
    else:
        print(summary(result, args.out, sorted(files)))
    return 0


def summary(result, out, files) -> str:
    s = result.to_dict()
    e = s["energy_per_token_J"]
    b = s["bounds"]
    bw = s["bandwidth"]
    lines = [
        f"{s['model']} on {s['preset']} ({s['strategy']} mapping), {s['decode_tokens']} "
        f"token{'s' if s['decode_tokens'] != 1 else ''} after a {s['prompt_tokens']}-token context",
        f"  latency per token   {s['latency_per_token_s'] * 1e6:,.1f} us  ({s['tokens_per_s']:,.0f} tokens/s)",
        f"  bounds              DRAM timing {b['dram_timing_bound_s'] * 1e6:,.1f} us "
        f"(latency {_over(s['latency_per_token_s'], b['dram_timing_bound_s'])}), "
        f"bandwidth {b['bandwidth_bound_s'] * 1e6:,.1f} us "
        f"({_over(s['latency_per_token_s'], b['bandwidth_bound_s'])})",
        "  breakdown           " + ", ".join(f"{k} {v * 1e6:,.1f} us" for k, v in s["breakdown_s"].items()),
        "  critical path ops   " + ", ".join(
            f"{k} {v * 1e6:,.1f} us" for k, v in sorted(s["breakdown_by_op_s"].items(),
                                                       key=lambda kv: (-kv[1], kv[0]))[:4]),
        f"  refresh stalls      {s['refresh_stall_s'] * 1e6:,.1f} us per channel and token",
        "  channel time        " + ", ".join(f"{k} {v * 1e6:,.1f} us" for k, v in s["channel_time_s"].items()
                                           if v * 1e6 >= 0.05),
        f"  energy per token    {e['nominal'] * 1e3:,.3f} mJ (range {e['low'] * 1e3:,.3f} - {e['high'] * 1e3:,.3f})",
        f"  row-hit rate        {s['row_hit_rate']:.4f}",
        f"  ASIC buffer         {s['asic_buffer_bytes']:,} B at its peak",
        f"  bandwidth           internal {bw['internal_Bps'] / 1e12:,.2f} of {bw['internal_peak_Bps'] / 1e12:,.2f} TB/s, "
        f"pins {bw['pin_Bps'] / 1e9:,.1f} of {bw['pin_peak_Bps'] / 1e9:,.0f} GB/s",
    ]
    if out:
        lines.append(f"  wrote               {', '.join(files)} in {out}")
    return "\n".join(lines)


def _over(latency: float, bound: float) -> str:
    """How far ``latency`` is above ``bound``, in percent of the bound."""
    return f"{(latency / bound - 1) * 100:+.1f} %" if bound > 0 else "n/a"


def render(result) -> dict[str, bytes]:
    """Every output file's bytes (computed before anything is written)."""
    files = {"result.json": result.to_json().encode()}
    csv = io.StringIO()
    csv.write("step,kv_len,start_s,latency_s\n")
    for i, st in enumerate(result.steps):
        csv.write(f"{i},{st['kv_len']},{st['start_s']!r},{st['latency_s']!r}\n")
    files["steps.csv"] = csv.getvalue().encode()
    files.update(_plots(result))
    if result.timeline is not None:
        files["timeline.json"] = _chrome_trace(result.timeline).encode()
    return files


def _plots(result) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result.to_dict()
    out = {}

    def save(fig, name):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
        plt.close(fig)
        out[name] = buf.getvalue()

    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = list(s["breakdown_s"])
    vals = [s["breakdown_s"][k] * 1e6 for k in names]
    ax.barh(names, vals, color="tab:blue")
    b = s["bounds"]
    ax.axvline(b["dram_timing_bound_s"] * 1e6, color="tab:red", ls="--", label="DRAM-timing bound (total)")
    ax.set_xlabel("us per token (critical path)")
    ax.set_title(f"{s['model']}: latency breakdown, {s['latency_per_token_s'] * 1e6:,.1f} us per token", fontsize=9)
    ax.legend(fontsize=7)
    save(fig, "latency_breakdown.png")

    ops = sorted(s["breakdown_by_op_s"].items(), key=lambda kv: (-kv[1], kv[0]))[:15][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.28 * max(len(ops), 1)))
    ax.barh([k for k, _ in ops], [v * 1e6 for _, v in ops], color="tab:purple")
    ax.set_xlabel("us per token on the critical path")
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title(f"{s['model']}: critical path by op (every layer's together; the 15 largest)",
                 fontsize=9)
    save(fig, "latency_by_op.png")

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot([st["kv_len"] for st in result.steps], [st["latency_s"] * 1e6 for st in result.steps], marker=".")
    ax.set_xlabel("context length (KV positions)")
    ax.set_ylabel("us per token")
    ax.set_title(f"{s['model']}: latency by position", fontsize=9)
    save(fig, "latency_by_position.png")

    fig, ax = plt.subplots(figsize=(6, 3.2))
    cats = list(s["energy_breakdown_J"])
    nom = [s["energy_breakdown_J"][k] * 1e3 for k in cats]
    lo = [s["energy_breakdown_range_J"]["low"][k] * 1e3 for k in cats]
    hi = [s["energy_breakdown_range_J"]["high"][k] * 1e3 for k in cats]
    ax.barh(cats, nom, xerr=[[n - l for n, l in zip(nom, lo)], [h - n for n, h in zip(nom, hi)]],
            color="tab:green", capsize=3)
    e = s["energy_per_token_J"]
    ax.set_xlabel("mJ per token (bars: nominal; whiskers: low-high)")
    ax.set_title(f"{s['model']}: energy {e['nominal'] * 1e3:.3f} mJ per token "
                 f"({e['low'] * 1e3:.3f}-{e['high'] * 1e3:.3f})", fontsize=9)
    save(fig, "energy_breakdown.png")
    return out


def _chrome_trace(timeline) -> str:
    """Chrome trace event format (opens in Perfetto): one complete event per node, from its
    start to its end, on its resource's track (a channel, the ASIC, a channel's link).

    Complete events on one track must not overlap (Perfetto and the trace format accept
    only nesting), but nodes of one resource can: a kernel ends when its last read's data
    are back, after its channel went to the next kernel, and transfers hold no resource.
    So a node that would overlap an earlier one on its track goes to the first further
    track of that resource where it does not ("channel 2 (2)", next to "channel 2")."""
    placed = []
    tracks: dict[tuple, int] = {}      # (lane, k) -> end of its last event
    lanes: dict[str, int] = {}         # lane -> order of first appearance
    for name, cat, ch, start, end in sorted(timeline, key=lambda e: (e[3], e[4])):
        lane = f"channel {ch}" if ch >= 0 and cat not in ("asic", "transfer") else (
            "ASIC" if cat == "asic" else f"link {ch}")
        lanes.setdefault(lane, len(lanes))
        k = 0
        while tracks.get((lane, k), start) > start:
            k += 1
        tracks[(lane, k)] = end
        placed.append((name, cat, (lane, k), start, end))
    tid_of = {t: i for i, t in enumerate(sorted(tracks, key=lambda t: (lanes[t[0]], t[1])))}
    events = [{"name": name, "cat": cat, "ph": "X", "pid": 0, "tid": tid_of[t],
               "ts": start / 1e6, "dur": (end - start) / 1e6}
              for name, cat, t, start, end in placed]
    meta = [{"name": "thread_name", "ph": "M", "pid": 0, "tid": tid,
             "args": {"name": lane if k == 0 else f"{lane} ({k + 1})"}}
            for (lane, k), tid in tid_of.items()]
    return json.dumps({"traceEvents": meta + events, "displayTimeUnit": "ns"}, sort_keys=True)
