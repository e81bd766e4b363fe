"""Export a SOFT classifier, a whole SOFT detector (RetinaNet, Mask R-CNN) or a config's backbone
(SOFT + FPN) to torch.export and ONNX, then run the exported model and compare it with eager PyTorch.

    python tools/export_model.py --variant soft_norm_tiny --format torch onnx --output export/
    python tools/export_model.py --config-file configs/quickstart/retinanet_soft_norm_tiny_shapes.yaml \\
        --format torch onnx --output export/ MODEL.WEIGHTS output/model_final.pth
    python tools/export_model.py --config-file ... --backbone-only --output export/

Height and width are dynamic: one program serves every size, with faithful landmarks
(``--max-landmarks 0``, ``MODEL.SOFT.MAX_LANDMARKS 0``) and with bounded ones (the landmark grid
is computed in the program, see soft_d2.model.landmark_grid.exported_landmark_input_size). A
detector takes ``(image [3, H', W'], image_size int64 [2])``: the image (the config's
INPUT.FORMAT, 0..255, already resized for testing) padded at the bottom and right to a multiple
of 32 (the FPN's size divisibility), and the size of the image inside the padding; it returns
``boxes, scores, classes`` (+ ``masks``, the 28x28 probabilities of the predicted class, for
Mask R-CNN), as soft_d2.detection.export.ExportableDetector describes. Detectors are checked on the
config's built-in validation images (DATASETS.TEST), classifiers and backbones on random inputs.
Everything exports the pure-PyTorch path (the compiled engine has no ONNX translation); ONNX
records the Newton solve as repeated squaring (no eigendecomposition in ONNX). Outputs:
``model.pt2`` (torch.export.save) and ``model.onnx``; the check prints the largest difference
from eager per input and fails above --tolerance (boxes: --tolerance times the image's longer
side, in pixels) or when an exported detector finds another number of objects.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (docs/IMPLEMENTATION.md)

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import Tensor, nn

import soft_d2

MIN_DYNAMIC_SIDE = 64  # every landmark grid has >= 2 cells per side from here on (sizes of 1 specialise)
MAX_DYNAMIC_SIDE = 4096
# FPN inputs (detectors, backbones): padded sides in blocks of the FPN's size divisibility; from
# 5 blocks (160 px) on, the coarsest level (stride 128) has >= 2 cells per side
MIN_FPN_BLOCKS = 5
NUM_CHECK_IMAGES = 3


class FeatureList(nn.Module):
    """A Detectron2 backbone returning its feature dict as a tuple in name order (ONNX outputs are
    positional)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.names = list(backbone.output_shape())

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        features = self.backbone(images)
        return tuple(features[n] for n in self.names)


@dataclass
class Export:
    """What to export and how to check it: the module, its example inputs, the inputs it is
    compared with eager on (label -> arguments), dynamic dimensions and I/O names."""
    model: nn.Module
    example: tuple[Tensor, ...]
    checks: dict[str, tuple[Tensor, ...]]
    dynamic_shapes: tuple
    input_names: list[str]
    output_names: list[str]
    detector: bool = False


def image_dims(first: int, divisible: int = 1) -> dict:
    """Height and width (dimensions first and first + 1) as export dimensions; for FPN inputs,
    padded to a multiple of ``divisible``, as divisible * blocks, the form the exporter can
    reason about."""
    if divisible == 1:
        return {first: torch.export.Dim("height", min=MIN_DYNAMIC_SIDE, max=MAX_DYNAMIC_SIDE),
                first + 1: torch.export.Dim("width", min=MIN_DYNAMIC_SIDE, max=MAX_DYNAMIC_SIDE)}
    height, width = (torch.export.Dim(f"{n}_blocks", min=MIN_FPN_BLOCKS, max=MAX_DYNAMIC_SIDE // divisible)
                     for n in ("height", "width"))
    return {first: divisible * height, first + 1: divisible * width}


def random_checks(size: tuple[int, int], divisible: int) -> dict[str, tuple[Tensor, ...]]:
    """The example size, transposed, and a larger one (rounded up to a multiple of divisible)."""
    h, w = size
    sizes = [size, (w, h), (-(-(h + 37) // divisible) * divisible, -(-(w + 21) // divisible) * divisible)]
    torch.manual_seed(0)
    return {f"{a}x{b}": (torch.randn(1, 3, a, b),) for a, b in sizes}


def classifier_export(args, parser) -> Export:
    model = timm.create_model(args.variant, kernel_method="torch", max_landmarks=args.max_landmarks or None)
    if args.weights:
        report = soft_d2.load_checkpoint(model, args.weights)
        print(f"[export] weights: {args.weights}: {report}")
    return tensor_export(model.eval(), ["logits"], args.size or (224, 224), parser)


def tensor_export(model: nn.Module, output_names: list[str], size, parser, divisible: int = 1) -> Export:
    """A classifier (divisible 1) or a backbone whose FPN needs sides divisible by ``divisible``."""
    minimum = MIN_DYNAMIC_SIDE if divisible == 1 else divisible * MIN_FPN_BLOCKS
    if min(size) < minimum or size[0] % divisible or size[1] % divisible:
        parser.error(f"--size {size[0]}x{size[1]}: a dynamic export needs at least {minimum} pixels per side"
                     + (f", in multiples of {divisible} (the FPN's size divisibility)" if divisible > 1 else ""))
    checks = random_checks(size, divisible)
    return Export(model, next(iter(checks.values())), checks, (image_dims(2, divisible),), ["images"], output_names)


def load_detectron2_model(args):
    from detectron2.modeling import build_model

    from soft_d2.d2 import SoftDetectionCheckpointer

    cfg = soft_d2.load_config(args.config_file, list(args.opts) + ["MODEL.SOFT.KERNEL_METHOD", "torch",
                                                                  "MODEL.DEVICE", "cpu"])
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:  # read weights-only and checked to fill the SOFT backbone, as train_net.py does
        SoftDetectionCheckpointer.from_config(cfg, model).load(cfg.MODEL.WEIGHTS)
    return cfg, model


def validation_images(cfg) -> dict[str, Tensor]:
    """The first validation images of DATASETS.TEST, read and resized as the evaluator does."""
    from detectron2.data import DatasetCatalog
    from detectron2.data import transforms as T
    from detectron2.data.detection_utils import read_image

    from soft_d2.d2 import prepare_dataset

    name = cfg.DATASETS.TEST[0]
    prepare_dataset(name)
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    images = {}
    for record in DatasetCatalog.get(name)[:NUM_CHECK_IMAGES]:
        image = read_image(record["file_name"], format=cfg.INPUT.FORMAT)
        resized = resize.get_transform(image).apply_image(image)
        images[os.path.basename(record["file_name"])] = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
    return images


def detector_export(args, parser) -> Export:
    from soft_d2.detection.export import ExportableDetector

    if args.size:
        parser.error("--size is for classifiers and backbones: a detector is exported and checked on the "
                     "config's validation images (DATASETS.TEST), resized by INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST")
    cfg, model = load_detectron2_model(args)
    try:
        detector = ExportableDetector(model)
    except (TypeError, ValueError) as error:
        parser.error(f"{args.config_file}: {error}; --backbone-only exports its backbone")
    images = validation_images(cfg)
    first = next(iter(images))
    images[f"{first} transposed"] = images[first].transpose(1, 2).contiguous()
    checks = {label: detector.pad(image) for label, image in images.items()}
    example = checks[first]
    d = max(1, model.backbone.size_divisibility)
    dims = (image_dims(1, d), None)
    if min(example[0].shape[1:]) < d * MIN_FPN_BLOCKS:
        parser.error(f"a dynamic detector export needs images of at least {d * MIN_FPN_BLOCKS} pixels per side "
                     f"after INPUT.MIN_SIZE_TEST resizing; {first} is {tuple(example[0].shape[1:])} padded")
    for label, inputs in checks.items():  # the module exported computes what the Detectron2 model does
        instances = model([{"image": images[label]}])[0]["instances"]
        reference = (instances.pred_boxes.tensor, instances.scores, instances.pred_classes)
        diff = detection_difference(detector(*inputs)[:3], reference, image_side(inputs))
        print(f"[export] {label}: ExportableDetector vs the Detectron2 model (eager): {len(instances)} objects, "
              f"max |diff| {format_difference(diff)}")
        if max(diff.values(), default=0.0) > args.tolerance:
            raise SystemExit(f"[export] FAILED: ExportableDetector differs from the Detectron2 model on {label}: {diff}")
    return Export(detector, example, checks, dims, ["image", "image_size"], detector.output_names, detector=True)


def backbone_export(args, parser) -> Export:
    cfg, model = load_detectron2_model(args)
    wrapped = FeatureList(model.backbone).eval()
    return tensor_export(wrapped, wrapped.names, args.size or (320, 480), parser,
                         max(1, model.backbone.size_divisibility))


def image_side(inputs: tuple[Tensor, ...]) -> float:
    """The longer side of a detector input's image (its image_size), for boxes in relative units."""
    return float(inputs[1].max())


def as_tuple(out) -> tuple[Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def max_difference(a, b) -> float:
    return max(float((torch.as_tensor(x) - torch.as_tensor(y)).abs().max()) for x, y in zip(as_tuple(a), as_tuple(b)))


def detection_difference(a, b, side: float) -> dict[str, float]:
    """Largest differences per output (boxes relative to the image's longer side); inf when the
    number of objects or a class differs."""
    if a[0].shape[0] != b[0].shape[0]:
        return {"objects": float("inf")}
    if a[0].shape[0] == 0:
        return {}
    diff = {"boxes": float((a[0] - b[0]).abs().max()) / side, "scores": float((a[1] - b[1]).abs().max()),
            "classes": 0.0 if torch.equal(a[2].long(), b[2].long()) else float("inf")}
    if len(a) > 3:
        diff["masks"] = float((a[3] - b[3]).abs().max())
    return diff


def format_difference(diff: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2e}" for k, v in diff.items()) or "no objects"


def compare(export: Export, out, eager, label: str, runtime: str, path: Path) -> float:
    if export.detector:
        diff = detection_difference(as_tuple(out), as_tuple(eager), image_side(export.checks[label]))
        worst = max(diff.values(), default=0.0)
        print(f"[export] {runtime} dynamic height/width -> {path}: {label}: {len(as_tuple(out)[0])} objects, "
              f"max |diff| {format_difference(diff)}")
        return worst
    diff = max_difference(out, eager)
    print(f"[export] {runtime} dynamic height/width -> {path}: {label} max |diff| {diff:.2e}")
    return diff


def parse_size(text: str) -> tuple[int, int]:
    h, _, w = text.partition("x")
    try:
        return int(h), int(w or h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size takes HxW, e.g. 320x480, got {text!r}") from None


@torch.no_grad()
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--variant", choices=sorted(soft_d2.VARIANTS), help="a timm SOFT classifier")
    source.add_argument("--config-file", help="a soft-d2 Detectron2 config: the whole detector (RetinaNet, "
                        "Mask R-CNN), or its backbone with --backbone-only")
    parser.add_argument("--backbone-only", action="store_true", help="export the config's backbone (SOFT + FPN)")
    parser.add_argument("--weights", help="classifier checkpoint (ours or the release's); configs use MODEL.WEIGHTS")
    parser.add_argument("--max-landmarks", type=int, default=0, help="classifier landmark bound (0: faithful)")
    parser.add_argument("--format", nargs="+", choices=("torch", "onnx"), default=["torch", "onnx"])
    parser.add_argument("--size", type=parse_size, default=None, help="HxW of the example input of a classifier "
                        "(default 224x224) or backbone (default 320x480)")
    parser.add_argument("--output", type=Path, required=True, help="folder for model.pt2 / model.onnx")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted difference from eager")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.opts and not args.config_file:
        parser.error(f"config overrides {args.opts} need --config-file")
    if args.backbone_only and not args.config_file:
        parser.error("--backbone-only needs --config-file")

    if not args.config_file:
        export = classifier_export(args, parser)
    else:
        export = (backbone_export if args.backbone_only else detector_export)(args, parser)
    args.output.mkdir(parents=True, exist_ok=True)
    eager = {label: export.model(*a) for label, a in export.checks.items()}
    worst = 0.0

    if "torch" in args.format:
        program = torch.export.export(export.model, export.example, dynamic_shapes=export.dynamic_shapes,
                                      strict=False)
        path = args.output / "model.pt2"
        torch.export.save(program, path)
        loaded = torch.export.load(path).module()
        for label, a in export.checks.items():
            worst = max(worst, compare(export, loaded(*a), eager[label], label, "torch.export", path))

    if "onnx" in args.format:
        import onnxruntime

        path = args.output / "model.onnx"
        onnx_program = torch.onnx.export(export.model, export.example, dynamo=True,
                                         dynamic_shapes=export.dynamic_shapes, input_names=export.input_names,
                                         output_names=export.output_names, verbose=False)
        onnx_program.save(str(path))
        runtime = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for label, a in export.checks.items():
            feeds = {name: t.numpy() for name, t in zip(export.input_names, a)}
            out = [torch.from_numpy(o) for o in runtime.run(None, feeds)]
            worst = max(worst, compare(export, out, eager[label], label, "ONNX (onnxruntime)", path))

    if worst > args.tolerance:
        print(f"[export] FAILED: an exported model differs from eager by {worst:.2e} > --tolerance {args.tolerance}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
