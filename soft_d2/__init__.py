"""soft-d2: SOFT and SOFT-Norm backbones (Tiny to Huge) for timm and Detectron2.

``import soft_d2`` registers the ten variants with timm (``timm.create_model("soft_norm_tiny")``).
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
