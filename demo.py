#!/usr/bin/env python
"""Draw a config's predictions on images (Detectron2's usual demo interface).

    python demo.py --config-file configs/quickstart/mask_rcnn_soft_norm_tiny_shapes.yaml \
        --input img1.jpg "dir/*.png" --output out/ --opts MODEL.WEIGHTS output/quickstart_mask_rcnn/model_final.pth

An image that cannot be read is named and skipped; the others are still drawn, and the exit status
is non-zero if any was skipped.
"""
from __future__ import annotations

import os

# Before torch loads OpenMP: spin-waiting threads slow everything down on a shared CPU (docs/IMPLEMENTATION.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import glob
import sys

from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model
from PIL import Image

from soft_d2.config import load_config
from soft_d2.d2 import SoftDetectionCheckpointer
from soft_d2.detection.visualize import Predictor, draw_image_predictions
from soft_d2.utils.cpu_allocator import keep_freed_memory


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="SOFT detectors: draw predictions on images")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", nargs="+", required=True, help="image files, folders or glob patterns")
    parser.add_argument("--output", help="output file (one input) or folder; default: show nothing, print counts")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser


def expand_inputs(patterns: list[str]) -> list[str]:
    """Files, the files of folders, and glob matches, in order."""
    paths = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matches:
            raise FileNotFoundError(f"--input {pattern!r} matches no file")
        for match in matches:
            paths += sorted(os.path.join(match, f) for f in os.listdir(match)
                            if os.path.isfile(os.path.join(match, f))) if os.path.isdir(match) else [match]
    return paths


def check_config(cfg) -> None:
    if not cfg.MODEL.WEIGHTS:  # Detectron2 would draw the predictions of a random model
        raise ValueError("demo.py needs trained weights: pass --opts MODEL.WEIGHTS path/to/model_final.pth")
    if cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor":
        raise ValueError("demo.py draws instance predictions (RetinaNet, Mask R-CNN configs); for a semantic "
                         "segmentation config use train_net.py --eval-only with TEST.VIS_IMAGES N")


def main(argv=None) -> list[str]:
    """Draw every readable input; returns the pictures written. Unreadable inputs are reported as
    they come and end the run with SystemExit (non-zero) once the others are done."""
    args = get_parser().parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    check_config(cfg)
    if cfg.MODEL.DEVICE == "cpu":
        keep_freed_memory()
    inputs = expand_inputs(args.input)
    model = build_model(cfg)
    SoftDetectionCheckpointer.from_config(cfg, model).load(cfg.MODEL.WEIGHTS)
    name = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__unused"
    metadata = MetadataCatalog.get(name)
    predictor = Predictor(cfg, model)
    single_file = args.output is not None and len(inputs) == 1 and os.path.splitext(args.output)[1] != ""
    written, failed = [], []
    for path in inputs:
        try:
            image = read_image(path, format=predictor.format)
        except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for missing, broken or truncated files
            failed.append(path)
            print(f"{path}: skipped, the image could not be read ({type(err).__name__}: {err})", file=sys.stderr)
            continue
        picture = draw_image_predictions(predictor, image, metadata, args.confidence_threshold)
        if args.output:
            out = args.output if single_file else os.path.join(args.output, os.path.basename(path))
            os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
            Image.fromarray(picture).save(out)
            written.append(out)
            print(f"{path}: predictions drawn to {out}")
    if failed:
        raise SystemExit(f"demo.py: {len(failed)} of {len(inputs)} images could not be read and were skipped: "
                         + ", ".join(failed))
    return written


if __name__ == "__main__":
    main()
