"""Object detection and instance segmentation (RetinaNet, Mask R-CNN) with SOFT backbones.

Importing this module registers ``build_soft_fpn_backbone`` and ``build_retinanet_soft_fpn_backbone``
in Detectron2's BACKBONE_REGISTRY and the built-in data sets ``soft_shapes_train`` / ``soft_shapes_val``.
Built on the task-neutral layer soft_d2.d2 (backbone, checkpointer, solver, trainer).
"""
from .config import add_detection_config
from .datasets import prepare_builtin_dataset, register_builtin
from .fpn import SoftFPN, build_retinanet_soft_fpn_backbone, build_soft_fpn_backbone
from .mapper import DetectionDatasetMapper

register_builtin()

__all__ = [
    "DetectionDatasetMapper",
    "SoftFPN",
    "add_detection_config",
    "build_retinanet_soft_fpn_backbone",
    "build_soft_fpn_backbone",
    "prepare_builtin_dataset",
    "register_builtin",
]
