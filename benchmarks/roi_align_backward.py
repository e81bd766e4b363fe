"""RoIAlign backward on the CPU: torchvision's single-threaded kernel against the compiled
soft_d2._C.roi_align_backward_cpu (parallel over channels), on a Mask R-CNN box head's P2 case:
features [1, 256, 200, 336] (an 800x1333 image at stride 4), 7x7 output, sampling_ratio 0,
aligned, spatial_scale 0.25.

Boxes (--boxes):
  p2   sqrt(area) uniform in [32, 112) px and aspect ratio in [1/2, 2]: the boxes an FPN sends
       to P2 (canonical level 4 at 224 px)
  any  corners uniform in the image (x1 < x2, y1 < y2): mostly large boxes, many points per bin

Prints the median of --repeats calls of each after one warm-up, and whether the two results are
bit-identical; writes no file (the numbers are copied by hand into docs/BENCHMARKS.md, the CPU
runtime section).

  python benchmarks/roi_align_backward.py --threads 2 --boxes p2
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision  # noqa: F401 - loads torch.ops.torchvision

from soft_d2 import _C

HEIGHT, WIDTH = 800, 1333
FEATURES = (1, 256, 200, 336)
POOLED = 7
SCALE = 0.25


def make_rois(num: int, kind: str, gen: torch.Generator) -> torch.Tensor:
    if kind == "p2":
        side = 32 + torch.rand(num, generator=gen) * 80
        aspect = 2.0 ** (torch.rand(num, generator=gen) * 2 - 1)
        w, h = side * aspect.sqrt(), side / aspect.sqrt()
        cx = torch.rand(num, generator=gen) * WIDTH
        cy = torch.rand(num, generator=gen) * HEIGHT
        x1, x2 = (cx - w / 2).clamp(0, WIDTH), (cx + w / 2).clamp(0, WIDTH)
        y1, y2 = (cy - h / 2).clamp(0, HEIGHT), (cy + h / 2).clamp(0, HEIGHT)
    else:
        xs = (torch.rand(num, 2, generator=gen) * WIDTH).sort(1).values
        ys = (torch.rand(num, 2, generator=gen) * HEIGHT).sort(1).values
        x1, x2, y1, y2 = xs[:, 0], xs[:, 1], ys[:, 0], ys[:, 1]
    return torch.stack([torch.zeros(num), x1, y1, x2, y2], 1)


def median_seconds(fn, repeats: int) -> tuple[float, torch.Tensor]:
    out = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rois", type=int, default=512)
    parser.add_argument("--boxes", choices=["p2", "any"], default="p2")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    rois = make_rois(args.rois, args.boxes, gen)
    grad = torch.randn(args.rois, FEATURES[1], POOLED, POOLED, generator=gen)
    call = (grad, rois, SCALE, POOLED, POOLED, *FEATURES, 0, True)
    t_tv, ref = median_seconds(lambda: torch.ops.torchvision._roi_align_backward(*call), args.repeats)
    t_ours, ours = median_seconds(lambda: _C.roi_align_backward_cpu(*call), args.repeats)
    print(f"{args.rois} rois ({args.boxes}), {args.threads} threads, median of {args.repeats}: "
          f"torchvision {t_tv * 1e3:.1f} ms, soft_d2 {t_ours * 1e3:.1f} ms "
          f"({t_tv / t_ours:.2f}x); bit-identical: {torch.equal(ref, ours)}")


if __name__ == "__main__":
    main()
