"""Where the time goes: torch.profiler summaries of the SOFT-Tiny-Norm backbone forward at
800x1344 (no grad) and of a Mask R-CNN training step at 800x1333 (the benchmark's case).

    python benchmarks/profile_step.py                         # both, fp32, top 25 ops each
    python benchmarks/profile_step.py --what backbone --top 40
    python benchmarks/profile_step.py --what step --model r50

Prints, per case, the operators with the most self CPU time (after one warm-up run), the
time per module group (the backbone's stages; in the step, SOFT, SOFT + FPN, RPN and RoI heads:
record_function labels around their forwards, so backward time is not in them; the step's
backward and optimizer update are groups of their own, labelled in detection_step.train_step). Times are the profiler's, on the calling thread (an op's intra-op threads are inside
its own time); the profiler slows many small ops down. Writes no file: the summaries are
copied by hand into docs/BENCHMARKS.md (the profiles section).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as train_net.py, before torch loads OpenMP

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def label_forwards(model, prefixes):
    """Wrap the forward of each named submodule in a record_function("group:<name>")."""
    import torch

    for name, module in model.named_modules():
        if name in prefixes:
            forward = module.forward

            def labelled(*args, _forward=forward, _name=name, **kwargs):
                with torch.profiler.record_function(f"group:{_name}"):
                    return _forward(*args, **kwargs)

            module.forward = labelled


def summarize(prof, wall: float, top: int) -> None:
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    print(f"wall {wall:.2f} s under the profiler, self time of all ops {total:.2f} s")
    groups = {e.key: e.cpu_time_total / 1e6 for e in events if e.key.startswith("group:")}
    for key, seconds in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  {key[6:]:<40} {seconds:7.2f} s (inclusive)")
    ops = sorted((e for e in events if not e.key.startswith("group:")), key=lambda e: -e.self_cpu_time_total)
    print(f"\n| op | calls | self CPU (s) | share |\n|---|---|---|---|")
    for e in ops[:top]:
        seconds = e.self_cpu_time_total / 1e6
        print(f"| {e.key} | {e.count} | {seconds:.3f} | {100 * seconds / total:.1f}% |")


def profile_backbone(top: int, kernel_method: str) -> None:
    import torch
    import timm

    import soft_d2  # noqa: F401  (registers the timm models)

    model = timm.create_model("soft_norm_tiny", max_landmarks=100, kernel_method=kernel_method).eval()
    label_forwards(model, {f"stages.{i}" for i in range(4)})
    x = torch.randn(1, 3, 800, 1344)
    with torch.no_grad():
        model.forward_intermediates(x, intermediates_only=True)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            model.forward_intermediates(x, intermediates_only=True)
            wall = time.perf_counter() - start
    print(f"\n## SOFT-Tiny-Norm backbone forward, 800x1344, landmarks <= 100, {torch.get_num_threads()} threads\n")
    summarize(prof, wall, top)


def profile_step(top: int, model_name: str, precision: str) -> None:
    import torch
    from detectron2.utils.events import EventStorage

    from soft_d2.ops.roi_align import use_parallel_roi_align_backward
    from soft_d2.utils.cpu_allocator import keep_freed_memory

    keep_freed_memory()  # as train_net.py does on the CPU, for every model
    use_parallel_roi_align_backward()

    from detection_step import build, calibrate_frozen_bn, synthetic_batch, train_step

    model = build(model_name)
    label_forwards(model, {"backbone.bottom_up", "backbone", "proposal_generator", "roi_heads"})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    batch = synthetic_batch(800, 1333)
    calibrate_frozen_bn(model, batch)
    with EventStorage(0):
        train_step(model, optimizer, batch, precision)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            train_step(model, optimizer, batch, precision)
            wall = time.perf_counter() - start
    print(f"\n## Mask R-CNN training step ({model_name}, {precision}), 800x1333, {torch.get_num_threads()} threads\n")
    summarize(prof, wall, top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--what", choices=["backbone", "step", "both"], default="both")
    parser.add_argument("--model", choices=["soft", "r50"], default="soft", help="the detector of --what step")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--kernel-method", default="auto", choices=["auto", "compiled", "torch"])
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    if args.what in ("backbone", "both"):
        profile_backbone(args.top, args.kernel_method)
    if args.what in ("step", "both"):
        profile_step(args.top, args.model, args.precision)


if __name__ == "__main__":
    main()
