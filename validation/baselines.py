"""A roofline-plus-overhead model of batch-1 decode on CPUs and GPUs.

    python -m validation.baselines [--data validation/data]

Time per token = bytes moved / effective bandwidth + layers x per-layer overhead + a
constant per token. Bytes moved per decode step (weights, K/V read, activations) come from
the trace summary at the step's context length, scaled from the traces' BF16 to the
measured precision. Eager PyTorch decode is bound by memory and by per-operator host
overhead, which grows with the number of layers; FLOPs are far below any device's peak at
batch 1 and are reported, not fitted.

* For the machine that measured ``validation/data``: the three terms are fitted per
  precision and thread count by least squares over the models, and the error of the fit
  is stated per model.
* For hardware we do not have (T4, Xeon Gold 6154, A100, H200): the spec bandwidth times an
  efficiency range and a per-layer overhead range from published runs give a range.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ELEMENT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
DATA = Path(__file__).parent / "data"


@dataclass(frozen=True)
class Device:
    """Spec-sheet hardware with the ranges the model needs."""

    name: str
    bandwidth_GBps: float
    efficiency: tuple[float, float]          # achieved / peak bandwidth (low, high)
    layer_overhead_ms: tuple[float, float]   # host cost per layer per token, eager PyTorch
    source: str


DEVICES = {
    "T4": Device("NVIDIA T4", 320.0, (0.6, 0.78), (0.32, 0.95),
                 "NVIDIA T4 spec: 256-bit GDDR6 at 10 Gb/s = 320 GB/s; efficiency 78 % assumed "
                 "(high), 60 % (low, assumed); per-layer HF eager overhead 0.32-0.95 ms from V100 "
                 "and RTX 5090 HF runs (shared reference baselines.md 4.1)"),
    "Xeon-6154": Device("Intel Xeon Gold 6154 (1 socket)", 128.0, (60.0 / 128.0, 90.0 / 128.0),
                        (1.0, 2.0),
                        "Intel ARK: 6 x DDR4-2666 = 128 GB/s; 90 GB/s achieved (high) and 60 GB/s "
                        "(low), both as baselines.md 4.3 assumes them; per-layer eager overhead 1-2 ms "
                        "(about 1.7 ms derived from published GPT-2 small CPU runs, baselines.md 4.3)"),
    "A100": Device("NVIDIA A100 80GB SXM", 2039.0, (0.6, 0.8), (0.1, 0.32),
                   "NVIDIA A100 80GB spec 2,039 GB/s; efficiency assumed; per-layer overhead "
                   "from fused (0.1) to HF eager on a fast host (0.32), baselines.md 4.1"),
    "H200": Device("NVIDIA H200", 4800.0, (0.6, 0.8), (0.1, 0.32),
                   "NVIDIA H200 spec 4.8 TB/s; efficiency and overhead assumed as for A100"),
}


def describe(device: str, precision: str) -> str:
    """The model's constants for ``device`` in words, as the report states them."""
    d = DEVICES[device]
    return (f"{d.bandwidth_GBps:.0f} GB/s x {100 * d.efficiency[0]:.0f}-{100 * d.efficiency[1]:.0f} %, "
            f"{d.layer_overhead_ms[0]:g}-{d.layer_overhead_ms[1]:g} ms/layer, {precision.upper()}")


def step_bytes(model: str, precision: str, ctx: int) -> tuple[float, int, float]:
    """(bytes moved, layers, FLOPs) of one decode step at context ``ctx``."""
    import workloads

    trace = workloads.load_bundled(model)
    s = workloads.summarize(trace, ctx)
    scale = ELEMENT_BYTES[precision] / 2  # bundled traces are BF16
    d = s["decode"]
    moved = (d["weight_bytes"] + d["kv_read_bytes"] + d["kv_write_bytes"] + d["activation_bytes"]) * scale
    return moved, s["layers"], d["flops"]


def load_measurements(data: Path = DATA, device: str = "cpu") -> list[dict]:
    out = []
    for path in sorted(Path(data).glob(f"{device}-*.json")):
        out.append(json.loads(path.read_text()))
    return out


def fit(measurements: list[dict]) -> dict:
    """Per (precision, threads): fitted terms and the per-model error."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for m in measurements:
        groups.setdefault((m["precision"], m["threads"]), []).append(m)
    out = {}
    for (precision, threads), rows in sorted(groups.items()):
        xs, ys = [], []
        for m in rows:
            ctx = m["prompt_tokens"] + m["warmup_tokens"] + m["decode_tokens"] // 2
            moved, layers, _ = step_bytes(m["model"], precision, ctx)
            xs.append((moved, layers, 1.0))
            ys.append(m["median_s_per_token"])
        a = np.array(xs, dtype=float)
        y = np.array(ys, dtype=float)
        cols = [0, 1, 2]
        while True:
            coef, *_ = np.linalg.lstsq(a[:, cols], y, rcond=None)
            if (coef >= 0).all() or len(cols) == 1:
                break
            cols.pop(int(np.argmin(coef)))  # a negative term has no physical meaning
        full = np.zeros(3)
        full[cols] = np.maximum(coef, 0)
        pred = a @ full
        per_model = {m["model"]: {"measured_s": float(yy), "model_s": float(p),
                                  "error": float((p - yy) / yy)}
                     for m, yy, p in zip(rows, y, pred)}
        out[f"{precision}/t{threads}"] = {
            "bandwidth_GBps": (1.0 / full[0] / 1e9) if full[0] > 0 else None,
            "layer_overhead_ms": full[1] * 1e3, "token_overhead_ms": full[2] * 1e3,
            "max_abs_error": max(abs(v["error"]) for v in per_model.values()),
            "mean_abs_error": statistics.fmean(abs(v["error"]) for v in per_model.values()),
            "models": per_model,
        }
    return out


def estimate(device: str, model: str, precision: str, ctx: int) -> dict:
    """Low/high time per token on spec-sheet hardware (no measurement)."""
    d = DEVICES[device]
    moved, layers, flops = step_bytes(model, precision, ctx)
    fast = moved / (d.bandwidth_GBps * 1e9 * d.efficiency[1]) + layers * d.layer_overhead_ms[0] * 1e-3
    slow = moved / (d.bandwidth_GBps * 1e9 * d.efficiency[0]) + layers * d.layer_overhead_ms[1] * 1e-3
    return {"device": d.name, "low_s": fast, "high_s": slow,
            "bandwidth_bound_s": moved / (d.bandwidth_GBps * 1e9), "flops": flops}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA))
    args = ap.parse_args(argv)
    res = fit(load_measurements(Path(args.data)))
    for key, r in res.items():
        bw = f"{r['bandwidth_GBps']:.1f} GB/s" if r["bandwidth_GBps"] else "n/a"
        print(f"cpu {key}: effective bandwidth {bw}, {r['layer_overhead_ms']:.2f} ms/layer, "
              f"{r['token_overhead_ms']:.2f} ms/token; error max {100 * r['max_abs_error']:.1f} %, "
              f"mean {100 * r['mean_abs_error']:.1f} %")
        for name, v in r["models"].items():
            print(f"    {name:12s} measured {v['measured_s'] * 1e3:8.1f} ms  model {v['model_s'] * 1e3:8.1f} ms  "
                  f"error {100 * v['error']:+6.1f} %")
    for dev in DEVICES:
        e = estimate(dev, "gpt2-xl", "fp16" if dev != "Xeon-6154" else "fp32", 1024)
        print(f"{e['device']}: gpt2-xl at context 1024 {e['low_s'] * 1e3:.1f}-{e['high_s'] * 1e3:.1f} ms/token "
              f"(bandwidth bound {e['bandwidth_bound_s'] * 1e3:.1f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
