"""Semantic segmentation with SOFT backbones in Detectron2: the UperNet head (+ auxiliary FCN head),
its config keys, the segmentation data augmentation, the built-in shapes label maps and ADE20K checks.

Importing this module registers ``UperNetHead`` in Detectron2's SEM_SEG_HEADS_REGISTRY and the data
sets ``soft_shapes_sem_seg_{train,val}`` (and re-registers ``ade20k_sem_seg_{train,val}``).
The backbone is the SOFT layer's (soft_d2.d2, ``MODEL.BACKBONE.NAME: "build_soft_backbone"``, res2..res5).
"""
from ..d2.datasets import add_dataset_preparer
from .config import add_segmentation_config
from .datasets import prepare_sem_seg_dataset, register_sem_seg_datasets
from .head import UperNetHead
from .mapper import build_sem_seg_mapper
from .upernet import FCNHead, UperNetDecoder

register_sem_seg_datasets()
add_dataset_preparer(prepare_sem_seg_dataset)

__all__ = [
    "FCNHead",
    "UperNetDecoder",
    "UperNetHead",
    "add_segmentation_config",
    "build_sem_seg_mapper",
    "prepare_sem_seg_dataset",
    "register_sem_seg_datasets",
]
