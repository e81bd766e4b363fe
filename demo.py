#!/usr/bin/env python
"""Draw a config's predictions on images (Detectron2's usual demo interface).

    python demo.py --config-file configs/quickstart/mask_rcnn_soft_norm_tiny_shapes.yaml \
        --input img1.jpg "dir/*.png" --output out/ --opts MODEL.WEIGHTS output/quickstart_mask_rcnn/model_final.pth
"""
from __future__ import annotations

import os

# Before torch loads OpenMP: spin-waiting threads slow everything down on a shared CPU (README).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import glob

from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from PIL import Image

from soft_d2.config import load_config
from soft_d2.d2 import SoftDetectionCheckpointer
from soft_d2.detection.visualize import Predictor, draw_predictions


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="SOFT detectors: draw predictions on images")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", nargs="+", required=True, help="image files or glob patterns")
    parser.add_argument("--output", help="output file (one input) or folder; default: show nothing, print counts")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser


def expand_inputs(patterns: list[str]) -> list[str]:
    paths = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matches:
            raise FileNotFoundError(f"--input {pattern!r} matches no file")
        paths += matches
    return paths


def main(argv=None) -> list[str]:
    args = get_parser().parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    model = build_model(cfg)
    SoftDetectionCheckpointer(model, use_ema=cfg.MODEL.SOFT.USE_EMA).load(cfg.MODEL.WEIGHTS)
    name = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__unused"
    metadata = MetadataCatalog.get(name)
    predictor = Predictor(cfg, model)
    inputs = expand_inputs(args.input)
    written = []
    for path in inputs:
        picture = draw_predictions(predictor, path, metadata, args.confidence_threshold)
        if args.output:
            single_file = len(inputs) == 1 and os.path.splitext(args.output)[1] != ""
            out = args.output if single_file else os.path.join(args.output, os.path.basename(path))
            os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
            Image.fromarray(picture).save(out)
            written.append(out)
            print(f"{path}: predictions drawn to {out}")
    return written


if __name__ == "__main__":
    main()
