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

Writing (the rule of every benchmark script that writes, see doc_target): a full run writes the
"backbone" section of docs/BENCHMARKS.md (only the text between its markers changes; see
benchmarks/doc_sections.py) and docs/backbone_cost.png; --write FILE writes into FILE (the plot
beside it) instead; --no-write prints only. --quick is a partial run: it prints only unless
--write FILE is given. Each table is headed by one line naming the machine, thread count, torch,
timm and detectron2 versions, the command and the date.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from doc_sections import write_section  # benchmarks/ is on sys.path when a script runs

# Before torch loads OpenMP: spin-waiting threads slow everything down on a shared CPU (docs/IMPLEMENTATION.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "BENCHMARKS.md"
PLOT = ROOT / "docs" / "backbone_cost.png"
SIZES = [(224, 224), (448, 448), (640, 640), (800, 1344), (1024, 1792)]
PACKAGES = ("torch", "timm", "detectron2")  # the versions named above each table


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
def cpu_model() -> str:
    """The CPU's model name (lscpu), else what the platform module knows."""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine(device: str = "cpu") -> str:
    """The CPU model and its core count; on CUDA the GPU's name and CUDA version first."""
    where = f"{cpu_model()}, {os.cpu_count()} cores"
    if device == "cuda":
        import torch

        where = f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}), host {where}"
    return where


def versions(packages) -> str:
    """"torch 2.x, timm 1.x, ...": each package's __version__, or "not installed"."""
    import importlib

    out = []
    for name in packages:
        try:
            out.append(f"{name} {importlib.import_module(name).__version__}")
        except ImportError:
            out.append(f"{name} not installed")
    return ", ".join(out)


def command_line(argv=None) -> str:
    """The command that reruns this process from the repository root (``python SCRIPT ARGS``)."""
    argv = sys.argv if argv is None else argv
    script = Path(argv[0]).resolve()
    shown = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
    return shlex.join(["python", str(shown), *argv[1:]])


def header_line(command: str, threads: int, packages=("torch",), device: str = "cpu") -> str:
    """The line above every table a benchmark writes: machine, threads, software, command, date.

    Machine: AMD EPYC, 2 cores, 2 threads; torch 2.14.1+cu130, timm 1.0.31; command: `python
    benchmarks/peers.py`; date: 2026-01-31.  (one line)
    """
    return (f"Machine: {machine(device)}, {threads} threads; {versions(packages)}; "
            f"command: `{command}`; date: {datetime.date.today().isoformat()}.")


def add_write_options(parser) -> None:
    """--write FILE and --no-write, the options of doc_target's rule."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", type=Path, metavar="FILE",
                       help=f"write the section(s) into FILE (default on a full run: {DOC.relative_to(ROOT)})")
    group.add_argument("--no-write", action="store_true", help="print only, write no file")


def doc_target(write: Path | None, no_write: bool, partial: bool) -> Path | None:
    """The file a benchmark writes its section(s) into, or None to print only. The rule of every
    benchmark that writes: a full run writes docs/BENCHMARKS.md (``--write FILE``: that file
    instead); ``--no-write`` prints only; a partial run (--quick, a subset of what a full run
    measures) prints only unless ``--write FILE`` names the file explicitly."""
    if no_write:
        return None
    if write is not None:
        return Path(write)
    if partial:
        print("A partial run: printed only (--write FILE writes its section into FILE).", flush=True)
        return None
    return DOC


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
    add_write_options(parser)
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
    print(header_line(command_line(), args.threads, PACKAGES), flush=True)
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

    target = doc_target(args.write, args.no_write, partial=args.quick)
    if target is not None:
        write_doc(rows, trade, bound, args.threads, target)
        write_plot(rows, target.parent / PLOT.name)


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


def write_doc(rows, trade, bound: int, threads: int, path: Path = DOC, command: str | None = None) -> None:
    """The "backbone" section of the benchmarks document at ``path`` (nothing else in it changes)."""
    from soft_d2.d2.config import DEFAULT_MAX_LANDMARKS

    header = header_line(command or command_line(), threads, PACKAGES)
    body = (
        "## Backbone cost versus input size\n\n"
        "Batch 1, no grad, median of timed passes; peak memory = growth of the process's max RSS during "
        f"the forward passes. Bounded mode: `max_landmarks={bound}`"
        f"{' (the detection default)' if bound == DEFAULT_MAX_LANDMARKS else ''}.\n\n"
        f"{header}\n\n{table(rows)}\n\n![backbone cost](backbone_cost.png)\n\n"
        "### The landmark bound at 800x1344: cost (SOFT-Tiny-Norm)\n\n"
        "What each bound costs in accuracy, on trained weights: \"The landmark bound on trained weights\" below.\n\n"
        f"{header}\n\n{trade_table(trade)}\n"
    )
    write_section(path, "backbone", body, "benchmarks/backbone.py")


def style_cost_axes(axes) -> None:
    """Time and memory panels against input megapixels, log y (this plot and peers.py's)."""
    for ax, ylabel in zip(axes, ["forward time (s)", "peak memory (MB)"]):
        ax.set_xlabel("input megapixels")
        ax.set_ylabel(ylabel)
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)


def write_plot(rows, path: Path = PLOT) -> None:
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
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
