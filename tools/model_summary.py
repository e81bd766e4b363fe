"""Build SOFT variants, print parameter counts against the release and time forward passes.

    python tools/model_summary.py                     # all 10: 224, and 800x1344 bounded/faithful
    python tools/model_summary.py --variants soft_norm_small --sizes 224 640x640

Times are the median of --repeats forward passes (batch 1, torch.no_grad, after one warm-up);
at the detection size one pass (no warm-up) with bounded landmarks (the detection default) for every
variant, and the faithful (unbounded) function for --faithful-variants (minutes for the larger).
"""
from __future__ import annotations

import os

# Before torch loads OpenMP: spin-waiting threads slow everything down on a shared CPU (docs/IMPLEMENTATION.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics
import time

import timm
import torch

import soft_d2
from soft_d2.d2.config import DEFAULT_MAX_LANDMARKS  # MODEL.SOFT.MAX_LANDMARKS of the Detectron2 configs

PUBLISHED_PARAMS = {  # spec §6: parameter counts of the released models (with the 1000-class head)
    "tiny": 13_069_056, "small": 38_858_462, "medium": 45_812_707, "large": 64_700_646, "huge": 87_108_273,
}


def parse_size(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 224 or 800x1344, got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"size must look like 224 or 800x1344, got {text!r}")
    return parts[0], parts[1]


def time_forward(model: torch.nn.Module, size: tuple[int, int], repeats: int, warm_up: bool = True) -> float:
    x = torch.randn(1, 3, *size)
    times = []
    with torch.no_grad():
        if warm_up:
            model(x)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=sorted(soft_d2.VARIANTS), choices=sorted(soft_d2.VARIANTS))
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(224, 224)])
    parser.add_argument("--large-size", type=parse_size, default=(800, 1344), help="detection-size forward")
    parser.add_argument("--max-landmarks", type=int, default=DEFAULT_MAX_LANDMARKS,
                        help="landmark bound of the bounded detection-size column")
    parser.add_argument("--faithful-variants", nargs="*", default=["soft_tiny", "soft_norm_tiny"],
                        help="variants also timed unbounded at --large-size (the larger ones take minutes)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {soft_d2.ops.backend_summary()}")

    large = "%dx%d" % args.large_size
    header = f"{'variant':<18}{'params':>13}{'release':>13}  " + "  ".join(
        f"{'%dx%d' % s:>11}" for s in args.sizes) + f"  {large + ' m<=' + str(args.max_landmarks):>18}" \
        f"  {large + ' faithful':>18}"
    print(header)
    for name in args.variants:
        model = timm.create_model(name).eval()
        params = sum(p.numel() for p in model.parameters())
        release = PUBLISHED_PARAMS[name.split("_")[-1]]
        cells = [f"{time_forward(model, s, args.repeats):10.3f}s" for s in args.sizes]
        model.set_max_landmarks(args.max_landmarks)
        cells.append(f"{time_forward(model, args.large_size, 1, warm_up=False):17.2f}s")
        model.set_max_landmarks(None)
        cells.append(f"{time_forward(model, args.large_size, 1, warm_up=False):17.2f}s" if name in args.faithful_variants
                     else f"{'-':>18}")
        flag = "" if params == release else "  (differs!)"
        print(f"{name:<18}{params:>13,}{release:>13,}  " + "  ".join(cells) + flag, flush=True)


if __name__ == "__main__":
    main()
