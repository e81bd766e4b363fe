"""Detectron2's DatasetMapper with an error that names the image file it could not read."""
from __future__ import annotations

from detectron2.data import DatasetMapper
from PIL import UnidentifiedImageError


class ImageReadError(RuntimeError):
    """An image file of a data set is missing, truncated or not an image."""


class SoftDatasetMapper(DatasetMapper):
    """DatasetMapper whose read errors name the file; the tasks' mappers build on it."""

    def __call__(self, dataset_dict):
        try:
            return self.map(dataset_dict)
        except (OSError, UnidentifiedImageError, SyntaxError) as e:  # PIL raises all three on bad files
            file_name = dataset_dict.get("file_name", "<no file_name>")
            raise ImageReadError(f"cannot read image file {file_name} (or an image pasted into it): "
                                 f"{type(e).__name__}: {e}") from e

    def map(self, dataset_dict):
        """One record to the model's input dict (Detectron2's mapping; subclasses add to it)."""
        return super().__call__(dataset_dict)
