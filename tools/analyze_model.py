"""FLOPs, activations, parameters and structure of a soft-d2 model; without a config, the variant table.

Detectron2's tools/analyze_model.py interface, for any soft-d2 config (RetinaNet, Mask R-CNN, UperNet):

    python tools/analyze_model.py --config-file configs/quickstart/retinanet_soft_norm_tiny_shapes.yaml \\
        --tasks flop parameter
    python tools/analyze_model.py --config-file CONFIG --tasks flop activation --num-inputs 20 \\
        MODEL.WEIGHTS output/model_final.pth

FLOPs are counted by fvcore from a jit trace (one multiply-add = 1 flop, elementwise work not
counted) on images of the config's first test data set, loaded as for evaluation; SOFT's own ops
are counted by soft_d2.d2.flops. Printed: the per-module table of the first image, the mean per
operator and the total's mean, spread and median over --num-inputs images (a two-stage detector's
count depends on its detections, hence on the weights: without MODEL.WEIGHTS the model is randomly
initialised, with seed SEED, or 0 if SEED is negative, so a run is reproducible).

Without --config-file: parameters and GMACs of the SOFT variants at 224 (counted the same way) next
to the papers' published GFLOPs, and the backbone at a detection size (bounded landmarks):

    python tools/analyze_model.py                    # all 10 at 224, backbones at 800x1333
    python tools/analyze_model.py --variants soft_norm_tiny --detection-size 800x1333
"""
from __future__ import annotations

import os

# Before torch loads OpenMP: spin-waiting threads slow everything down on a shared CPU (docs/IMPLEMENTATION.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import contextlib
import logging
import statistics
import sys
from collections import Counter

import timm
import torch
from detectron2.data import build_detection_test_loader
from detectron2.modeling import build_model
from detectron2.utils.analysis import activation_count_operators, parameter_count_table
from detectron2.utils.env import seed_all_rng
from fvcore.nn import flop_count_table
from torch import nn

import soft_d2
from soft_d2.config import load_config
from soft_d2.d2 import DEFAULT_MAX_LANDMARKS, SoftDetectionCheckpointer, prepare_dataset, soft_flop_count_analysis
from soft_d2.d2.flops import soft_activation_handles
from soft_d2.detection import DetectionDatasetMapper
from soft_d2.segmentation import build_sem_seg_mapper

TASKS = ("flop", "activation", "parameter", "structure")
# The papers' GFLOPs at 224 (fvcore's convention), a fact about the publications.
PUBLISHED_GFLOPS = {"tiny": 1.9, "small": 3.3, "medium": 7.2, "large": 11.0, "huge": 16.3}


class ConfigError(ValueError):
    """A config this tool cannot analyse; the message names the key to change."""


# ------------------------------------------------------------------------------ a config's model
def build_analyzed_model(cfg) -> nn.Module:
    """The config's model with MODEL.WEIGHTS loaded (nothing for ""), in eval mode."""
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not os.path.isfile(weights):  # URLs: Detectron2 downloads them
        raise FileNotFoundError(f"MODEL.WEIGHTS {weights} does not exist: give a checkpoint file, or MODEL.WEIGHTS "
                                "\"\" for a randomly initialised model (the backbone's and a one-stage "
                                "detector's FLOPs do not depend on the weights)")
    seed_all_rng(cfg.SEED if cfg.SEED >= 0 else 0)  # random init (no weights) reproducible
    model = build_model(cfg)
    SoftDetectionCheckpointer(model, use_ema=cfg.MODEL.SOFT.USE_EMA).load(cfg.MODEL.WEIGHTS)
    return model.eval()


def evaluation_batches(cfg):
    """Batches of one image of the first test data set, mapped as for evaluation (train_net.py's mappers)."""
    if not len(cfg.DATASETS.TEST):
        raise ConfigError("the config has no DATASETS.TEST: FLOPs and activations are counted on its test images; "
                         "set one, e.g. DATASETS.TEST \"('soft_shapes_val',)\"")
    name = cfg.DATASETS.TEST[0]
    prepare_dataset(name)  # the built-in sets generate themselves; others must exist
    if cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor":
        mapper = build_sem_seg_mapper(cfg, is_train=False)
    else:
        mapper = DetectionDatasetMapper(cfg, is_train=False)
    return build_detection_test_loader(cfg, name, mapper=mapper)


def count_flops(cfg, num_inputs: int) -> dict:
    """fvcore FLOPs of the model on ``num_inputs`` test images (fewer if the set is smaller)."""
    model = build_analyzed_model(cfg)
    totals, by_operator, first = [], Counter(), None
    for index, batch in zip(range(num_inputs), evaluation_batches(cfg)):
        analysis = soft_flop_count_analysis(model, batch)
        if index:  # warnings once, for the first image
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        by_operator.update(analysis.by_operator())
        totals.append(analysis.total())
        if first is None:
            first = (analysis, tuple(batch[0]["image"].shape[-2:]))
    if not totals:
        raise ConfigError(f"the test data set {cfg.DATASETS.TEST[0]!r} has no images: "
                          "set DATASETS.TEST to one that has")
    return {"totals": totals, "by_operator": {k: v / len(totals) for k, v in by_operator.items()},
            "first": first[0], "first_size": first[1]}


@contextlib.contextmanager
def fvcore_warnings(enabled: bool):
    """fvcore's unsupported-op / uncalled-module warnings on or off (Detectron2's activation count
    builds its analysis itself, so they cannot be switched off on it as on a FlopCountAnalysis)."""
    logger = logging.getLogger("fvcore.nn.jit_analysis")
    level = logger.level
    if not enabled:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def count_activations(cfg, num_inputs: int) -> list[float]:
    """fvcore activations in millions (output elements of the counted ops), per test image."""
    model = build_analyzed_model(cfg)
    counts = []
    for index, batch in zip(range(num_inputs), evaluation_batches(cfg)):
        with fvcore_warnings(index == 0):
            per_op = activation_count_operators(model, batch, supported_ops=soft_activation_handles())
            counts.append(sum(per_op.values()))
    return counts


def spread(values: list[float], scale: float) -> str:
    mean, std = statistics.fmean(values) / scale, statistics.pstdev(values) / scale
    return f"{mean:.3f} ± {std:.3f} (median {statistics.median(values) / scale:.3f}) over {len(values)} image(s)"


def run_config_tasks(args) -> dict:
    cfg = load_config(args.config_file, ["DATALOADER.NUM_WORKERS", "0", *args.opts])
    if not cfg.MODEL.WEIGHTS:
        print("MODEL.WEIGHTS is empty: the model is randomly initialised (seed "
              f"{cfg.SEED if cfg.SEED >= 0 else 0})")
    results = {}
    for task in args.tasks:
        if task == "flop":
            flops = results["flop"] = count_flops(cfg, args.num_inputs)
            h, w = flops["first_size"]
            print(f"FLOPs per module, first test image ({h}x{w} after resizing; one multiply-add = 1):\n"
                  + flop_count_table(flops["first"], max_depth=4, show_param_shapes=False))
            print("GFLOPs per operator (mean): " + ", ".join(
                f"{k} {v / 1e9:.4f}" for k, v in sorted(flops["by_operator"].items(), key=lambda kv: -kv[1])))
            print(f"Total GFLOPs: {spread(flops['totals'], 1e9)}")
        elif task == "activation":
            results["activation"] = count_activations(cfg, args.num_inputs)
            print(f"Total activations (millions): {spread(results['activation'], 1)}")
        elif task == "parameter":
            results["parameter"] = parameter_count_table(build_model(cfg), max_depth=5)
            print("Parameters:\n" + results["parameter"])
        else:
            results["structure"] = str(build_model(cfg))
            print("Model structure:\n" + results["structure"])
    return results


# ------------------------------------------------------------------------- the variant table
class _Intermediates(nn.Module):
    """A timm SOFT model's stage maps as its forward (what a detection backbone computes)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_intermediates(x, intermediates_only=True)


def gmacs(model: nn.Module, size: tuple[int, int], features: bool = False) -> float:
    analysis = soft_flop_count_analysis(_Intermediates(model) if features else model, torch.randn(1, 3, *size))
    # Every SOFT op has a handle (tests/test_analyze_model.py); v_conv is used through its weight only.
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis.total() / 1e9


def parse_size(text: str) -> tuple[int, int]:
    h, _, w = text.partition("x")
    try:
        return int(h), int(w or h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: give HEIGHTxWIDTH, e.g. 800x1333") from None


def run_variant_table(args) -> None:
    h, w = args.detection_size
    print(f"{'variant':<18}{'params':>12}{'GMACs@224':>11}{'published':>10}"
          f"{f'backbone@{h}x{w}':>18}{'per px x224':>12}")
    for name in args.variants:
        model = timm.create_model(name, kernel_method="torch").eval()
        params = sum(p.numel() for p in model.parameters())
        at224 = gmacs(model, (224, 224))
        model.set_max_landmarks(args.max_landmarks)
        det = gmacs(model, (h, w), features=True)
        ratio = (det / (h * w)) / (gmacs(model, (224, 224), features=True) / 224**2)
        cells = [f"{params:>12,}", f"{at224:>11.2f}", f"{PUBLISHED_GFLOPS[name.split('_')[-1]]:>10.1f}",
                 f"{det:>14.1f} (m<={args.max_landmarks})", f"{ratio:>8.2f}"]
        if args.faithful_detection:
            model.set_max_landmarks(None)
            cells.append(f"  faithful {gmacs(model, (h, w), features=True):.1f}")
        print(f"{name:<18}" + "".join(cells), flush=True)


# ------------------------------------------------------------------------------- command line
def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", metavar="FILE", help="a soft-d2 config: analyse its model")
    parser.add_argument("--tasks", nargs="+", metavar="TASK", help=f"with --config-file: any of {', '.join(TASKS)}")
    parser.add_argument("-n", "--num-inputs", type=int, default=10,
                        help="test images to count FLOPs / activations on (both depend on the data; default 10)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    table = parser.add_argument_group("the variant table (without --config-file)")
    table.add_argument("--variants", nargs="+", choices=sorted(soft_d2.VARIANTS))
    table.add_argument("--detection-size", type=parse_size)
    table.add_argument("--max-landmarks", type=int)
    table.add_argument("--faithful-detection", action="store_true",
                       help="also count the unbounded backbone at the detection size (slow for large variants)")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = get_parser()
    args = parser.parse_args(argv)
    table_flags = [flag for flag, value in (("--variants", args.variants), ("--detection-size", args.detection_size),
                                            ("--max-landmarks", args.max_landmarks),
                                            ("--faithful-detection", args.faithful_detection or None))
                   if value is not None]
    if args.config_file is None:
        if args.tasks or args.opts:
            parser.error("--tasks and config overrides need --config-file FILE (the model to analyse)")
        args.variants = args.variants or sorted(soft_d2.VARIANTS)
        args.detection_size = args.detection_size or (800, 1333)
        args.max_landmarks = DEFAULT_MAX_LANDMARKS if args.max_landmarks is None else args.max_landmarks
        return args
    if table_flags:
        parser.error(f"{', '.join(table_flags)}: only for the variant table, which runs without --config-file")
    if not os.path.isfile(args.config_file):
        parser.error(f"--config-file {args.config_file}: no such file (the configs are under configs/, e.g. "
                     "configs/quickstart/retinanet_soft_norm_tiny_shapes.yaml)")
    if not args.tasks:
        parser.error(f"--config-file needs --tasks, any of {', '.join(TASKS)}")
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown:
        parser.error(f"--tasks got {unknown[0]!r}, which is not a task ({', '.join(TASKS)}). Config overrides "
                     "(KEY VALUE ...) go after another option or after `--`, e.g. --tasks flop -- MODEL.WEIGHTS x.pth")
    if args.num_inputs < 1:
        parser.error(f"--num-inputs must be at least 1, got {args.num_inputs}")
    args.opts = [o for o in args.opts if o != "--"]
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.config_file is None:
        return run_variant_table(args)
    return run_config_tasks(args)


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, FileNotFoundError) as error:  # e.g. COCO not downloaded: the message says where it belongs
        sys.exit(f"analyze_model.py: {error}")
