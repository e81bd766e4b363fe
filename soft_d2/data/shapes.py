"""A deterministic, built-in instance-segmentation data set ("SOFT shapes").

Images of circles, triangles and squares (random size, rotation and colour) on cluttered
backgrounds, written once into a cache folder as COCO-format JSON + JPEG images so that
Detectron2's own COCO loader and COCOEvaluator run on it. Properties:
- 3 categories; 1-6 instances per image, drawn in order so later objects occlude earlier ones
  (an object stays at least MIN_VISIBLE visible; its annotation is its visible part);
- object sizes log-uniform over 14-180 px, covering COCO's small (<32^2), medium and large (>96^2)
  area ranges;
- cluttered backgrounds: colour gradients, lines, arcs, speckles and pixel noise;
- polygon masks traced from the visible pixels; ``area`` is the visible pixel count.
The same (split, index) always gives the same image: every image has its own seeded generator.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile

import contourpy
import numpy as np
from PIL import Image, ImageDraw

VERSION = 1
CATEGORIES = ("circle", "triangle", "square")
SPLITS = {"train": (1000, 0), "val": (100, 1)}  # split -> (number of images, seed stream)
MIN_SIDE, MAX_SIDE = 256, 352     # image height/width range
MIN_SIZE, MAX_SIZE = 14, 180      # object extent range (px), sampled log-uniformly
MIN_VISIBLE = 0.4                 # an occluded object keeps at least this share of its pixels


def _shape_polygon(category: str, cx: float, cy: float, size: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a shape whose extent (circle diameter, square side, triangle side) is ``size``."""
    if category == "circle":
        n, radius = 48, size / 2
    elif category == "triangle":
        n, radius = 3, size / math.sqrt(3)
    else:
        n, radius = 4, size / math.sqrt(2)
    return [(cx + radius * math.cos(angle + 2 * math.pi * k / n), cy + radius * math.sin(angle + 2 * math.pi * k / n))
            for k in range(n)]


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, size=3))


def _background(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    """A colour gradient covered with lines, arcs and speckles."""
    a, b = rng.uniform(0, 255, size=(2, 3))
    t = np.linspace(0, 1, w if rng.random() < 0.5 else h)
    ramp = a[None] * (1 - t[:, None]) + b[None] * t[:, None]
    img = np.broadcast_to(ramp[None], (h, w, 3)) if len(t) == w else np.broadcast_to(ramp[:, None], (h, w, 3))
    image = Image.fromarray(img.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(15, 40))):
        x0, x1 = rng.uniform(0, w, size=2)
        y0, y1 = rng.uniform(0, h, size=2)
        draw.line([(x0, y0), (x1, y1)], fill=_random_colour(rng), width=int(rng.integers(1, 4)))
    for _ in range(int(rng.integers(5, 15))):
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(10, 60)
        start = rng.uniform(0, 360)
        draw.arc([x - r, y - r, x + r, y + r], start, start + rng.uniform(60, 270), fill=_random_colour(rng),
                 width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(20, 60))):
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(1, 4)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=_random_colour(rng))
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, 8, size=(h, w, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _rasterize(polygon, h: int, w: int) -> np.ndarray:
    canvas = Image.new("L", (w, h), 0)
    ImageDraw.Draw(canvas).polygon(polygon, fill=1)
    return np.asarray(canvas, dtype=bool)


def _drop_collinear(points: np.ndarray) -> np.ndarray:
    prev, nxt = np.roll(points, 1, axis=0), np.roll(points, -1, axis=0)
    cross = (points[:, 0] - prev[:, 0]) * (nxt[:, 1] - prev[:, 1]) - (points[:, 1] - prev[:, 1]) * (nxt[:, 0] - prev[:, 0])
    return points[np.abs(cross) > 1e-6]


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer contours of a binary mask as COCO polygons (flat x, y lists in pixel-edge coordinates)."""
    padded = np.pad(mask.astype(np.float64), 1)
    lines = contourpy.contour_generator(z=padded, line_type="Separate").lines(0.5)
    polygons = []
    for line in lines:
        points = _drop_collinear(np.asarray(line)[:-1] - 1 + 0.5)  # unpad; pixel centres -> edges
        if len(points) >= 3:
            polygons.append([round(float(v), 2) for v in points.reshape(-1)])
    return polygons


def mask_annotation(mask: np.ndarray) -> dict | None:
    """COCO fields of a binary mask: polygons, XYWH box (pixel edges) and area; None if it has no polygon."""
    polygons = mask_to_polygons(mask)
    if not polygons:
        return None
    ys, xs = np.nonzero(mask)
    x0, y0 = float(xs.min()), float(ys.min())
    return {"bbox": [x0, y0, float(xs.max()) + 1 - x0, float(ys.max()) + 1 - y0], "area": float(mask.sum()),
            "segmentation": polygons}


def generate_image(split: str, index: int) -> tuple[Image.Image, list[dict]]:
    """One image and its annotations (category index, bbox, area, polygons), deterministic."""
    rng = np.random.default_rng([VERSION, SPLITS[split][1], index])
    h, w = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))
    image = _background(rng, h, w)
    draw = ImageDraw.Draw(image)
    objects: list[dict] = []  # full mask, visible mask, category
    for _ in range(int(rng.integers(1, 7))):
        for _attempt in range(20):
            category = int(rng.integers(len(CATEGORIES)))
            size = min(math.exp(rng.uniform(math.log(MIN_SIZE), math.log(MAX_SIZE))), 0.8 * min(h, w))
            cx, cy = rng.uniform(size / 2, w - size / 2), rng.uniform(size / 2, h - size / 2)
            polygon = _shape_polygon(CATEGORIES[category], cx, cy, size, rng.uniform(0, 2 * math.pi))
            full = _rasterize(polygon, h, w)
            covered_ok = all((o["visible"] & ~full).sum() >= MIN_VISIBLE * o["full"].sum() for o in objects)
            # An object entirely inside an earlier one would cut a hole into its mask: not allowed.
            no_hole = all((full & ~o["full"]).any() for o in objects)
            if covered_ok and no_hole and full.sum() > 0:
                break
        else:
            continue
        for o in objects:
            o["visible"] &= ~full
        draw.polygon(polygon, fill=_random_colour(rng), outline=_random_colour(rng) if rng.random() < 0.5 else None)
        objects.append({"full": full, "visible": full.copy(), "category": category})
    annotations = []
    for o in objects:
        annotation = mask_annotation(o["visible"])
        if annotation is not None:
            annotations.append({"category": o["category"], **annotation})
    return image, annotations


def write_split(split: str, folder: str, num_images: int | None = None) -> str:
    """Write ``split`` as COCO JSON + JPEGs into ``folder`` (atomically) and return the JSON path."""
    num_images = SPLITS[split][0] if num_images is None else num_images
    json_path = os.path.join(folder, f"{split}.json")
    if os.path.exists(json_path):
        return json_path
    os.makedirs(os.path.dirname(os.path.abspath(folder)), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}_{split}_", dir=os.path.dirname(os.path.abspath(folder)))
    images, annotations = [], []
    os.makedirs(os.path.join(tmp, split))
    for index in range(num_images):
        image, objects = generate_image(split, index)
        file_name = f"{split}/{index:06d}.jpg"
        image.save(os.path.join(tmp, file_name), quality=92)
        images.append({"id": index + 1, "file_name": file_name, "width": image.width, "height": image.height})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": obj["category"] + 1,
                                "bbox": obj["bbox"], "area": obj["area"], "segmentation": obj["segmentation"],
                                "iscrowd": 0})
    coco = {"info": {"description": f"soft-d2 built-in shapes v{VERSION}, split {split}"},
            "images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CATEGORIES)]}
    with open(os.path.join(tmp, f"{split}.json"), "w") as f:
        json.dump(coco, f)
    _publish(tmp, folder, split)
    return json_path


def _publish(tmp: str, folder: str, split: str) -> None:
    """Move a finished split into place; concurrent writers (several processes) are harmless."""
    os.makedirs(folder, exist_ok=True)
    target_images = os.path.join(folder, split)
    try:
        os.rename(os.path.join(tmp, split), target_images)
    except OSError:
        pass  # another process published the same (identical) images first
    try:
        os.rename(os.path.join(tmp, f"{split}.json"), os.path.join(folder, f"{split}.json"))
    except OSError:
        pass
    shutil.rmtree(tmp, ignore_errors=True)
