#!/usr/bin/env python
"""Write a small COCO-format instance-segmentation data set laid out as a user's own would be:

    OUTPUT/annotations/train.json   OUTPUT/train/000001.jpg ...
    OUTPUT/annotations/val.json     OUTPUT/val/000001.jpg ...

    python tools/make_example_coco.py --output datasets/example_coco --train 40 --val 10 --size 256

Two categories, "circle" (id 3) and "triangle" (id 7): ids that are not 1..K, as in many exported
data sets (Detectron2 maps them to contiguous class indices 0..K-1). Each image holds 1-4
non-overlapping shapes on a noisy gradient; each annotation has a polygon ``segmentation``, an
XYWH ``bbox``, the polygon's ``area`` and ``iscrowd`` 0. Images are ``--size`` px on the long side
(the other side 75-100% of it, portrait or landscape). The same --seed always writes the same files.
Only numpy and Pillow are needed (no torch import): 50 images take about a second.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = [{"id": 3, "name": "circle", "supercategory": "shape"},
              {"id": 7, "name": "triangle", "supercategory": "shape"}]
SPLIT_STREAMS = {"train": 0, "val": 1}  # each split draws from its own random stream
MAX_OBJECTS = 4


def polygon_of(category: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a circle (32-gon) or an equilateral triangle inscribed in a circle of ``radius``."""
    n = 32 if category == "circle" else 3
    return [(cx + radius * math.cos(angle + 2 * math.pi * k / n), cy + radius * math.sin(angle + 2 * math.pi * k / n))
            for k in range(n)]


def polygon_area(points: list[tuple[float, float]]) -> float:
    """Shoelace formula."""
    return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]))) / 2


def background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A colour gradient with pixel noise and a few random lines (clutter the model must ignore)."""
    start, end = rng.uniform(0, 255, size=(2, 3))
    t = np.linspace(0, 1, width)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, height)[:, None, None]
    pixels = start * (1 - t) + end * t + rng.normal(0, 10, size=(height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 10))):
        x0, x1 = rng.uniform(0, width, size=2)
        y0, y1 = rng.uniform(0, height, size=2)
        draw.line([(x0, y0), (x1, y1)], fill=tuple(int(c) for c in rng.integers(0, 256, size=3)), width=2)
    return image


def make_image(seed: int, split: str, index: int, size: int) -> tuple[Image.Image, list[dict]]:
    """One image and its objects ({"category_id", "polygon"}); deterministic in (seed, split, index)."""
    rng = np.random.default_rng([seed, SPLIT_STREAMS[split], index])
    short = int(round(size * rng.uniform(0.75, 1.0)))
    width, height = (size, short) if rng.random() < 0.5 else (short, size)
    image = background(rng, width, height)
    draw = ImageDraw.Draw(image)
    placed: list[tuple[float, float, float]] = []  # (cx, cy, radius) of the shapes drawn so far
    objects = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        for _attempt in range(20):  # a free spot: no shape touches another
            radius = math.exp(rng.uniform(math.log(size / 20), math.log(size / 6)))
            cx, cy = rng.uniform(radius + 1, width - radius - 1), rng.uniform(radius + 1, height - radius - 1)
            if all(math.hypot(cx - x, cy - y) > radius + r + 2 for x, y, r in placed):
                break
        else:
            continue
        placed.append((cx, cy, radius))
        category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        polygon = polygon_of(category["name"], cx, cy, radius, rng.uniform(0, 2 * math.pi))
        draw.polygon(polygon, fill=tuple(int(c) for c in rng.integers(0, 256, size=3)))
        objects.append({"category_id": category["id"], "polygon": [(round(x, 2), round(y, 2)) for x, y in polygon]})
    return image, objects


def write_split(output: str, split: str, num_images: int, size: int, seed: int) -> str:
    """Write ``split``'s JPEGs into OUTPUT/<split>/ and its json into OUTPUT/annotations/; returns the json path."""
    image_dir = os.path.join(output, split)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        image, objects = make_image(seed, split, index, size)
        file_name = f"{index + 1:06d}.jpg"  # relative to the image folder (the image_root)
        image.save(os.path.join(image_dir, file_name), quality=90)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": image.width, "height": image.height})
        for obj in objects:
            xs, ys = [p[0] for p in obj["polygon"]], [p[1] for p in obj["polygon"]]
            x0, y0 = min(xs), min(ys)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": obj["category_id"],
                "segmentation": [[v for point in obj["polygon"] for v in point]],  # one polygon: x1, y1, x2, y2 ...
                "bbox": [round(x0, 2), round(y0, 2), round(max(xs) - x0, 2), round(max(ys) - y0, 2)],  # XYWH
                "area": round(polygon_area(obj["polygon"]), 2),
                "iscrowd": 0,
            })
    coco = {"info": {"description": f"soft-d2 example COCO data set, split {split}, seed {seed}"},
            "licenses": [], "images": images, "annotations": annotations, "categories": CATEGORIES}
    json_path = os.path.join(output, "annotations", f"{split}.json")
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(coco, f)
    return json_path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Write a small COCO-format instance-segmentation data set")
    parser.add_argument("--output", default="datasets/example_coco", help="folder to write (default: %(default)s)")
    parser.add_argument("--train", type=int, default=40, help="number of training images")
    parser.add_argument("--val", type=int, default=10, help="number of validation images")
    parser.add_argument("--size", type=int, default=256, help="long side of every image in pixels")
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes the same data set")
    parser.add_argument("--overwrite", action="store_true", help="replace the splits if OUTPUT already has them")
    args = parser.parse_args(argv)
    if args.train < 1 or args.val < 1:
        parser.error("--train and --val must be at least 1")
    if args.size < 64:
        parser.error("--size must be at least 64 (pixels)")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    existing = [p for split in SPLIT_STREAMS for p in (os.path.join(args.output, split),
                                                        os.path.join(args.output, "annotations", f"{split}.json"))
                if os.path.exists(p)]
    if existing and not args.overwrite:
        sys.exit(f"make_example_coco.py: {', '.join(existing)} already exist; pass --overwrite to replace them")
    for path in existing:  # a folder holds exactly the images of its json
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    for split, count in (("train", args.train), ("val", args.val)):
        json_path = write_split(args.output, split, count, args.size, args.seed)
        print(f"{split}: {count} images in {os.path.join(args.output, split)}, annotations {json_path}")


if __name__ == "__main__":
    main()
