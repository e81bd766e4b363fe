"""Data augmentation of semantic segmentation and the mapper that applies it.

Training (the common UperNet recipe, in this order): random resize by a ratio of a base scale,
random crop (redrawn while one class fills most of it), horizontal flip, photometric distortion.
Test: resize to a short side (single scale). Labels use nearest-neighbour resizing and keep 255
(ignore) where they had it; the model pads images and labels (with the ignore value) to stride 32.
"""
from __future__ import annotations

import numpy as np
from detectron2.data import transforms as T
from PIL import Image

from ..d2.mapper import SoftDatasetMapper


class RandomRatioResize(T.Augmentation):
    """Scale an image (aspect kept) to fit in (long_side * r, short_side * r), r ~ U(ratio_range)."""

    def __init__(self, long_side: int, short_side: int, ratio_range: tuple[float, float]):
        super().__init__()
        lo, hi = ratio_range
        if not 0 < lo <= hi or short_side <= 0 or long_side < short_side:
            raise ValueError(f"INPUT.SEG_RESIZE: need 0 < RATIO_RANGE[0] <= RATIO_RANGE[1] and LONG_SIDE >= SHORT_SIDE > 0, "
                             f"got RATIO_RANGE {tuple(ratio_range)}, LONG_SIDE {long_side}, SHORT_SIDE {short_side}")
        self._init(locals())

    def get_transform(self, image):
        h, w = image.shape[:2]
        r = np.random.uniform(*self.ratio_range)
        scale = min(self.long_side * r / max(h, w), self.short_side * r / min(h, w))
        new_h, new_w = max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))
        return T.ResizeTransform(h, w, new_h, new_w, Image.BILINEAR)


def _clip(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0, 255)


def _saturation_hue(img: np.ndarray, saturation: float | None, hue_degrees: float | None) -> np.ndarray:
    hsv = np.asarray(Image.fromarray(img.astype(np.uint8)).convert("HSV")).astype(np.float32)
    if saturation is not None:
        hsv[..., 1] = _clip(hsv[..., 1] * saturation)
    if hue_degrees is not None:  # PIL's hue runs over 0-255 for a full turn
        hsv[..., 0] = np.mod(hsv[..., 0] + hue_degrees * 256.0 / 360.0, 256.0)
    rgb = Image.fromarray(hsv.round().clip(0, 255).astype(np.uint8), mode="HSV").convert("RGB")
    return np.asarray(rgb).astype(np.float32)


class PhotometricDistortion(T.Augmentation):
    """Each with probability 1/2: brightness shift, contrast scale (before or after the colour
    steps, at random), saturation scale, hue rotation. Expects RGB uint8 images."""

    def __init__(self, brightness: float = 32, contrast: tuple[float, float] = (0.5, 1.5),
                 saturation: tuple[float, float] = (0.5, 1.5), hue_degrees: float = 36):
        super().__init__()
        self._init(locals())

    def _maybe(self, draw):
        return draw() if np.random.rand() < 0.5 else None

    def get_transform(self, image):
        shift = self._maybe(lambda: np.random.uniform(-self.brightness, self.brightness))
        contrast_first = np.random.rand() < 0.5
        contrast = self._maybe(lambda: np.random.uniform(*self.contrast))
        saturation = self._maybe(lambda: np.random.uniform(*self.saturation))
        hue = self._maybe(lambda: np.random.uniform(-self.hue_degrees, self.hue_degrees))

        def distort(img: np.ndarray) -> np.ndarray:
            dtype = img.dtype
            out = img.astype(np.float32)
            if shift is not None:
                out = _clip(out + shift)
            if contrast is not None and contrast_first:
                out = _clip(out * contrast)
            if saturation is not None or hue is not None:
                out = _saturation_hue(out, saturation, hue)
            if contrast is not None and not contrast_first:
                out = _clip(out * contrast)
            return out.round().astype(dtype) if dtype == np.uint8 else out.astype(dtype)

        return T.ColorTransform(distort)


def build_sem_seg_augmentations(cfg, is_train: bool) -> list[T.Augmentation]:
    inp = cfg.INPUT
    if not is_train:
        return [T.ResizeShortestEdge(inp.MIN_SIZE_TEST, inp.MAX_SIZE_TEST)] if inp.MIN_SIZE_TEST > 0 else []
    if inp.SEG_RESIZE.ENABLED:
        augs = [RandomRatioResize(inp.SEG_RESIZE.LONG_SIDE, inp.SEG_RESIZE.SHORT_SIDE, tuple(inp.SEG_RESIZE.RATIO_RANGE))]
    else:
        augs = [T.ResizeShortestEdge(inp.MIN_SIZE_TRAIN, inp.MAX_SIZE_TRAIN, inp.MIN_SIZE_TRAIN_SAMPLING)]
    if inp.CROP.ENABLED:
        if inp.CROP.TYPE != "absolute":
            raise ValueError(f"semantic segmentation crops are INPUT.CROP.TYPE 'absolute' (pixels), got {inp.CROP.TYPE!r}")
        augs.append(T.RandomCrop_CategoryAreaConstraint("absolute", tuple(inp.CROP.SIZE),
                                                        inp.CROP.SINGLE_CATEGORY_MAX_AREA,
                                                        cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE))
    if inp.RANDOM_FLIP != "none":
        augs.append(T.RandomFlip(horizontal=inp.RANDOM_FLIP == "horizontal", vertical=inp.RANDOM_FLIP == "vertical"))
    if inp.PHOTOMETRIC_DISTORTION:
        if inp.FORMAT != "RGB":
            raise ValueError(f"INPUT.PHOTOMETRIC_DISTORTION works on RGB images; INPUT.FORMAT is {inp.FORMAT!r}")
        augs.append(PhotometricDistortion())
    return augs


def build_sem_seg_mapper(cfg, is_train: bool) -> SoftDatasetMapper:
    """Detectron2's DatasetMapper (reads 'sem_seg_file_name' into 'sem_seg') with our augmentations."""
    copy_paste = cfg.INPUT.get("COPY_PASTE")  # a detection key: absent unless the detection keys are added
    if is_train and copy_paste is not None and copy_paste.ENABLED:
        raise ValueError("INPUT.COPY_PASTE pastes instances and cannot update semantic label maps: "
                         "set INPUT.COPY_PASTE.ENABLED False for semantic segmentation configs")
    return SoftDatasetMapper(is_train=is_train, augmentations=build_sem_seg_augmentations(cfg, is_train),
                             image_format=cfg.INPUT.FORMAT)
