"""What every task's prediction pictures share: the colour palette and the grid of pictures.

Drawn with PIL: Detectron2's Visualizer needs OpenCV, which this project does not depend on.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def colour(index: int) -> tuple[int, int, int]:
    """The palette's ``index``-th colour (repeating)."""
    return PALETTE[index % len(PALETTE)]


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
