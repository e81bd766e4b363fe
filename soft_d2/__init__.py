"""soft-d2: SOFT and SOFT-Norm backbones (Tiny to Huge) for timm and Detectron2.

``import soft_d2`` registers the ten variants with timm (``timm.create_model("soft_norm_tiny")``)
and imports nothing of Detectron2, so the model and the classification trainer work without it.
The Detectron2 parts register themselves when imported: ``soft_d2.detection`` (SOFT backbones,
FPN builders, built-in detection data) and ``soft_d2.segmentation`` (UperNet head, built-in
segmentation data); ``soft_d2.add_soft_config`` imports both.
"""
__version__ = "0.1.0"

from . import ops
from .model import (
    SoftVisionTransformer,
    convert_official_state_dict,
    load_checkpoint,
    VARIANTS,
)

__all__ = [
    "ops",
    "SoftVisionTransformer",
    "convert_official_state_dict",
    "load_checkpoint",
    "VARIANTS",
]


def __getattr__(name: str):
    if name == "add_soft_config":  # needs Detectron2: imported on first use only
        from . import segmentation  # noqa: F401  (registers the UperNet head and segmentation data sets)
        from .detection import add_soft_config

        return add_soft_config
    raise AttributeError(f"module 'soft_d2' has no attribute {name!r}")
