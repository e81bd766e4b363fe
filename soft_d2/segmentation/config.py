"""Config keys of semantic segmentation (UperNet): ``add_segmentation_config(cfg)``.

Detectron2's own MODEL.SEM_SEG_HEAD keys keep their meaning: NAME ("UperNetHead"), IN_FEATURES
(fine to coarse), NUM_CLASSES, IGNORE_VALUE, CONVS_DIM (decoder channels), NORM, LOSS_WEIGHT.
"""
from __future__ import annotations

from detectron2.config import CfgNode as CN


def add_segmentation_config(cfg: CN) -> CN:
    h = cfg.MODEL.SEM_SEG_HEAD
    h.POOL_SCALES = [1, 2, 3, 6]        # PPM grid sizes on the last stage (PSPNet / UperNet)
    h.DROPOUT = 0.1                     # Dropout2d before each classifier
    h.CLASSIFIER_INIT_STD = 0.01        # std of both classifiers' initial weights (the common UperNet recipe)
    h.AUX_IN_FEATURE = "res4"           # auxiliary FCN head on stage 3 (deep supervision)
    h.AUX_CONVS_DIM = 256               # its conv channels
    h.AUX_LOSS_WEIGHT = 0.4             # its loss weight; 0 = no auxiliary head at all

    cfg.INPUT.SEG_RESIZE = CN()
    # Training resize: a ratio r ~ U(RATIO_RANGE) is drawn per image and the image is scaled (aspect
    # kept) to fit inside (LONG_SIDE * r, SHORT_SIDE * r), i.e. short side SHORT_SIDE * r unless very elongated.
    cfg.INPUT.SEG_RESIZE.ENABLED = False
    cfg.INPUT.SEG_RESIZE.LONG_SIDE = 2048
    cfg.INPUT.SEG_RESIZE.SHORT_SIDE = 512
    cfg.INPUT.SEG_RESIZE.RATIO_RANGE = (0.5, 2.0)
    # A training crop is redrawn (up to 10 times) while one class covers more than this share of it.
    if "SINGLE_CATEGORY_MAX_AREA" not in cfg.INPUT.CROP:
        cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    cfg.INPUT.PHOTOMETRIC_DISTORTION = False  # random brightness, contrast, saturation, hue
    return cfg
