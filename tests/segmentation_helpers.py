"""Shared helpers of the segmentation tests: config paths, a small SOFT, small data sets."""
from __future__ import annotations

import os

import soft_d2.segmentation  # noqa: F401  (registers the UperNet head and the data sets)
from detection_helpers import ROOT, load_cfg  # noqa: F401  (re-exported)
from soft_d2.segmentation.datasets import BUILTIN_PREFIX, write_sem_seg_split
from soft_d2.data import shapes

QUICKSTART_UPERNET = os.path.join(ROOT, "configs/quickstart/upernet_soft_norm_tiny_shapes.yaml")
ADE20K_CONFIGS = [os.path.join(ROOT, "configs/ADE20K", f"upernet_soft_{size}_norm_512x512.yaml")
                  for size in ("small", "medium")]

# A SOFT of a few thousand parameters for fast head tests (the configs themselves are never edited).
SMALL_SOFT = ["MODEL.SOFT.EMBED_DIMS", "[16, 32, 48, 64]", "MODEL.SOFT.NUM_HEADS", "[1, 2, 3, 4]",
              "MODEL.SOFT.DEPTHS", "[1, 1, 1, 1]", "MODEL.SEM_SEG_HEAD.CONVS_DIM", "16",
              "MODEL.SEM_SEG_HEAD.AUX_CONVS_DIM", "8"]


def quick_seg_opts(output_dir: str, max_iter: int = 3, batch: int = 2) -> list[str]:
    """Overrides that make the quickstart run a few tiny iterations and a fast evaluation."""
    return ["INPUT.SEG_RESIZE.SHORT_SIDE", "96", "INPUT.SEG_RESIZE.LONG_SIDE", "160", "INPUT.CROP.SIZE", "(64, 64)",
            "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "160",
            "SOLVER.MAX_ITER", str(max_iter), "SOLVER.IMS_PER_BATCH", str(batch), "SOLVER.WARMUP_ITERS", "2",
            "SOLVER.CHECKPOINT_PERIOD", "1000", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", output_dir]


def make_small_sem_seg(root: str, train_images: int = 6, val_images: int = 3) -> str:
    """Pre-generate small built-in splits under ``root`` (used as DETECTRON2_DATASETS)."""
    folder = os.path.join(root, f"{BUILTIN_PREFIX}_v{shapes.VERSION}")
    write_sem_seg_split("train", folder, num_images=train_images)
    write_sem_seg_split("val", folder, num_images=val_images)
    return folder
