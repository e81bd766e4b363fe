#!/usr/bin/env python
"""Draw a config's predictions on images (Detectron2's usual demo interface), for detectors
(RetinaNet, Mask R-CNN: boxes, masks, "class score" labels) and semantic segmentation (UperNet: the
image next to its predicted classes, blended in, with a legend).

    python demo.py --config-file configs/quickstart/mask_rcnn_soft_norm_tiny_shapes.yaml \
        --input img1.jpg "dir/*.png" --output out/ --opts MODEL.WEIGHTS output/quickstart_mask_rcnn/model_final.pth

One line per image is printed, with or without --output: the instances with a score of at least the
threshold (--confidence-threshold, else the config's TEST.VIS_THRESHOLD) and their count per class,
``img.jpg: 3 instances (circle 2, square 1)``, or for semantic segmentation the share of the pixels
of each predicted class, ``img.jpg: background 81%, circle 12%, square 7%``; with --output followed
by where the picture went.

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
from collections import Counter

from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model
from PIL import Image

from soft_d2.config import load_config
from soft_d2.d2 import SoftDetectionCheckpointer
from soft_d2.d2.visualize import class_name, to_rgb
from soft_d2.detection import coco_thing_classes
from soft_d2.detection.visualize import Predictor, draw_image_instances, predictions_above
from soft_d2.segmentation.visualize import draw_label_prediction, pixel_shares, predict_labels
from soft_d2.utils.cpu_allocator import keep_freed_memory


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="SOFT detectors and semantic segmentation: draw predictions on images")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", nargs="+", required=True, help="image files, folders or glob patterns")
    parser.add_argument("--output", help="output file (one input) or folder; without it nothing is drawn, only "
                                             "the line per image is printed (counts per class)")
    parser.add_argument("--confidence-threshold", type=float, default=None,
                        help="lowest score of the instances drawn and counted; default: the config's "
                             "TEST.VIS_THRESHOLD (an explicit value overrides it). Detectors only")
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


def is_semantic(cfg) -> bool:
    return cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor"


def share_text(share: float) -> str:
    return "<1%" if 0 < share < 0.005 else f"{share:.0%}"


def describe_instances(instances, class_names: list[str]) -> str:
    """``3 instances (circle 2, square 1)``: the count, then per class, most frequent first."""
    counts = sorted(Counter(instances.pred_classes.tolist()).items(), key=lambda ck: (-ck[1], ck[0]))
    text = f"{len(instances)} instance{'' if len(instances) == 1 else 's'}"
    return text + (" (" + ", ".join(f"{class_name(class_names, c)} {n}" for c, n in counts) + ")" if counts else "")


def describe_labels(labels, class_names: list[str], ignore_label: int = 255) -> str:
    """``background 81%, circle 12%, square 7%``: each predicted class's share of the pixels, largest first."""
    return ", ".join(f"{class_name(class_names, c)} {share_text(s)}" for c, s in pixel_shares(labels, ignore_label))


def build_predict(cfg, model, metadata, threshold: float | None):
    """``predict(image, draw) -> (line, picture or None)`` for the config's task."""
    if is_semantic(cfg):
        if threshold is not None:
            print("demo.py: --confidence-threshold is ignored: a semantic segmentation config predicts a class "
                  "for every pixel, with no instance scores", file=sys.stderr)
        class_names, ignore = list(metadata.get("stuff_classes", [])), metadata.get("ignore_label", 255)

        def predict(image, draw: bool):
            labels = predict_labels(cfg, model, image)
            picture = draw_label_prediction(to_rgb(image, cfg.INPUT.FORMAT), labels, class_names, ignore) if draw else None
            return describe_labels(labels, class_names, ignore), picture
        return predict

    predictor = Predictor(cfg, model)
    threshold = cfg.TEST.VIS_THRESHOLD if threshold is None else threshold
    class_names = list(metadata.get("thing_classes", []))

    def predict(image, draw: bool):
        instances = predictions_above(predictor, image, threshold)
        picture = draw_image_instances(predictor, image, instances, metadata) if draw else None
        return describe_instances(instances, class_names), picture
    return predict


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
    json_file = metadata.get("json_file", "")
    if not is_semantic(cfg) and "thing_classes" not in metadata.as_dict() and os.path.isfile(json_file):
        # a COCO-format set whose json has not been read yet (DATASETS.REGISTER_COCO_INSTANCES): its names
        metadata.thing_classes = coco_thing_classes(json_file)
    predict = build_predict(cfg, model, metadata, args.confidence_threshold)
    single_file = args.output is not None and len(inputs) == 1 and os.path.splitext(args.output)[1] != ""
    written, failed = [], []
    for path in inputs:
        try:
            image = read_image(path, format=cfg.INPUT.FORMAT)
        except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for missing, broken or truncated files
            failed.append(path)
            print(f"{path}: skipped, the image could not be read ({type(err).__name__}: {err})", file=sys.stderr)
            continue
        line, picture = predict(image, draw=bool(args.output))
        if args.output:
            out = args.output if single_file else os.path.join(args.output, os.path.basename(path))
            os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
            Image.fromarray(picture).save(out)
            written.append(out)
            line += f"; drawn to {out}"
        print(f"{path}: {line}", flush=True)
    if failed:
        raise SystemExit(f"demo.py: {len(failed)} of {len(inputs)} images could not be read and were skipped: "
                         + ", ".join(failed))
    return written


if __name__ == "__main__":
    main()
