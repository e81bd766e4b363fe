"""The SOFT family as plain nn.Modules, timm registration and the release-checkpoint converter."""
from .checkpoint import (
    CheckpointMismatchError,
    LoadReport,
    convert_official_state_dict,
    load_checkpoint,
    to_official_state_dict,
)
from .checkpoint_file import CheckpointFileError, UnsafeCheckpointError
from .soft import SoftVisionTransformer, create_soft
from .variants import VARIANTS, check_variant

__all__ = [
    "CheckpointFileError",
    "CheckpointMismatchError",
    "LoadReport",
    "SoftVisionTransformer",
    "UnsafeCheckpointError",
    "VARIANTS",
    "check_variant",
    "convert_official_state_dict",
    "create_soft",
    "load_checkpoint",
    "to_official_state_dict",
]
