"""The task-neutral Detectron2 layer of soft-d2: what detection and segmentation both stand on.

SOFT as a Detectron2 backbone (``build_soft_backbone`` is registered in BACKBONE_REGISTRY on
import), the MODEL.SOFT / solver config keys, the checkpointer (Detectron2 and SOFT ImageNet
checkpoints), optimizer and LR schedules, mixed precision, data-set preparation, the base
dataset mapper, picture functions, the trainer, and fvcore FLOP handles for SOFT's operators
(``soft_flop_count_analysis``). It imports no task package.
"""
from .amp import MixedPrecisionTrainer, autocast_dtype
from .backbone import SoftBackbone, build_soft_backbone, soft_backbone_from_cfg
from .checkpoint import SoftDetectionCheckpointer, backbone_state_dict, find_soft_model
from .config import DEFAULT_MAX_LANDMARKS, add_soft_config, soft_model_kwargs
from .datasets import add_dataset_preparer, check_dataset_files, datasets_root, prepare_dataset
from .flops import SOFT_FLOP_HANDLES, add_soft_flop_handles, soft_flop_count_analysis
from .mapper import ImageReadError, SoftDatasetMapper
from .schedule import build_lr_scheduler
from .solver import build_optimizer, build_param_groups
from .trainer import SoftTrainer

__all__ = [
    "DEFAULT_MAX_LANDMARKS",
    "SOFT_FLOP_HANDLES",
    "ImageReadError",
    "MixedPrecisionTrainer",
    "SoftBackbone",
    "SoftDatasetMapper",
    "SoftDetectionCheckpointer",
    "SoftTrainer",
    "add_dataset_preparer",
    "add_soft_config",
    "add_soft_flop_handles",
    "autocast_dtype",
    "backbone_state_dict",
    "build_lr_scheduler",
    "build_optimizer",
    "build_param_groups",
    "build_soft_backbone",
    "check_dataset_files",
    "datasets_root",
    "find_soft_model",
    "prepare_dataset",
    "soft_flop_count_analysis",
    "soft_backbone_from_cfg",
    "soft_model_kwargs",
]
