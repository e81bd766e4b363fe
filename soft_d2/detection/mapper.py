"""Detectron2's DatasetMapper with an error that names the image file it could not read."""
from __future__ import annotations

from detectron2.data import DatasetMapper
from PIL import UnidentifiedImageError


class ImageReadError(RuntimeError):
    """An image file of a data set is missing, truncated or not an image."""


class SoftDatasetMapper(DatasetMapper):
    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except (OSError, UnidentifiedImageError, SyntaxError) as e:  # PIL raises all three on bad files
            file_name = dataset_dict.get("file_name", "<no file_name>")
            raise ImageReadError(f"cannot read image file {file_name}: {type(e).__name__}: {e}") from e
