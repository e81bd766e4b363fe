"""Detectron2 extension: SOFT backbones, config keys, checkpoint loading and built-in data.

Importing this module registers ``build_soft_backbone``, ``build_soft_fpn_backbone`` and
``build_retinanet_soft_fpn_backbone`` in Detectron2's BACKBONE_REGISTRY and the built-in data sets
``soft_shapes_train`` / ``soft_shapes_val``.
"""
from .backbone import (
    SoftBackbone,
    build_retinanet_soft_fpn_backbone,
    build_soft_backbone,
    build_soft_fpn_backbone,
)
from .checkpoint import SoftDetectionCheckpointer, backbone_state_dict
from .config import add_soft_config, soft_model_kwargs
from .datasets import check_dataset_files, prepare_dataset, register_builtin
from .mapper import ImageReadError, SoftDatasetMapper

register_builtin()

__all__ = [
    "ImageReadError",
    "SoftBackbone",
    "SoftDatasetMapper",
    "SoftDetectionCheckpointer",
    "add_soft_config",
    "backbone_state_dict",
    "build_retinanet_soft_fpn_backbone",
    "build_soft_backbone",
    "build_soft_fpn_backbone",
    "check_dataset_files",
    "prepare_dataset",
    "register_builtin",
    "soft_model_kwargs",
]
