"""Object detection and instance segmentation (RetinaNet, Mask R-CNN) with SOFT backbones.

Importing this module registers ``build_soft_fpn_backbone`` and ``build_retinanet_soft_fpn_backbone``
in Detectron2's BACKBONE_REGISTRY and the built-in data sets ``soft_shapes_train`` / ``soft_shapes_val``.
``register_config_datasets(cfg)`` registers the COCO-format sets of DATASETS.REGISTER_COCO_INSTANCES
(soft_d2.config.load_config calls it); ``check_num_classes`` compares a data set's categories with
the head's NUM_CLASSES.
Built on the task-neutral layer soft_d2.d2 (backbone, checkpointer, solver, trainer).
"""
from .classes import check_num_classes, num_classes_key
from .config import add_detection_config
from .datasets import coco_thing_classes, prepare_builtin_dataset, register_builtin, register_config_datasets
from .fpn import SoftFPN, build_retinanet_soft_fpn_backbone, build_soft_fpn_backbone
from .mapper import DetectionDatasetMapper

register_builtin()

__all__ = [
    "DetectionDatasetMapper",
    "SoftFPN",
    "add_detection_config",
    "build_retinanet_soft_fpn_backbone",
    "build_soft_fpn_backbone",
    "check_num_classes",
    "coco_thing_classes",
    "num_classes_key",
    "prepare_builtin_dataset",
    "register_builtin",
    "register_config_datasets",
]
