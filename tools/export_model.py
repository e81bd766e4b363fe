"""Export a SOFT classifier or a config's backbone (SOFT + FPN) to torch.export and ONNX, then run
the exported model and compare it with eager PyTorch.

    python tools/export_model.py --variant soft_norm_tiny --format torch onnx --output export/
    python tools/export_model.py --config-file configs/quickstart/retinanet_soft_norm_tiny_shapes.yaml \\
        --format torch onnx --output export/ MODEL.WEIGHTS output/model_final.pth

Height and width are dynamic (one program for every size from 64 pixels per side) when the landmarks
are faithful (``--max-landmarks 0``, ``MODEL.SOFT.MAX_LANDMARKS 0``); with bounded landmarks the
landmark grid is piecewise in the image size, so the program is exported for ``--size`` and
refuses other sizes. Both export the pure-PyTorch path (the compiled engine has no ONNX
translation); ONNX records the Newton solve as repeated squaring (no eigendecomposition in ONNX).
Outputs: ``model.pt2`` (torch.export.save) and ``model.onnx``; the check prints the largest
difference from eager at the export size and, for dynamic exports, at other sizes, and fails above
--tolerance.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (README)

import argparse
import sys
from pathlib import Path

import timm
import torch
from torch import Tensor, nn

import soft_d2

MIN_DYNAMIC_SIDE = 64  # every landmark grid has >= 2 cells per side from here on (sizes of 1 specialise)
MAX_DYNAMIC_SIDE = 4096


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


def classifier(args) -> tuple[nn.Module, list[str], bool]:
    model = timm.create_model(args.variant, kernel_method="torch", max_landmarks=args.max_landmarks or None)
    if args.weights:
        report = soft_d2.load_checkpoint(model, args.weights)
        print(f"[export] weights: {args.weights}: {report}")
    return model.eval(), ["logits"], not args.max_landmarks


def config_backbone(args) -> tuple[nn.Module, list[str], bool]:
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_backbone

    cfg = soft_d2.load_config(args.config_file, list(args.opts) + ["MODEL.SOFT.KERNEL_METHOD", "torch",
                                                                  "MODEL.DEVICE", "cpu"])
    backbone = build_backbone(cfg)
    if cfg.MODEL.WEIGHTS:
        # the detector's checkpoint holds the backbone under "backbone.": load it into a model shell
        shell = nn.Module()
        shell.backbone = backbone
        DetectionCheckpointer(shell).load(cfg.MODEL.WEIGHTS)
    wrapped = FeatureList(backbone).eval()
    return wrapped, wrapped.names, not cfg.MODEL.SOFT.MAX_LANDMARKS


def dynamic_shapes(dynamic: bool):
    """Height and width of the one image input as export dimensions (None: a fixed-size export)."""
    if not dynamic:
        return None
    return ({2: torch.export.Dim("height", min=MIN_DYNAMIC_SIDE, max=MAX_DYNAMIC_SIDE),
             3: torch.export.Dim("width", min=MIN_DYNAMIC_SIDE, max=MAX_DYNAMIC_SIDE)},)


def as_tuple(out) -> tuple[Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def max_difference(a, b) -> float:
    return max(float((torch.as_tensor(x) - torch.as_tensor(y)).abs().max()) for x, y in zip(as_tuple(a), as_tuple(b)))


def check_sizes(size: tuple[int, int], dynamic: bool) -> list[tuple[int, int]]:
    h, w = size
    return [size] + ([(w, h), (h + 37, w + 21)] if dynamic else [])


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
    source.add_argument("--config-file", help="a soft-d2 Detectron2 config: its backbone (SOFT + FPN)")
    parser.add_argument("--weights", help="classifier checkpoint (ours or the release's); configs use MODEL.WEIGHTS")
    parser.add_argument("--max-landmarks", type=int, default=0, help="classifier landmark bound (0: faithful)")
    parser.add_argument("--format", nargs="+", choices=("torch", "onnx"), default=["torch", "onnx"])
    parser.add_argument("--size", type=parse_size, default=None, help="HxW of the example input "
                        "(default 224x224 for a classifier, 320x480 for a backbone)")
    parser.add_argument("--output", type=Path, required=True, help="folder for model.pt2 / model.onnx")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted difference from eager")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.opts and not args.config_file:
        parser.error(f"config overrides {args.opts} need --config-file")

    model, output_names, dynamic = config_backbone(args) if args.config_file else classifier(args)
    size = args.size or ((320, 480) if args.config_file else (224, 224))
    if dynamic and min(size) < MIN_DYNAMIC_SIDE:
        parser.error(f"--size {size[0]}x{size[1]}: a dynamic export needs at least {MIN_DYNAMIC_SIDE} pixels per side")
    torch.manual_seed(0)
    x = torch.randn(1, 3, *size)
    args.output.mkdir(parents=True, exist_ok=True)
    kind = "dynamic height/width" if dynamic else f"fixed {size[0]}x{size[1]} (bounded landmarks)"
    worst = 0.0
    inputs = {s: torch.randn(1, 3, *s) for s in check_sizes(size, dynamic)}
    eager = {s: model(t) for s, t in inputs.items()}

    if "torch" in args.format:
        program = torch.export.export(model, (x,), dynamic_shapes=dynamic_shapes(dynamic))
        path = args.output / "model.pt2"
        torch.export.save(program, path)
        loaded = torch.export.load(path).module()
        for s, t in inputs.items():
            diff = max_difference(loaded(t), eager[s])
            worst = max(worst, diff)
            print(f"[export] torch.export {kind} -> {path}: {s[0]}x{s[1]} max |diff| {diff:.2e}")

    if "onnx" in args.format:
        import onnxruntime

        path = args.output / "model.onnx"
        onnx_program = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=dynamic_shapes(dynamic),
                                         input_names=["images"],
                                         output_names=output_names, verbose=False)
        onnx_program.save(str(path))
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for s, t in inputs.items():
            diff = max_difference([torch.from_numpy(o) for o in session.run(None, {"images": t.numpy()})], eager[s])
            worst = max(worst, diff)
            print(f"[export] ONNX {kind} -> {path}: {s[0]}x{s[1]} max |diff| {diff:.2e} (onnxruntime)")

    if worst > args.tolerance:
        print(f"[export] FAILED: an exported model differs from eager by {worst:.2e} > --tolerance {args.tolerance}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
