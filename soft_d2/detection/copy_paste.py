"""Copy-paste augmentation (Ghiasi et al., "Simple Copy-Paste", CVPR 2021) for polygon instances.

Objects of another, random training image are cut out along their masks and pasted at random
places of the image being loaded, before the geometric augmentations. The objects they cover lose
those pixels: their polygons are recomputed from what stays visible. A placement is rejected when it
would leave a covered object less than ``min_visible`` of its pixels, or fall entirely inside one
(that would cut a hole, which COCO polygons cannot describe). Every training image so carries more
objects for the same pixel cost, which is what a short from-scratch schedule runs out of first.

Only non-crowd instances with polygon masks take part. An image with crowd or RLE instances is left
as it is, because their masks could not be updated.
"""
from __future__ import annotations

import numpy as np
from detectron2.data import DatasetCatalog
from detectron2.data import detection_utils as utils
from detectron2.structures import BoxMode, polygons_to_bitmask

from ..data.shapes import mask_annotation


def _pasteable(annotation: dict) -> bool:
    segmentation = annotation.get("segmentation")
    return not annotation.get("iscrowd", 0) and isinstance(segmentation, list) and len(segmentation) > 0


def _mask(annotation: dict, height: int, width: int) -> np.ndarray:
    return polygons_to_bitmask([np.asarray(p, dtype=np.float64) for p in annotation["segmentation"]], height, width)


class CopyPaste:
    """Pastes 1..``max_objects`` objects of one random source image into each image it is called on."""

    def __init__(self, sources: list[dict], max_objects: int, image_format: str, min_visible: float = 0.4,
                 tries: int = 10):
        if max_objects < 1:
            raise ValueError(f"INPUT.COPY_PASTE.MAX_OBJECTS must be >= 1, got {max_objects}")
        if not 0.0 <= min_visible <= 1.0:
            raise ValueError(f"INPUT.COPY_PASTE.MIN_VISIBLE must be in [0, 1], got {min_visible}")
        # Keep only what pasting needs: a COCO-sized list of dicts is copied into every loader worker.
        self.sources = []
        for d in sources:
            if "sem_seg_file_name" in d:
                raise ValueError(f"INPUT.COPY_PASTE cannot update the semantic label map of {d['file_name']}: "
                                 "set INPUT.COPY_PASTE.ENABLED False for data sets with sem_seg_file_name")
            annotations = [a for a in d.get("annotations", []) if _pasteable(a)]
            if annotations:
                self.sources.append({"file_name": d["file_name"], "annotations": annotations})
        if not self.sources:
            raise ValueError("INPUT.COPY_PASTE.ENABLED needs instances with polygon masks in DATASETS.TRAIN, "
                             "and none has one: set INPUT.COPY_PASTE.ENABLED False for box-only data")
        self.max_objects = max_objects
        self.image_format = image_format
        self.min_visible = min_visible
        self.tries = tries

    @classmethod
    def from_config(cls, cfg) -> "CopyPaste":
        sources = [d for name in cfg.DATASETS.TRAIN for d in DatasetCatalog.get(name)]
        c = cfg.INPUT.COPY_PASTE
        return cls(sources, c.MAX_OBJECTS, cfg.INPUT.FORMAT, c.MIN_VISIBLE)

    def __call__(self, image: np.ndarray, annotations: list[dict], rng=np.random) -> tuple[np.ndarray, list[dict]]:
        """The pasted image (a new array) and its annotations. ``rng``: np.random (what the loader
        workers seed, as for Detectron2's own augmentations) or a np.random.RandomState."""
        if any(not _pasteable(a) for a in annotations):
            return image, annotations
        height, width = image.shape[:2]
        source = self.sources[rng.randint(len(self.sources))]
        source_image = utils.read_image(source["file_name"], format=self.image_format)
        src_h, src_w = source_image.shape[:2]
        count = rng.randint(1, self.max_objects + 1)
        chosen = [source["annotations"][i] for i in rng.permutation(len(source["annotations"]))[:count]]

        image = image.copy()
        masks = [_mask(a, height, width) for a in annotations]
        floors = [self.min_visible * m.sum() for m in masks]
        templates = list(annotations)
        changed = [False] * len(masks)
        for annotation in chosen:
            mask = _mask(annotation, src_h, src_w)
            ys, xs = np.nonzero(mask)
            if len(ys) == 0:
                continue
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            cut = mask[y0:y1, x0:x1]
            if cut.shape[0] > height or cut.shape[1] > width:
                continue
            placed = self._place(cut, masks, floors, height, width, rng)
            if placed is None:
                continue
            image[placed] = source_image[y0:y1, x0:x1][cut]
            for i, m in enumerate(masks):
                if (m & placed).any():
                    masks[i] = m & ~placed
                    changed[i] = True
            masks.append(placed)
            floors.append(self.min_visible * placed.sum())
            templates.append({"category_id": annotation["category_id"]})
            changed.append(True)

        result = []
        for template, mask, was_changed in zip(templates, masks, changed):
            if not was_changed:
                result.append(template)  # untouched: its original polygons, exactly
                continue
            fields = mask_annotation(mask)  # what stays visible, as the generator annotates it
            if fields is not None:
                result.append({**template, **fields, "bbox_mode": BoxMode.XYWH_ABS, "iscrowd": 0})
        return image, result

    def _place(self, cut: np.ndarray, masks: list[np.ndarray], floors: list[float], height: int, width: int,
               rng) -> np.ndarray | None:
        """A full-size mask of ``cut`` at a random allowed position, or None after ``tries`` refusals."""
        ch, cw = cut.shape
        for _ in range(self.tries):
            top, left = rng.randint(height - ch + 1), rng.randint(width - cw + 1)
            placed = np.zeros((height, width), dtype=bool)
            placed[top:top + ch, left:left + cw] = cut
            if all(self._keeps(m, floor, placed) for m, floor in zip(masks, floors)):
                return placed
        return None

    @staticmethod
    def _keeps(mask: np.ndarray, floor: float, placed: np.ndarray) -> bool:
        overlap = mask & placed
        if not overlap.any():
            return True
        inside = not (placed & ~mask).any()  # wholly inside the object: a hole in its mask
        return not inside and (mask.sum() - overlap.sum()) >= floor
