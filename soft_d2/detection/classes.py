"""The class count of a detection head against the categories of its data set."""
from __future__ import annotations

import logging

from detectron2.data import MetadataCatalog

logger = logging.getLogger(__name__)

# META_ARCHITECTURE -> the config key of its head's class count
_NUM_CLASSES_KEYS = {"GeneralizedRCNN": "MODEL.ROI_HEADS.NUM_CLASSES", "RetinaNet": "MODEL.RETINANET.NUM_CLASSES"}


def num_classes_key(cfg) -> str | None:
    """The NUM_CLASSES key of the config's head, None for architectures without one here."""
    return _NUM_CLASSES_KEYS.get(cfg.MODEL.META_ARCHITECTURE)


def check_num_classes(cfg, dataset_name: str) -> None:
    """Compare the head's NUM_CLASSES with the categories of ``dataset_name`` (its metadata's
    ``thing_classes``, set when the COCO loader has read the json; nothing to check before that).

    More categories than NUM_CLASSES: ValueError naming the key and the value to set. Fewer: a
    warning, since a head with spare outputs trains (e.g. a subset of a larger label set).
    """
    key = num_classes_key(cfg)
    classes = getattr(MetadataCatalog.get(dataset_name), "thing_classes", None)
    if key is None or classes is None:
        return
    head_classes = cfg
    for part in key.split("."):  # MODEL -> ROI_HEADS -> NUM_CLASSES
        head_classes = head_classes[part]
    count = len(classes)
    if count > head_classes:
        raise ValueError(f"data set {dataset_name!r} has {count} categories but {key} is {head_classes}: the head "
                         f"cannot predict them all. Set {key} {count}.")
    if count < head_classes:
        logger.warning(f"data set {dataset_name!r} has {count} categories but {key} is {head_classes}: "
                       f"{head_classes - count} outputs of the head belong to no category (COCO evaluation "
                       f"fails if the model predicts one). Set {key} {count} unless that is intended.")
