"""Config keys of detection (RetinaNet, Mask R-CNN): ``add_detection_config(cfg)``.

The backbone and solver keys are the SOFT layer's (soft_d2.d2.add_soft_config); these are the
instance-data augmentation keys read by soft_d2.detection.mapper.
"""
from __future__ import annotations

from detectron2.config import CfgNode as CN


def add_detection_config(cfg: CN) -> CN:
    cfg.INPUT.COPY_PASTE = CN()
    cfg.INPUT.COPY_PASTE.ENABLED = False    # training: paste objects of another training image (polygon masks needed)
    cfg.INPUT.COPY_PASTE.MAX_OBJECTS = 6    # 1..this many objects of one random source image per training image
    cfg.INPUT.COPY_PASTE.MIN_VISIBLE = 0.4  # a pasted-over object keeps at least this share of its pixels
    return cfg
