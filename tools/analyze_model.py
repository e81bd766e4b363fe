"""Parameters and FLOPs of the SOFT variants, next to the published table and the release's counts.

    python tools/analyze_model.py                    # all 10 at 224, backbones at 800x1333
    python tools/analyze_model.py --variants soft_norm_tiny --detection-size 800x1333

FLOPs are counted at the dispatcher (torch.utils.flop_counter) on the pure-PyTorch path, so every
matrix product is seen: linear layers, convolutions, both Gaussian-kernel products, the m x m
kernel, the Newton iterations (as our cheaper evaluation computes them) and stage-4 attention.
Elementwise work (exp, GELU, norms) is not counted. Reported as GMACs (one multiply-add = 1),
the convention of fvcore and of the published table; the release's own fvcore counts are quoted
from ../shared/reference/official_variants.json when present.
"""
from __future__ import annotations

import os

# Before torch loads OpenMP: spin-waiting threads slow everything down on a shared CPU (README).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
from pathlib import Path

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import soft_d2
from soft_d2.d2.config import DEFAULT_MAX_LANDMARKS  # MODEL.SOFT.MAX_LANDMARKS of the Detectron2 configs

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "official_variants.json"
PUBLISHED_GFLOPS = {"tiny": 1.9, "small": 3.3, "medium": 7.2, "large": 11.0, "huge": 16.3}


def gmacs(model: torch.nn.Module, size: tuple[int, int], features: bool = False) -> float:
    x = torch.randn(1, 3, *size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.forward_intermediates(x, intermediates_only=True) if features else model(x)
    return counter.get_total_flops() / 2e9


def parse_size(text: str) -> tuple[int, int]:
    h, _, w = text.partition("x")
    return int(h), int(w or h)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=sorted(soft_d2.VARIANTS), choices=sorted(soft_d2.VARIANTS))
    parser.add_argument("--detection-size", type=parse_size, default=(800, 1333))
    parser.add_argument("--max-landmarks", type=int, default=DEFAULT_MAX_LANDMARKS)
    parser.add_argument("--faithful-detection", action="store_true",
                        help="also count the unbounded backbone at the detection size (slow for large variants)")
    args = parser.parse_args()
    release = json.loads(REFERENCE.read_text())["variants"] if REFERENCE.exists() else {}

    h, w = args.detection_size
    print(f"{'variant':<18}{'params':>12}{'release':>12}{'GMACs@224':>11}{'published':>10}{'release fvcore':>15}"
          f"{'(no matmul)':>12}{f'backbone@{h}x{w}':>18}{'per px x224':>12}")
    for name in args.variants:
        model = timm.create_model(name, kernel_method="torch").eval()
        params = sum(p.numel() for p in model.parameters())
        ref = release.get(name, {})
        at224 = gmacs(model, (224, 224))
        model.set_max_landmarks(args.max_landmarks)
        det = gmacs(model, (h, w), features=True)
        ratio = (det / (h * w)) / (gmacs(model, (224, 224), features=True) / 224**2)
        cells = [f"{params:>12,}", f"{ref.get('params_with_head', 0):>12,}", f"{at224:>11.2f}",
                 f"{PUBLISHED_GFLOPS[name.split('_')[-1]]:>10.1f}",
                 f"{ref.get('fvcore_flops_224_matmul_broadcast_corrected', 0) / 1e9:>15.2f}",
                 f"{ref.get('fvcore_flops_224_excluding_matmul', 0) / 1e9:>12.2f}",
                 f"{det:>14.1f} (m<={args.max_landmarks})", f"{ratio:>8.2f}"]
        if args.faithful_detection:
            model.set_max_landmarks(None)
            cells.append(f"  faithful {gmacs(model, (h, w), features=True):.1f}")
        print(f"{name:<18}" + "".join(cells), flush=True)


if __name__ == "__main__":
    main()
