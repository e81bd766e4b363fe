"""Seconds per training iteration of Mask R-CNN at COCO size (800x1333): SOFT-Tiny-Norm next to
detectron2's R50, fp32 and bf16 autocast; or seconds per inference of the same models; or the
training step of the from-scratch quickstarts.

    python benchmarks/detection_step.py                    # all four cases, 4 timed steps each
    python benchmarks/detection_step.py --cases soft:fp32 r50:fp32 --rounds 2
    python benchmarks/detection_step.py --inference --cases soft:fp32 r50:fp32
    python benchmarks/detection_step.py --cases quickstart-mask:bf16 quickstart-retina:bf16

Each case runs in its own subprocess (clean memory high-water mark); --rounds repeats the cases in
alternation. COCO cases: the published config (80 classes), one 800x1333 image with two synthetic
instances (polygon masks). Quickstart cases: the quickstart config as shipped (bf16 autocast), four
256x320 images with two instances each. Every model's FrozenBN statistics are first set from the
batch (calibrate_frozen_bn). One warm-up step, then the median of --steps full steps (forward,
backward, AdamW update). With --inference: eval mode under torch.no_grad (the images only, as a
predictor runs them), score threshold 0 and no suppression (NMS threshold 1), so that every model,
its weights random, sends 1000 proposals to the box head and 100 detections to the mask head, as
a trained one does on a busy image. Peak memory is the process's maximum resident set. Prints a
Markdown table and writes no file: its numbers are copied by hand into docs/BENCHMARKS.md (the
Mask R-CNN at COCO size and from-scratch quickstart sections), with the command that produced them.
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

# Before torch loads OpenMP: spin-waiting threads slow everything down on a shared CPU (docs/IMPLEMENTATION.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
SOFT_CONFIG = ROOT / "configs" / "COCO-InstanceSegmentation" / "mask_rcnn_soft_tiny_norm_fpn_1x.yaml"
# The step-limited from-scratch quickstarts, as configured (bf16 autocast), on a batch of their size.
QUICKSTART_CONFIGS = {"quickstart-mask": ROOT / "configs" / "quickstart" / "mask_rcnn_soft_norm_tiny_shapes.yaml",
                      "quickstart-retina": ROOT / "configs" / "quickstart" / "retinanet_soft_norm_tiny_shapes.yaml"}
QUICKSTART_BATCH = dict(height=256, width=320, images=4, num_classes=3)
CASES = ["soft:fp32", "soft:bf16", "r50:fp32", "r50:bf16"]
EXTRA_CASES = ["quickstart-mask:bf16", "quickstart-retina:bf16"]
NAMES = {"soft": "SOFT-Tiny-Norm (bounded, 100)", "r50": "R50 (detectron2)",
         "quickstart-mask": "quickstart Mask R-CNN", "quickstart-retina": "quickstart RetinaNet"}


def build(model_name: str, inference: bool = False):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    if model_name in QUICKSTART_CONFIGS:
        from soft_d2.config import load_config
        cfg = load_config(str(QUICKSTART_CONFIGS[model_name]), [])
        cfg.defrost()
    elif model_name == "soft":
        from soft_d2.config import compose_config
        compose_config(cfg)
        cfg.merge_from_file(str(SOFT_CONFIG))
    else:
        from detectron2 import model_zoo
        cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    if inference:  # random weights score boxes arbitrarily: every model gets the full head workload
        cfg.MODEL.RPN.NMS_THRESH = 1.0  # POST_NMS_TOPK_TEST (1000) proposals to the box head
        cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST = 1.0
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # DETECTIONS_PER_IMAGE (100) boxes to the mask head
        cfg.MODEL.RETINANET.SCORE_THRESH_TEST = 0.0
    model = build_model(cfg)
    model.train()
    return model


def calibrate_frozen_bn(model, batch) -> None:
    """Set every FrozenBatchNorm2d's statistics to those of its input on ``batch``, in one forward.
    Random weights with FrozenBN's identity statistics leave R50's features at ~2e4 (its boxes
    degenerate, its inference with no detections); calibrated, every model's activations have a
    trained network's scale, so the heads do a trained model's work."""
    import torch
    from detectron2.layers import FrozenBatchNorm2d

    def set_stats(module, inputs):
        x = inputs[0].detach().double()
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))

    hooks = [m.register_forward_pre_hook(set_stats) for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    try:
        with torch.no_grad():
            model.backbone(model.preprocess_image(batch).tensor)
    finally:
        for h in hooks:
            h.remove()


def synthetic_batch(height: int, width: int, images: int = 1, num_classes: int = 80):
    """Images with two boxes each and their masks as polygons (COCO's mask format, detectron2's default)."""
    import torch
    from detectron2.structures import Boxes, Instances, PolygonMasks

    gen = torch.Generator().manual_seed(0)
    # two objects per image, in fractions of the image (at 800x1333 about 300x380 and 400x500 px)
    boxes = [[x0 * width, y0 * height, x1 * width, y1 * height]
             for x0, y0, x1, y1 in ([0.075, 0.15, 0.3, 0.625], [0.45, 0.25, 0.75, 0.875])]
    batch = []
    for i in range(images):
        inst = Instances((height, width))
        inst.gt_boxes = Boxes(torch.tensor(boxes))
        inst.gt_classes = torch.tensor([(3 + i) % num_classes, (17 + i) % num_classes])
        inst.gt_masks = PolygonMasks([[[x0, y0, x1, y0, x1, y1, x0, y1]] for x0, y0, x1, y1 in boxes])
        image = torch.randint(0, 256, (3, height, width), generator=gen, dtype=torch.uint8)
        batch.append({"image": image, "instances": inst, "height": height, "width": width})
    return batch


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


def inference_step(model, batch, precision: str) -> None:
    import torch

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        model([{k: v for k, v in sample.items() if k != "instances"} for sample in batch])


def run_case(case: str, steps: int, height: int, width: int, inference: bool = False) -> dict:
    import torch
    from detectron2.utils.events import EventStorage

    from soft_d2.ops.roi_align import use_parallel_roi_align_backward
    from soft_d2.utils.cpu_allocator import keep_freed_memory

    keep_freed_memory()  # as train_net.py does on the CPU, for every model
    use_parallel_roi_align_backward()
    model_name, precision = case.split(":")
    model = build(model_name, inference)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    batch = synthetic_batch(**QUICKSTART_BATCH) if model_name in QUICKSTART_CONFIGS else synthetic_batch(height, width)
    calibrate_frozen_bn(model, batch)
    if inference:
        model.eval()
    times = []
    with EventStorage(0):
        for step in range(steps + 1):
            start = time.perf_counter()
            if inference:
                inference_step(model, batch, precision)
            else:
                train_step(model, optimizer, batch, precision)
            if step:  # the first step is a warm-up (allocator, oneDNN primitive caches)
                times.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"case": case, "median_s": statistics.median(times), "times": times, "peak_mb": peak_mb,
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=CASES, choices=CASES + EXTRA_CASES)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per case (after one warm-up)")
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1333), metavar=("H", "W"))
    parser.add_argument("--rounds", type=int, default=1, help="processes per case, alternating between cases")
    parser.add_argument("--inference", action="store_true", help="time inference (eval, no grad) instead")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_case(args.one, args.steps, *args.size, inference=args.inference)))
        return
    command = [sys.executable, __file__, "--steps", str(args.steps), "--size", *map(str, args.size)]
    command += ["--inference"] * args.inference
    results = {case: [] for case in args.cases}
    for _ in range(args.rounds):  # rounds alternate the cases, so a slow spell hits them all
        for case in args.cases:
            out = subprocess.run(command + ["--one", case], capture_output=True, text=True, check=False)
            if out.returncode != 0:
                sys.exit(f"case {case} failed:\n{out.stderr[-3000:]}")
            results[case].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"{case}: {results[case][-1]['median_s']:.2f} s/iter", file=sys.stderr)
    rows = [{"case": case, "times": [t for r in runs for t in r["times"]], "threads": runs[0]["threads"],
             "peak_mb": max(r["peak_mb"] for r in runs)} for case, runs in results.items()]
    for r in rows:
        r["median_s"] = statistics.median(r["times"])
    what = "inference (eval, no grad)" if args.inference else "training step"
    print(f"\nMask R-CNN {what}, one {args.size[0]}x{args.size[1]} image, {platform.processor() or platform.machine()}, "
          f"{rows[0]['threads']} threads, median of {args.steps} steps x {args.rounds} rounds\n")
    print("| model | precision | s/iter | steps (s) | peak RSS (MB) |\n|---|---|---|---|---|")
    for r in rows:
        model_name, precision = r["case"].split(":")
        name = NAMES[model_name]
        print(f"| {name} | {precision} | {r['median_s']:.2f} | {', '.join(f'{t:.2f}' for t in r['times'])} | {r['peak_mb']:.0f} |")


if __name__ == "__main__":
    main()
