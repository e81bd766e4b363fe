"""soft-d2: SOFT and SOFT-Norm backbones (Tiny to Huge) for timm and Detectron2.

``import soft_d2`` registers the ten variants with timm (``timm.create_model("soft_norm_tiny")``)
and, where detectron2 is installed, the SOFT backbones, the UperNet head and built-in data sets
with Detectron2.
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

try:  # Detectron2 is optional; with it, the backbones and built-in data sets register themselves
    import detectron2  # noqa: F401
except ImportError:
    pass
else:
    from . import detection  # noqa: F401  (registers backbones and data sets)
    from . import segmentation  # noqa: F401  (registers the UperNet head and segmentation data sets)
    from .detection import add_soft_config

    __all__ += ["add_soft_config"]
