"""Detectron2's DatasetMapper with an error that names the image file it could not read, and
optional copy-paste augmentation (INPUT.COPY_PASTE) before the geometric augmentations."""
from __future__ import annotations

import copy

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from PIL import UnidentifiedImageError

from .copy_paste import CopyPaste


class ImageReadError(RuntimeError):
    """An image file of a data set is missing, truncated or not an image."""


class SoftDatasetMapper(DatasetMapper):
    @configurable
    def __init__(self, is_train: bool = True, *, copy_paste: CopyPaste | None = None, **kwargs):
        super().__init__(is_train, **kwargs)
        self.copy_paste = copy_paste

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        if is_train and cfg.INPUT.COPY_PASTE.ENABLED:
            ret["copy_paste"] = CopyPaste.from_config(cfg)
        return ret

    def __call__(self, dataset_dict):
        try:
            if self.copy_paste is None:
                return super().__call__(dataset_dict)
            return self._call_with_copy_paste(dataset_dict)
        except (OSError, UnidentifiedImageError, SyntaxError) as e:  # PIL raises all three on bad files
            file_name = dataset_dict.get("file_name", "<no file_name>")
            raise ImageReadError(f"cannot read image file {file_name} (or the image pasted into it): "
                                 f"{type(e).__name__}: {e}") from e

    def _call_with_copy_paste(self, dataset_dict):
        """DatasetMapper's training path for instance data, with the paste between reading and augmenting."""
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        image, dataset_dict["annotations"] = self.copy_paste(image, dataset_dict.get("annotations", []))
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if self.proposal_topk is not None:
            utils.transform_proposals(dataset_dict, image.shape[:2], transforms, proposal_topk=self.proposal_topk)
        self._transform_annotations(dataset_dict, transforms, image.shape[:2])
        return dataset_dict
