"""Config keys of detection (RetinaNet, Mask R-CNN): ``add_detection_config(cfg)``.

The backbone and solver keys are the SOFT layer's (soft_d2.d2.add_soft_config); these are the
instance-data augmentation keys read by soft_d2.detection.mapper and the key that registers a
user's own COCO-format data sets (soft_d2.detection.datasets.register_config_datasets, called by
soft_d2.config.load_config).
"""
from __future__ import annotations

from detectron2.config import CfgNode as CN


def add_detection_config(cfg: CN) -> CN:
    cfg.INPUT.COPY_PASTE = CN()
    cfg.INPUT.COPY_PASTE.ENABLED = False    # training: paste objects of another training image (polygon masks needed)
    cfg.INPUT.COPY_PASTE.MAX_OBJECTS = 6    # 1..this many objects of one random source image per training image
    cfg.INPUT.COPY_PASTE.MIN_VISIBLE = 0.4  # a pasted-over object keeps at least this share of its pixels

    # Own COCO-format data sets, no Python needed: a list of [name, json_file, image_root] triples, e.g.
    #   [["my_train", "datasets/my/annotations/train.json", "datasets/my/train"], ["my_val", ...]]
    # load_config registers each with Detectron2's register_coco_instances, so DATASETS.TRAIN / TEST
    # can name them. Relative paths are taken from the current directory (where the command runs);
    # "~" is expanded. The same name with the same files again is a no-op; a name already registered
    # with other files, or a built-in name (coco_2017_val, soft_shapes_train ...), is an error.
    cfg.DATASETS.REGISTER_COCO_INSTANCES = []
    return cfg
