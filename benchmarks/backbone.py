"""Backbone cost versus input size: SOFT (bounded and faithful landmarks) next to detectron2's R50.

    python benchmarks/backbone.py                  # full run (tens of minutes on 2 cores)
    python benchmarks/backbone.py --quick          # 224 and 800x1344, Tiny-Norm and R50 only

Each case runs in its own subprocess (clean memory high-water mark), batch 1, torch.no_grad, one
warm-up pass then the median of --repeats passes (one pass, no warm-up, for the faithful function
at 800x1344, which takes tens of seconds; larger faithful inputs are skipped). Peak memory is the growth of the process's
maximum resident set during the timed passes over what it held after building the model and a
tiny warm-up (so it is the forward's own working memory). FLOPs are counted once per case with
torch.utils.flop_counter (matmul/conv/attention; one multiply-add = 2 FLOPs), SOFT on its torch
path (the same products as PyTorch GEMMs; the compiled engine's operators count zero).
Writes docs/BENCHMARKS.md's backbone tables (between markers) and docs/backbone_cost.png.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Before torch loads OpenMP: spin-waiting threads slow everything down on a shared CPU (docs/IMPLEMENTATION.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "BENCHMARKS.md"
PLOT = ROOT / "docs" / "backbone_cost.png"
SIZES = [(224, 224), (448, 448), (640, 640), (800, 1344), (1024, 1792)]


# ------------------------------------------------------------------------ one case (subprocess)
def build(model: str, bound, kernel_method: str = "auto"):
    if model == "r50":
        from detectron2.config import get_cfg
        from detectron2.modeling import build_resnet_backbone
        from detectron2.layers import ShapeSpec

        cfg = get_cfg()  # detectron2's default: ResNet-50, FrozenBN, res2-res5 (as R50-FPN uses)
        cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
        net = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
        return net, lambda x: net(x)
    import timm
    import soft_d2  # noqa: F401  (registers the variants)

    net = timm.create_model(model, num_classes=0, max_landmarks=bound, kernel_method=kernel_method).eval()
    return net, lambda x: net.forward_intermediates(x, intermediates_only=True)


def max_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_case(spec: dict) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from soft_d2.utils.cpu_allocator import keep_freed_memory

    keep_freed_memory()  # the same allocator setting for every backbone, as the trainers use
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)  # the same weights and input in every case
    net, fwd = build(spec["model"], spec["bound"])
    x = torch.randn(1, 3, *spec["size"])
    with torch.no_grad():
        fwd(torch.randn(1, 3, 64, 64))
        base = max_rss_bytes()
        if spec["repeats"] > 1:
            fwd(x)  # warm-up at size (a single pass of many seconds needs none)
        times = []
        for _ in range(spec["repeats"]):
            start = time.perf_counter()
            fwd(x)
            times.append(time.perf_counter() - start)
        peak = max_rss_bytes() - base
        # counted on the torch path: the compiled engine's operators are opaque to the counter
        _, count_fwd = build(spec["model"], spec["bound"], kernel_method="torch")
        with FlopCounterMode(display=False) as counter:
            count_fwd(x)
    return dict(spec, time_s=statistics.median(times), peak_mb=peak / 2**20, gflops=counter.get_total_flops() / 1e9)


def case_in_subprocess(spec: dict, timeout: float, script: str = __file__) -> dict:
    """``script --case JSON`` in a fresh process: its last stdout line as JSON, or the spec with an
    error (the last stderr line, or the timeout)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        proc = subprocess.run([sys.executable, script, "--case", json.dumps(spec)], capture_output=True,
                              text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return dict(spec, error=f"over {timeout:.0f} s")
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return dict(spec, error=lines[-1] if lines else f"exit status {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ driver
def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    import torch

    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def fmt(r: dict, key: str, spec: str) -> str:
    return r["error"] if "error" in r else format(r[key], spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bound", type=int, default=None, help="bounded mode's max_landmarks (default: the detection default)")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--no-write", action="store_true", help="print only, leave docs/ alone")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return

    from soft_d2.d2.config import DEFAULT_MAX_LANDMARKS

    bound = args.bound or DEFAULT_MAX_LANDMARKS
    sizes = [(224, 224), (800, 1344)] if args.quick else SIZES
    models = [("soft_norm_tiny", bound), ("soft_norm_tiny", None), ("r50", None)]
    if not args.quick:
        models[2:2] = [("soft_norm_small", bound), ("soft_norm_small", None)]
    common = dict(threads=args.threads, repeats=args.repeats)
    print(machine())
    rows = []
    for model, b in models:
        for size in sizes:
            faithful_too_big = b is None and model != "r50" and size[0] * size[1] > 800 * 1344
            if faithful_too_big:
                rows.append(dict(model=model, bound=b, size=size, error="skipped (minutes)"))
                continue
            slow = b is None and model != "r50" and size[0] * size[1] >= 800 * 1344
            spec = dict(common, model=model, bound=b, size=size, repeats=1 if slow else args.repeats)
            r = case_in_subprocess(spec, args.timeout)
            rows.append(r)
            print(f"{model:16} bound={str(b):5} {size[0]}x{size[1]}: {fmt(r, 'time_s', '.3f')} s, "
                  f"{fmt(r, 'peak_mb', '.0f')} MB, {fmt(r, 'gflops', '.1f')} GFLOPs", flush=True)

    # cost of each bound at 800x1344 (SOFT-Tiny-Norm); what it costs in accuracy is measured on
    # trained weights by benchmarks/landmark_bound.py
    ref = next((r for r in rows if r["model"] == "soft_norm_tiny" and r["bound"] is None
                and tuple(r["size"]) == (800, 1344)), None) or case_in_subprocess(
        dict(common, model="soft_norm_tiny", bound=None, size=(800, 1344), repeats=1), args.timeout)
    trade = []
    for b in [49, 100, 196, 400]:
        r = case_in_subprocess(dict(common, model="soft_norm_tiny", bound=b, size=(800, 1344)), args.timeout)
        trade.append(r)
        print(f"bound {b}: {fmt(r, 'time_s', '.3f')} s", flush=True)
    trade.append(ref)

    if not args.no_write:
        write_doc(rows, trade, machine(), bound)
        write_plot(rows)


def table(rows: list[dict]) -> str:
    lines = ["| backbone | landmarks | input | time (s) | peak memory (MB) | GFLOPs | FLOPs/pixel |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        h, w = r["size"]
        mode = "-" if r["model"] == "r50" else ("faithful" if r["bound"] is None else f"<= {r['bound']}")
        name = "detectron2 R50" if r["model"] == "r50" else r["model"]
        per_px = "" if "error" in r else f"{r['gflops'] * 1e9 / (h * w):,.0f}"
        lines.append(f"| {name} | {mode} | {h}x{w} | {fmt(r, 'time_s', '.3f')} | {fmt(r, 'peak_mb', '.0f')} | "
                     f"{fmt(r, 'gflops', '.1f')} | {per_px} |")
    return "\n".join(lines)


def trade_table(trade: list[dict]) -> str:
    lines = ["| max landmarks | time (s) | peak memory (MB) | GFLOPs |", "|---|---:|---:|---:|"]
    for r in trade:
        label = "unbounded (faithful)" if r["bound"] is None else str(r["bound"])
        lines.append(f"| {label} | {fmt(r, 'time_s', '.3f')} | {fmt(r, 'peak_mb', '.0f')} | {fmt(r, 'gflops', '.1f')} |")
    return "\n".join(lines)


def write_doc(rows, trade, where: str, bound: int) -> None:
    section = (
        "<!-- backbone:begin (written by benchmarks/backbone.py) -->\n"
        f"## Backbone cost versus input size\n\nMachine: {where}. Batch 1, no grad, median of timed passes; peak "
        "memory = growth of the process's max RSS during the forward passes.\n"
        f"Bounded mode: `max_landmarks={bound}` (the detection default).\n\n"
        f"{table(rows)}\n\n![backbone cost](backbone_cost.png)\n\n"
        "### The landmark bound at 800x1344: cost (SOFT-Tiny-Norm)\n\n"
        "What each bound costs in accuracy, on trained weights: \"The landmark bound on trained weights\" below.\n\n"
        f"{trade_table(trade)}\n"
        "<!-- backbone:end -->\n"
    )
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    pattern = re.compile(r"<!-- backbone:begin.*?<!-- backbone:end -->\n", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text)


def style_cost_axes(axes) -> None:
    """Time and memory panels against input megapixels, log y (this plot and peers.py's)."""
    for ax, ylabel in zip(axes, ["forward time (s)", "peak memory (MB)"]):
        ax.set_xlabel("input megapixels")
        ax.set_ylabel(ylabel)
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)


def write_plot(rows) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    series = {}
    for r in rows:
        if "error" in r:
            continue
        label = "detectron2 R50" if r["model"] == "r50" else (
            f"{r['model']} ({'faithful' if r['bound'] is None else 'bounded ' + str(r['bound'])})")
        series.setdefault(label, []).append((r["size"][0] * r["size"][1] / 1e6, r["time_s"], r["peak_mb"]))
    for label, pts in series.items():
        pts.sort()
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        axes[1].plot([p[0] for p in pts], [p[2] for p in pts], marker="o", label=label)
    style_cost_axes(axes)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)


if __name__ == "__main__":
    main()
