"""SOFT-Tiny-Norm next to the timm backbones users would pick instead: PVTv2-B1, Swin-T, ConvNeXt-T, ResNet-50.

    python benchmarks/peers.py                       # full run (tens of minutes on 2 cores)
    python benchmarks/peers.py --models soft_norm_tiny resnet50 --no-train --no-write

Every model is timm's (`timm.create_model(name, pretrained=False)`); SOFT-Tiny-Norm runs twice, with
the detection default's landmark bound and faithful (unbounded). Measured per model:

- forward: `forward_intermediates(x, intermediates_only=True)` (the pyramid a detector reads), batch 1,
  eval mode, torch.no_grad, at 224x224, 512x512 and 800x1344: one warm-up pass at the size, then the median of
  --repeats passes (one pass and no warm-up for faithful SOFT at 800x1344 and above, tens of
  seconds each). Peak memory: growth of the process's maximum resident set during these passes over
  what it held after building the model and a 64x64 warm-up (the forward's own working memory).
- params (of the model without classifier, num_classes=0) and FLOPs of that forward at each size,
  counted by torch.utils.flop_counter.FlopCounterMode (one multiply-add = 2 FLOPs; see count_flops).
- training step at 224x224 (batch --train-batch, default 32): the model with its 1000-class head in
  train mode, cross-entropy on random labels, backward, fused AdamW (lr 1e-4). One warm-up step,
  then the median of --train-steps steps; peak memory is the growth of the maximum resident set
  from before the first step (gradients, AdamW state and activations).

Each (model, measurement) runs in its own subprocess; --rounds rounds run every case in turn, so
slow drift of a shared machine falls on all models alike. A case's value is the median over rounds
of its per-round medians. Parameter and FLOP counts do not vary and are made once.
Prints a Markdown table and, as its last line, the JSON of every result.

Writing (the rule of every benchmark script that writes, see backbone.doc_target): a full run
writes the "peers" section of docs/BENCHMARKS.md (only the text between its markers changes; see
benchmarks/doc_sections.py) and docs/peers_cost.png; --write FILE writes into FILE (the plot beside
it) instead; --no-write prints only. --models, --sizes and --no-train make a partial run: it prints
only unless --write FILE is given. The table is headed by one line naming the machine, thread
count, torch and timm versions, the command and the date.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import time
from pathlib import Path

# Before torch loads OpenMP: spin-waiting threads slow everything down on a shared CPU (docs/IMPLEMENTATION.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# benchmarks/ is on sys.path when this file runs as a script
from backbone import (DOC, ROOT, add_write_options, case_in_subprocess, command_line, doc_target, fmt,  # noqa: E402
                      header_line, machine, max_rss_bytes, style_cost_axes)
from doc_sections import write_section  # noqa: E402

PLOT = ROOT / "docs" / "peers_cost.png"
SIZES = [(224, 224), (512, 512), (800, 1344)]
TRAIN_SIZE = (224, 224)
TINY = (64, 64)  # the warm-up input that loads the libraries' lazy state before memory is measured
PEERS = ["pvt_v2_b1", "swin_tiny_patch4_window7_224", "convnext_tiny", "resnet50"]
PACKAGES = ("torch", "timm")  # the versions named above the table


def is_soft(model: str) -> bool:
    return model.startswith("soft_")


def slow_case(model: str, bound, size) -> bool:
    """Faithful SOFT from 800x1344 up: a pass takes tens of seconds, so one pass, no warm-up."""
    return is_soft(model) and bound is None and size[0] * size[1] >= 800 * 1344


# ------------------------------------------------------------------------ one case (subprocess)
def build(model: str, bound, size=None, num_classes: int = 0, kernel_method: str | None = None):
    """timm's model, randomly initialised. SOFT: the landmark bound (None: faithful) and, for
    counting, the kernel implementation. Swin with a `size`: window sizes chosen for it (timm
    shrinks a window to a stage map smaller than 7x7, without shift), and strict_img_size=False, so
    that it takes any input size (the tiny warm-up; detection's varying inputs), building its
    shifted-window attention masks in each forward. Without a size: timm's 224x224 model."""
    import timm

    kwargs = dict(pretrained=False, num_classes=num_classes)
    if is_soft(model):
        import soft_d2  # noqa: F401  (registers the SOFT variants with timm)

        kwargs["max_landmarks"] = bound
        if kernel_method:
            kwargs["kernel_method"] = kernel_method
    elif model.startswith("swin_") and size is not None:
        kwargs.update(img_size=tuple(size), strict_img_size=False)
    return timm.create_model(model, **kwargs)


def forward_case(spec: dict) -> dict:
    import torch

    net = build(spec["model"], spec["bound"], spec["size"]).eval()
    x = torch.randn(1, 3, *spec["size"])
    with torch.no_grad():
        net.forward_intermediates(torch.randn(1, 3, *TINY), intermediates_only=True)
        base = max_rss_bytes()
        if spec["warmup"]:
            net.forward_intermediates(x, intermediates_only=True)
        times = []
        for _ in range(spec["repeats"]):
            start = time.perf_counter()
            net.forward_intermediates(x, intermediates_only=True)
            times.append(time.perf_counter() - start)
    peak = max_rss_bytes() - base
    return dict(time_s=statistics.median(times), times_s=times, peak_mb=peak / 2**20)


def train_case(spec: dict) -> dict:
    import torch
    import torch.nn.functional as F

    net = build(spec["model"], spec["bound"], num_classes=1000).train()  # Swin: its 224x224 model
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
    images = torch.randn(spec["batch"], 3, *TRAIN_SIZE)
    labels = torch.randint(0, 1000, (spec["batch"],))

    def step() -> float:
        start = time.perf_counter()
        loss = F.cross_entropy(net(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    base = max_rss_bytes()
    step()  # warm-up: allocates the gradients and AdamW's state
    times = [step() for _ in range(spec["steps"])]
    peak = max_rss_bytes() - base
    median = statistics.median(times)
    return dict(time_s=median, times_s=times, images_per_s=spec["batch"] / median, peak_mb=peak / 2**20)


def cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """softmax(q k^T) v, q: [..., L, E], k: [..., S, E], v: [..., S, Ev]: the two products,
    2 L S (E + Ev) FLOPs per batch and head (softmax and masks are elementwise)."""
    return 2 * math.prod(query[:-1]) * key[-2] * (query[-1] + value[-1])


def eigh_flops(a, *args, out_shape=None, **kwargs) -> int:
    """Symmetric eigendecomposition of m x m matrices: LAPACK's syevd, not a GEMM, so an operation
    count: tridiagonal reduction 4/3 m^3, divide and conquer at most 4/3 m^3, back-transformation
    2 m^3 (the 14/3 m^3 of soft_d2/d2/flops.py; an upper estimate)."""
    return round(math.prod(a[:-2]) * 14 / 3 * a[-1] ** 3)


def count_flops(net, x) -> dict:
    """FLOPs of one forward_intermediates pass, by operator. FlopCounterMode counts GEMMs and
    convolutions; it has no formula for the CPU kernel that scaled_dot_product_attention runs
    (PVTv2's attention, SOFT's stage 4) nor for torch.linalg.eigh (SOFT's Newton solve on a CPU),
    which would count zero: both are given one here. Elementwise work is not counted."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    extra = {aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa_flops, aten._linalg_eigh: eigh_flops}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=extra) as counter:
        net.forward_intermediates(x, intermediates_only=True)
    by_op = {str(op): n / 1e9 for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return dict(gflops=counter.get_total_flops() / 1e9, gflops_by_op=by_op)


def count_case(spec: dict) -> dict:
    """Params and FLOPs at every size. SOFT is counted with kernel_method="torch": the compiled
    engine's custom operators are opaque to FlopCounterMode (zero), while the torch path runs the
    same products as PyTorch GEMMs (dense below STREAM_ELEMENTS elements of G, streamed above, where
    G(Q, L) is formed once per product as the compiled engine does)."""
    import torch

    method = "torch" if is_soft(spec["model"]) else None
    out = {}
    for size in spec["sizes"]:
        net = build(spec["model"], spec["bound"], size, kernel_method=method).eval()
        out.setdefault("params_m", sum(p.numel() for p in net.parameters()) / 1e6)
        out[f"{size[0]}x{size[1]}"] = count_flops(net, torch.randn(1, 3, *size))
    return out


def run_case(spec: dict) -> dict:
    from soft_d2.utils.cpu_allocator import keep_freed_memory

    kept = keep_freed_memory()  # before torch allocates (see soft_d2/utils/cpu_allocator.py)
    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)  # the same weights and inputs in every round
    result = {"forward": forward_case, "train": train_case, "count": count_case}[spec["kind"]](spec)
    return dict(spec, **result, keep_freed_memory=bool(kept))


# ------------------------------------------------------------------------------------ driver
def size_label(size) -> str:
    return str(size[0]) if size[0] == size[1] else f"{size[0]}x{size[1]}"


def model_label(entry: dict) -> tuple[str, str]:
    if not is_soft(entry["model"]):
        return entry["model"], "-"
    return entry["model"], "faithful" if entry["bound"] is None else f"<= {entry['bound']}"


def case_key(spec: dict) -> str:
    size = spec.get("size")
    return f"{spec['model']}|{spec['bound']}|{spec['kind']}" + (f"|{size[0]}x{size[1]}" if size else "")


def summarise(runs: list[dict]) -> dict:
    """Median over rounds of the per-round medians; the error if no round succeeded."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return dict(error=runs[-1]["error"], rounds_ok=0, rounds=len(runs))
    out = dict(rounds_ok=len(ok), rounds=len(runs))
    for key in ("time_s", "peak_mb", "images_per_s"):
        if key in ok[0]:
            out[key] = statistics.median(r[key] for r in ok)
            out[f"{key}_per_round"] = [r[key] for r in ok]
    if "images_per_s" in out:  # the throughput of the reported step time
        out["images_per_s"] = ok[0]["batch"] / out["time_s"]
    if ok[0]["kind"] == "count":
        out.update({k: v for k, v in ok[0].items() if k == "params_m" or re.fullmatch(r"\d+x\d+", k)})
    return out


def cell(summary: dict | None, key: str, spec: str) -> str:
    if summary is None:
        return "not run"
    text = fmt(summary, key, spec).replace("|", "/")
    if "error" not in summary and summary["rounds_ok"] < summary["rounds"]:
        text += f" ({summary['rounds_ok']} of {summary['rounds']} rounds)"
    return text


def gflops_cell(count: dict | None, size) -> str:
    if count is None:
        return "not run"
    if "error" in count:
        return count["error"].replace("|", "/")
    return f"{count[f'{size[0]}x{size[1]}']['gflops']:.1f}"


def table(entries: list[dict], summary: dict, sizes, batch: int) -> str:
    big = size_label(sizes[-1])
    head = (["model", "landmarks", "params (M)"] + [f"GFLOPs {size_label(s)}" for s in sizes]
            + [f"fwd {size_label(s)} (s)" for s in sizes]
            + [f"peak MB {big}", f"train step {size_label(TRAIN_SIZE)} b{batch} (s)", "img/s"])
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for e in entries:
        get = lambda kind, size=None: summary.get(case_key(dict(e, kind=kind, size=size)))  # noqa: E731
        count, train = get("count"), get("train")
        row = list(model_label(e)) + [cell(count, "params_m", ".1f")]
        row += [gflops_cell(count, s) for s in sizes]
        row += [cell(get("forward", s), "time_s", ".3f") for s in sizes]
        row += [cell(get("forward", sizes[-1]), "peak_mb", ".0f"), cell(train, "time_s", ".2f"),
                cell(train, "images_per_s", ".1f")]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def eigh_share(entries: list[dict], summary: dict, sizes) -> float:
    """Largest share of a SOFT forward's FLOPs that is the eigendecomposition estimate."""
    share = 0.0
    for e in entries:
        count = summary.get(case_key(dict(e, kind="count")))
        if not is_soft(e["model"]) or count is None or "error" in count:
            continue
        for s in sizes:
            c = count[f"{s[0]}x{s[1]}"]
            share = max(share, c["gflops_by_op"].get("aten._linalg_eigh", 0.0) / c["gflops"])
    return share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed forward passes per case and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=3, help="timed training steps per round")
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--models", nargs="+", default=None,
                        help=f"a subset of soft_norm_tiny (bounded and faithful) {' '.join(PEERS)}")
    parser.add_argument("--sizes", nargs="+", default=None, help="HxW forward sizes (default 224x224 512x512 800x1344)")
    parser.add_argument("--no-train", action="store_true", help="skip the training step")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per case")
    add_write_options(parser)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return

    from soft_d2.d2.config import DEFAULT_MAX_LANDMARKS

    entries = [dict(model="soft_norm_tiny", bound=DEFAULT_MAX_LANDMARKS), dict(model="soft_norm_tiny", bound=None)]
    entries += [dict(model=m, bound=None) for m in PEERS]
    if args.models:
        unknown = set(args.models) - {e["model"] for e in entries}
        if unknown:
            parser.error(f"unknown model(s) {sorted(unknown)}; choose from soft_norm_tiny {' '.join(PEERS)}")
        entries = [e for e in entries if e["model"] in args.models]
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes] if args.sizes else SIZES
    print(header_line(command_line(), args.threads, PACKAGES), flush=True)

    common = dict(threads=args.threads)
    runs: dict[str, list[dict]] = {}
    for rnd in range(args.rounds):
        for e in entries:
            specs = [dict(common, **e, kind="count", sizes=sizes)] if rnd == 0 else []
            for size in sizes:
                slow = slow_case(e["model"], e["bound"], size)
                specs.append(dict(common, **e, kind="forward", size=size, warmup=not slow,
                                  repeats=1 if slow else args.repeats))
            if not args.no_train:
                specs.append(dict(common, **e, kind="train", batch=args.train_batch, steps=args.train_steps))
            for spec in specs:
                key = case_key(spec)
                if any("error" in r and r["error"].startswith("over ") for r in runs.get(key, [])):
                    continue  # timed out in a previous round: not run again
                r = case_in_subprocess(spec, args.timeout, __file__)
                runs.setdefault(key, []).append(r)
                name, mode = model_label(e)
                what = spec["kind"] + (f" {size_label(spec['size'])}" if "size" in spec else "")
                if "error" in r:
                    got = r["error"]
                elif spec["kind"] == "count":
                    got = f"{r['params_m']:.1f} M params, " + ", ".join(
                        f"{r[f'{s[0]}x{s[1]}']['gflops']:.1f}" for s in sizes) + " GFLOPs"
                else:
                    got = f"{r['time_s']:.3f} s, {r['peak_mb']:.0f} MB"
                print(f"round {rnd + 1}: {name} ({mode}) {what}: {got}", flush=True)

    summary = {key: summarise(rs) for key, rs in runs.items()}
    text = table(entries, summary, sizes, args.train_batch)
    print(text)
    target = doc_target(args.write, args.no_write, partial=bool(args.models or args.sizes or args.no_train))
    if target is not None:
        settings = dict(repeats=args.repeats, rounds=args.rounds, train_steps=args.train_steps,
                        train_batch=args.train_batch, bound=DEFAULT_MAX_LANDMARKS, threads=args.threads)
        write_doc(text, settings, eigh_share(entries, summary, sizes), sizes, target)
        write_plot(entries, summary, sizes, target.parent / PLOT.name)
    print(json.dumps(dict(machine=machine(), threads=args.threads, sizes=sizes, summary=summary, runs=runs)))


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "es" if word.endswith("s") else "s")


def swin_padding_text(sizes) -> str:
    """What timm's Swin does with stage maps that are not multiples of its window (sizes given)."""
    parts = []
    for h, w in sizes:
        maps = [(h // 4 >> i, w // 4 >> i) for i in range(4)]
        padded = [tuple(-(-side // min(side, 7)) * min(side, 7) for side in m) for m in maps]
        if maps != padded:
            parts.append(f"At {h}x{w} its stage maps are {', '.join(f'{a}x{b}' for a, b in maps)}; timm pads "
                         f"each at the bottom and right with zero tokens to a multiple of the 7x7 window "
                         f"({', '.join(f'{a}x{b}' for a, b in padded)}), lets them take part in the "
                         "attention unmasked (the shifted-window mask is built for the padded map) and "
                         "crops the result back.")
    return " ".join(parts) or "Its stage maps are multiples of its window at these sizes (no padding)."


def write_doc(text: str, s: dict, eigh: float, sizes, path: Path = DOC, command: str | None = None) -> None:
    """The "peers" section of the benchmarks document at ``path`` (nothing else in it changes):
    ``text`` is the table, ``s`` the run's settings (repeats, rounds, train_steps, train_batch,
    bound, threads)."""
    header = header_line(command or command_line(), s["threads"], PACKAGES)
    body = (
        "## Against the backbones users pick instead\n\n"
        "Every model is timm's, randomly initialised; "
        f"SOFT-Tiny-Norm with the detection default's bound (`max_landmarks={s['bound']}`) and faithful. "
        "Forward: `forward_intermediates` (the feature pyramid a detector reads), batch 1, eval mode, "
        f"no grad; one warm-up pass, then the median of {plural(s['repeats'], 'pass')} (faithful SOFT at 800x1344: "
        "one pass, no warm-up). Peak memory: growth of the process's maximum resident set during the "
        "passes over what it held after building the model and a 64x64 warm-up. Training step: the "
        f"model with its 1000-class head, 224x224, batch {s['train_batch']}, cross-entropy, backward, "
        f"fused AdamW; the median of {plural(s['train_steps'], 'step')} after one warm-up step. Each case runs "
        f"in its own process; {plural(s['rounds'], 'round')} run all cases in turn, and each value is the median over "
        "rounds of the per-round medians. FLOPs: `torch.utils.flop_counter.FlopCounterMode` over one "
        "forward (one multiply-add = 2 FLOPs): GEMMs, convolutions, and, with formulas added because it "
        "counts them as zero, the CPU kernel of `scaled_dot_product_attention` (2 L S (E + Ev) per head) "
        "and SOFT's symmetric eigendecompositions (the Newton solve on a CPU; LAPACK, estimated at "
        f"14/3 m^3 each, at most {100 * eigh:.1f}% of a SOFT count); elementwise work is not counted. "
        "SOFT is counted with `kernel_method=\"torch\"`: the compiled engine's operators are opaque to "
        "the counter, the torch path runs the same products as GEMMs. Parameters exclude the "
        "classifier head. Swin is built with `img_size=(H, W)` and `strict_img_size=False` (shifted-"
        f"window masks built in each forward, any input size). {swin_padding_text(sizes)} The SOFT "
        "landmark bound is not active at 224x224 (at most 49 landmarks), so the two SOFT rows compute "
        "the same function there.\n\n"
        f"{header}\n\n{text}\n\n![forward cost against input size](peers_cost.png)\n"
    )
    write_section(path, "peers", body, "benchmarks/peers.py")


def write_plot(entries: list[dict], summary: dict, sizes, path: Path = PLOT) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for e in entries:
        name, mode = model_label(e)
        label = name if mode == "-" else f"{name} ({mode})"
        pts = []
        for s in sizes:
            r = summary.get(case_key(dict(e, kind="forward", size=s)))
            if r is not None and "error" not in r:
                pts.append((s[0] * s[1] / 1e6, r["time_s"], r["peak_mb"]))
        if pts:
            axes[0].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
            mem = [p for p in pts if p[2] > 0]  # a log axis has no zero
            axes[1].plot([p[0] for p in mem], [p[2] for p in mem], marker="o", label=label)
    style_cost_axes(axes)
    if axes[0].lines:
        axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
