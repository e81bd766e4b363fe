"""soft-d2: SOFT and SOFT-Norm backbones (Tiny to Huge) for timm and Detectron2.

``import soft_d2`` registers the ten variants with timm (``timm.create_model("soft_norm_tiny")``)
and imports nothing of Detectron2, so the model and the classification trainer work without it.
The Detectron2 parts register themselves when imported: ``soft_d2.d2`` (the task-neutral layer:
SOFT backbone, config keys, checkpointer, solver, trainer), on which ``soft_d2.detection`` (FPN
builders, built-in detection data) and ``soft_d2.segmentation`` (UperNet head, built-in
segmentation data) stand. ``soft_d2.add_soft_config`` adds the SOFT layer's keys;
``soft_d2.compose_config`` / ``soft_d2.load_config`` (soft_d2/config.py) every task's as well.
"""
__version__ = "0.1.0"

from . import ops
from .model import (
    SoftVisionTransformer,
    convert_official_state_dict,
    load_checkpoint,
    to_official_state_dict,
    VARIANTS,
)

__all__ = [
    "ops",
    "SoftVisionTransformer",
    "convert_official_state_dict",
    "load_checkpoint",
    "to_official_state_dict",
    "VARIANTS",
]


_DETECTRON2_ENTRY_POINTS = {"add_soft_config": "soft_d2.d2.config", "compose_config": "soft_d2.config",
                            "load_config": "soft_d2.config"}


def __getattr__(name: str):
    if name in _DETECTRON2_ENTRY_POINTS:  # need Detectron2: imported on first use only
        import importlib

        return getattr(importlib.import_module(_DETECTRON2_ENTRY_POINTS[name]), name)
    raise AttributeError(f"module 'soft_d2' has no attribute {name!r}")
