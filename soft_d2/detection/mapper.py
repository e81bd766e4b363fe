"""The detection mapper: the SOFT layer's DatasetMapper plus optional copy-paste augmentation
(INPUT.COPY_PASTE) between reading an image and its geometric augmentations."""
from __future__ import annotations

import copy

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..d2.mapper import SoftDatasetMapper
from .copy_paste import CopyPaste


class DetectionDatasetMapper(SoftDatasetMapper):
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

    def map(self, dataset_dict):
        if self.copy_paste is None:
            return super().map(dataset_dict)
        return self._map_with_copy_paste(dataset_dict)

    def _map_with_copy_paste(self, dataset_dict):
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
