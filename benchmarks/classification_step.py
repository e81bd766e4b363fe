"""Training throughput (images/s) of the classification trainer's step: SOFT at 224x224.

    python benchmarks/classification_step.py                              # SOFT-Tiny, CPU, fp32 and bf16
    python benchmarks/classification_step.py --device cuda --batch 128    # on a GPU (bf16, fp32)

The step is classification/train.py's: timm model with 1000 classes, label-smoothed cross-entropy,
backward, fused AdamW with the trainer's parameter groups; synthetic inputs (no data loading, so
this is the model's ceiling). One warm-up step, then the median of --steps timed steps; CUDA steps
are synchronized. Prints a Markdown table and writes no file: its numbers are copied by hand into
docs/BENCHMARKS.md (the classification throughput sections; tools/gpu_check.sh keeps the GPU's
output in its $OUT/classification.md).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

# Before torch loads OpenMP: spin-waiting threads slow everything down on a shared CPU (docs/IMPLEMENTATION.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import timm
import torch
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer_v2

import soft_d2  # noqa: F401  (registers the SOFT variants with timm)
from soft_d2.utils.cpu_allocator import keep_freed_memory


def measure(model_name: str, device: str, precision: str, batch: int, size: int, steps: int,
            kernel_method: str, channels_last: bool) -> dict:
    if device == "cpu":
        keep_freed_memory()  # as classification/train.py does on the CPU
    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=1000, kernel_method=kernel_method).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05, fused=True)
    criterion = LabelSmoothingCrossEntropy(0.1)
    images = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 1000, (batch,), device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device, enabled=precision == "fp16")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times = []
    for step in range(steps + 1):
        sync()
        start = time.perf_counter()
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = criterion(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        sync()
        if step:  # the first step is a warm-up (allocator, cuBLAS/oneDNN plans)
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")
    return {"model": model_name, "precision": precision, "s_per_step": median, "img_s": batch / median,
            "peak_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["soft_tiny"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precisions", nargs="+", default=None, choices=["fp32", "bf16", "fp16"],
                        help="default: fp32 bf16")
    parser.add_argument("--batch", type=int, default=None, help="default: 32 on CPU, 128 on CUDA")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up)")
    parser.add_argument("--kernel_method", default="auto", choices=["auto", "compiled", "torch"])
    parser.add_argument("--channels_last", action="store_true")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA GPU is visible to torch (torch.cuda.is_available() is False)")
    batch = args.batch or (128 if args.device == "cuda" else 32)
    precisions = args.precisions or ["fp32", "bf16"]
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # what a GPU user runs with for "fp32"
        torch.backends.cudnn.allow_tf32 = True
        where = torch.cuda.get_device_name()
    else:
        where = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    rows = []
    for model_name in args.models:
        for precision in precisions:
            rows.append(measure(model_name, args.device, precision, batch, args.size, args.steps,
                                args.kernel_method, args.channels_last))
            print(f"{model_name} {precision}: {rows[-1]['img_s']:.1f} img/s", file=sys.stderr)
    print(f"\nClassification training step, {args.size}x{args.size}, batch {batch}, {where}, torch "
          f"{torch.__version__}, kernel_method {args.kernel_method}, median of {args.steps}\n")
    print("| model | precision | s/step | images/s | peak GPU memory (MB) |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['precision']} | {r['s_per_step']:.3f} | {r['img_s']:.1f} | {r['peak_mb']:.0f} |")


if __name__ == "__main__":
    main()
