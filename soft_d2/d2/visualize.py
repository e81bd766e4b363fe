"""What every task's prediction pictures share: the colour palette, class names, the RGB order,
captions and the grid of pictures.

Drawn with PIL: Detectron2's Visualizer needs OpenCV, which this project does not depend on.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]
CAPTION_HEIGHT = 14  # pixels of the strip above a captioned picture


def colour(index: int) -> tuple[int, int, int]:
    """The palette's ``index``-th colour (repeating)."""
    return PALETTE[index % len(PALETTE)]


def class_name(class_names: list[str], cls: int) -> str:
    """The name of class ``cls``, or its number where ``class_names`` has none."""
    return class_names[cls] if 0 <= cls < len(class_names) else str(cls)


def to_rgb(image: np.ndarray, image_format: str) -> np.ndarray:
    """An image read in ``image_format`` (INPUT.FORMAT) as RGB."""
    return image[:, :, ::-1] if image_format == "BGR" else image


def captioned(picture: np.ndarray, text: str) -> np.ndarray:
    """``picture`` below a black strip of CAPTION_HEIGHT pixels with ``text`` in white."""
    strip = Image.new("RGB", (picture.shape[1], CAPTION_HEIGHT))
    ImageDraw.Draw(strip).text((3, 0), text, fill=(255, 255, 255))
    return np.concatenate([np.asarray(strip), picture.astype(np.uint8)], axis=0)


def tile(pictures: list[np.ndarray], columns: int = 4) -> Image.Image:
    """Pictures in a grid (rows of ``columns``), on a black canvas."""
    rows = [pictures[i:i + columns] for i in range(0, len(pictures), columns)]
    cell_h = max(p.shape[0] for p in pictures)
    cell_w = max(p.shape[1] for p in pictures)
    canvas = Image.new("RGB", (cell_w * min(columns, len(pictures)), cell_h * len(rows)))
    for r, row in enumerate(rows):
        for c, picture in enumerate(row):
            canvas.paste(Image.fromarray(picture), (c * cell_w, r * cell_h))
    return canvas
