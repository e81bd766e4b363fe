"""Shared helpers of the detection tests: small configs, small data sets, batches."""
from __future__ import annotations

import os

import torch

import train_net
from soft_d2.config import compose_config  # registers the backbones, heads and built-in data sets
from soft_d2.data import shapes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART_RCNN = os.path.join(ROOT, "configs/quickstart/mask_rcnn_soft_norm_tiny_shapes.yaml")
QUICKSTART_RETINANET = os.path.join(ROOT, "configs/quickstart/retinanet_soft_norm_tiny_shapes.yaml")
PUBLISHED = [os.path.join(ROOT, "configs", sub, f"{arch}_soft_{size}_norm_fpn_1x.yaml")
             for sub, arch in (("COCO-Detection", "retinanet"), ("COCO-InstanceSegmentation", "mask_rcnn"))
             for size in ("tiny", "small", "medium", "large")]

# Small inputs keep every test fast; the configs themselves are never edited.
SMALL_INPUT = ["INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128",
               "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128"]


def load_cfg(path: str, opts: list[str] = (), output_dir: str | None = None):
    cfg = compose_config()
    cfg.merge_from_file(path)
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    if output_dir:
        cfg.OUTPUT_DIR = output_dir
    return cfg


def quick_train_opts(output_dir: str, max_iter: int = 3, batch: int = 2) -> list[str]:
    """Overrides that make a quickstart run a few tiny iterations and a fast evaluation."""
    return SMALL_INPUT + ["SOLVER.MAX_ITER", str(max_iter), "SOLVER.IMS_PER_BATCH", str(batch),
                          "SOLVER.WARMUP_ITERS", "10", "SOLVER.STEPS", "(100,)", "SOLVER.CHECKPOINT_PERIOD", "1000",
                          "DATALOADER.NUM_WORKERS", "0", "TEST.VIS_IMAGES", "2", "OUTPUT_DIR", output_dir]


def make_small_builtin(root: str, train_images: int = 8, val_images: int = 4) -> None:
    """Pre-generate small built-in splits under ``root`` (used as DETECTRON2_DATASETS): the cache
    is taken as-is when present, so runs (subprocesses too) use these instead of the full set."""
    folder = os.path.join(root, f"soft_shapes_v{shapes.VERSION}")
    shapes.write_split("train", folder, num_images=train_images)
    shapes.write_split("val", folder, num_images=val_images)


def all_parameters_have_grad(model: torch.nn.Module) -> list[str]:
    """Names of trainable parameters that received no gradient."""
    return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


def run_train_net(config: str, opts: list[str], *flags: str):
    """train_net.main for a config file, command-line flags (--eval-only, --resume ...) and overrides."""
    return train_net.main(train_net.parse_args(["--config-file", config, *flags, *opts]))
