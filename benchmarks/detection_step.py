"""Seconds per training iteration of Mask R-CNN at COCO size (800x1333): SOFT-Tiny-Norm next to
detectron2's R50, fp32 and bf16 autocast.

    python benchmarks/detection_step.py                    # all four cases, 4 timed steps each
    python benchmarks/detection_step.py --cases soft:fp32 --steps 2

Each case runs in its own subprocess (clean memory high-water mark): the published COCO config
(80 classes; batch of one 800x1333 image with two synthetic instances), one warm-up step, then the
median of --steps full steps (forward, backward, AdamW update). Peak memory is the process's maximum
resident set. Prints a Markdown table; nothing is written.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Before torch loads OpenMP: spin-waiting threads slow everything down on a shared CPU (README).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
SOFT_CONFIG = ROOT / "configs" / "COCO-InstanceSegmentation" / "mask_rcnn_soft_tiny_norm_fpn_1x.yaml"
CASES = ["soft:fp32", "soft:bf16", "r50:fp32", "r50:bf16"]


def build(model_name: str):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    if model_name == "soft":
        from soft_d2.config import compose_config
        compose_config(cfg)
        cfg.merge_from_file(str(SOFT_CONFIG))
    else:
        from detectron2 import model_zoo
        cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    model = build_model(cfg)
    model.train()
    return model


def synthetic_batch(height: int, width: int):
    import torch
    from detectron2.structures import BitMasks, Boxes, Instances

    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, height, width), generator=gen, dtype=torch.uint8)
    inst = Instances((height, width))
    inst.gt_boxes = Boxes(torch.tensor([[100.0, 120.0, 400.0, 500.0], [600.0, 200.0, 1000.0, 700.0]]))
    inst.gt_classes = torch.tensor([3, 17])
    masks = torch.zeros(2, height, width, dtype=torch.bool)
    masks[0, 120:500, 100:400] = True
    masks[1, 200:700, 600:1000] = True
    inst.gt_masks = BitMasks(masks)
    return [{"image": image, "instances": inst, "height": height, "width": width}]


def train_step(model, optimizer, batch, precision: str) -> None:
    """One forward, backward and AdamW update; the backward and the update are labelled for
    torch.profiler (profile_step.py)."""
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        losses = model(batch)
    loss = sum(v.float() for v in losses.values())
    optimizer.zero_grad()
    with torch.profiler.record_function("group:backward"):
        loss.backward()
    with torch.profiler.record_function("group:optimizer"):
        optimizer.step()


def run_case(case: str, steps: int, height: int, width: int) -> dict:
    import torch
    from detectron2.utils.events import EventStorage

    model_name, precision = case.split(":")
    model = build(model_name)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    batch = synthetic_batch(height, width)
    times = []
    with EventStorage(0):
        for step in range(steps + 1):
            start = time.perf_counter()
            train_step(model, optimizer, batch, precision)
            if step:  # the first step is a warm-up (allocator, oneDNN primitive caches)
                times.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"case": case, "median_s": statistics.median(times), "times": times, "peak_mb": peak_mb,
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per case (after one warm-up)")
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1333), metavar=("H", "W"))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_case(args.one, args.steps, *args.size)))
        return
    rows = []
    for case in args.cases:
        out = subprocess.run([sys.executable, __file__, "--one", case, "--steps", str(args.steps),
                              "--size", *map(str, args.size)], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            sys.exit(f"case {case} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{case}: {rows[-1]['median_s']:.2f} s/iter", file=sys.stderr)
    print(f"\nMask R-CNN training step, one {args.size[0]}x{args.size[1]} image, {platform.processor() or platform.machine()}, "
          f"{rows[0]['threads']} threads, median of {args.steps}\n")
    print("| backbone | precision | s/iter | steps (s) | peak RSS (MB) |\n|---|---|---|---|---|")
    for r in rows:
        model_name, precision = r["case"].split(":")
        name = "SOFT-Tiny-Norm (bounded, 100)" if model_name == "soft" else "R50 (detectron2)"
        print(f"| {name} | {precision} | {r['median_s']:.2f} | {', '.join(f'{t:.2f}' for t in r['times'])} | {r['peak_mb']:.0f} |")


if __name__ == "__main__":
    main()
