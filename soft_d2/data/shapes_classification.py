"""A built-in ImageFolder classification set from the same world as the detection shapes.

Each image shows one main object of its class over the detection set's cluttered backgrounds
(``shapes._background``), with the same kind of random colour, rotation and outline, and possibly
a small partial distractor of another class cut by the border; the "background" class shows
clutter only. Pretraining on it teaches the backbone the shapes, colours-against-clutter and
objectness the detection fine-tuning needs, in minutes on a CPU.

Written once as ``<root>/soft_shapes_cls_v<VERSION>/{train,val}/<class>/<index>.jpg`` (atomically:
a temporary folder renamed into place). The same (split, index) always gives the same image.

The default set is drawn at 64 px from backgrounds rendered at their own 96-192 px and shrunk.
``native=True`` renders the whole scene at the requested size instead (background lines, arcs,
speckles and pixel noise drawn at that resolution), so a large image has real detail rather than
an upscaled one; the same (split, index) then shows the same scene at every size, up to pixel noise
(``soft_shapes_cls_v<VERSION>_native<size>``).
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile

import numpy as np
from PIL import Image, ImageDraw

from . import shapes

VERSION = 1
# The detection categories first (same names), then extra shapes, then object-free clutter.
CLASSES = ("circle", "triangle", "square", "star", "cross", "ring", "background")
SPLITS = {"train": (600, 10), "val": (60, 11)}  # split -> (images per class, seed stream)
IMAGE_SIZE = 64
# Object extent as a share of the image side: the detection objects span 14-180 px in 256-352 px
# images; here they fill more of the frame so that a 64 px image still shows the shape clearly.
MIN_EXTENT, MAX_EXTENT = 0.45, 0.9
CLUTTER_DENSITY = 0.5  # half the detection set's clutter: a quick pretraining still sees the shapes
MIN_CONTRAST = 120     # summed |RGB difference| between an object's fill and the background under it


def _star(cx, cy, radius, angle):
    inner = radius * 0.45
    return [(cx + (radius if k % 2 == 0 else inner) * math.cos(angle + math.pi * k / 5),
             cy + (radius if k % 2 == 0 else inner) * math.sin(angle + math.pi * k / 5)) for k in range(10)]


def _cross(cx, cy, size, angle):
    a, b = size / 2, size / 6  # arm half-length, arm half-width
    corners = [(b, a), (b, b), (a, b), (a, -b), (b, -b), (b, -a), (-b, -a), (-b, -b), (-a, -b), (-a, b), (-b, b), (-b, a)]
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in corners]


def _clutter(rng: np.random.Generator, side: int, density: float = 1.0, size: int | None = None,
             noise_rng: np.random.Generator | None = None) -> Image.Image:
    """A ``side``-pixel window of the detection set's backgrounds: the same gradient, lines, arcs,
    speckles and noise as ``shapes._background``, with its density per pixel (that function draws
    its counts for a whole 256-352 px image).

    ``size`` draws that window at ``size`` pixels (positions, radii and widths scaled by
    size / side, pixel noise from ``noise_rng`` at that resolution) instead of at ``side``; the
    scene's random draws from ``rng`` are the same at every size."""
    share = density * side * side / (shapes.MIN_SIDE + shapes.MAX_SIDE) ** 2 * 4  # window / mean image area
    out = side if size is None else size
    k = out / side

    def width(w: int) -> int:
        return w if size is None else max(1, round(w * k))

    a, b = rng.uniform(0, 255, size=(2, 3))
    t = np.linspace(0, 1, out)
    ramp = a[None] * (1 - t[:, None]) + b[None] * t[:, None]
    img = np.broadcast_to(ramp[None], (out, out, 3)) if rng.random() < 0.5 else np.broadcast_to(ramp[:, None], (out, out, 3))
    image = Image.fromarray(img.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.poisson(27.5 * share)):
        x0, y0, x1, y1 = rng.uniform(-side / 2, 1.5 * side, size=4) * k  # lines cross the window from outside too
        draw.line([(x0, y0), (x1, y1)], fill=shapes._random_colour(rng), width=width(int(rng.integers(1, 4))))
    for _ in range(rng.poisson(10 * share)):
        x, y, r = rng.uniform(0, side) * k, rng.uniform(0, side) * k, rng.uniform(10, 60) * k
        start = rng.uniform(0, 360)
        draw.arc([x - r, y - r, x + r, y + r], start, start + rng.uniform(60, 270), fill=shapes._random_colour(rng),
                 width=width(int(rng.integers(1, 3))))
    for _ in range(rng.poisson(40 * share)):
        x, y, r = rng.uniform(0, side) * k, rng.uniform(0, side) * k, rng.uniform(1, 4) * k
        draw.ellipse([x - r, y - r, x + r, y + r], fill=shapes._random_colour(rng))
    noise = (rng if size is None else noise_rng).normal(0, 8, size=(out, out, 3))
    noisy = np.asarray(image, dtype=np.float32) + noise
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _contrasting_colour(rng: np.random.Generator, against: np.ndarray | None) -> tuple[int, int, int]:
    for _ in range(20):
        colour = shapes._random_colour(rng)
        if against is None or np.abs(np.asarray(colour) - against).sum() >= MIN_CONTRAST:
            break
    return colour


def draw_shape(draw: ImageDraw.ImageDraw, name: str, cx: float, cy: float, size: float, angle: float,
               rng: np.random.Generator, against: np.ndarray | None = None) -> None:
    """Draw one object of class ``name`` (extent ``size`` px) with a random colour (differing from
    ``against``, the background colour under it, when given) and outline."""
    fill = _contrasting_colour(rng, against)
    outline = shapes._random_colour(rng) if rng.random() < 0.5 else None
    if name in shapes.CATEGORIES:
        draw.polygon(shapes._shape_polygon(name, cx, cy, size, angle), fill=fill, outline=outline)
    elif name == "star":
        draw.polygon(_star(cx, cy, size / 2, angle), fill=fill, outline=outline)
    elif name == "cross":
        draw.polygon(_cross(cx, cy, size, angle), fill=fill, outline=outline)
    elif name == "ring":
        r = size / 2
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(2, int(size * rng.uniform(0.12, 0.22))))
    else:
        raise ValueError(f"unknown shape class {name!r}; known: {CLASSES}")


def generate_image(split: str, index: int, size: int = IMAGE_SIZE, native: bool = False) -> tuple[Image.Image, int]:
    """Image ``index`` of ``split`` and its class index; classes take turns (index % classes).

    ``native``: the background is drawn at ``size`` (not drawn at its own size and resized)."""
    seed = [shapes.VERSION, VERSION, SPLITS[split][1], index]
    rng = np.random.default_rng(seed)
    label = index % len(CLASSES)
    # A window of the detection world: ``side`` detection pixels shown at ``size``.
    side = int(rng.integers(96, 193))
    if native:
        image = _clutter(rng, side, CLUTTER_DENSITY, size=size, noise_rng=np.random.default_rng(seed + [size]))
    else:
        image = _clutter(rng, side, CLUTTER_DENSITY).resize((size, size), Image.BILINEAR)
    draw = ImageDraw.Draw(image)
    if rng.random() < 0.3:  # a partial distractor of another shape, cut by the border
        other = CLASSES[int(rng.integers(len(CLASSES) - 1))]
        extent = rng.uniform(0.3, 0.5) * size
        edge = rng.choice([-1, 1], size=2) * size * 0.55 + size / 2
        draw_shape(draw, other, float(edge[0]), float(edge[1]), extent, rng.uniform(0, 2 * math.pi), rng)
    name = CLASSES[label]
    if name != "background":
        extent = rng.uniform(MIN_EXTENT, MAX_EXTENT) * size
        margin = extent / 2
        cx, cy = rng.uniform(margin, size - margin, size=2) if extent < size else (size / 2, size / 2)
        r = int(extent / 2)
        under = np.asarray(image)[max(0, int(cy) - r):int(cy) + r + 1, max(0, int(cx) - r):int(cx) + r + 1]
        draw_shape(draw, name, float(cx), float(cy), extent, rng.uniform(0, 2 * math.pi), rng,
                   against=under.reshape(-1, 3).mean(axis=0))
    return image, label


def dataset_folder(root: str | None = None, native_size: int | None = None) -> str:
    root = os.path.expanduser(root or os.environ.get("DETECTRON2_DATASETS", "datasets"))
    suffix = "" if native_size is None else f"_native{native_size}"
    return os.path.join(root, f"soft_shapes_cls_v{VERSION}{suffix}")


def ensure_dataset(root: str | None = None, per_class: dict[str, int] | None = None,
                   native_size: int | None = None, splits: tuple[str, ...] = tuple(SPLITS)) -> str:
    """The ImageFolder root (with the ``splits`` folders), generated on first use; returns its path.

    ``per_class`` overrides the images per class of each split (small sets for tests);
    ``native_size`` renders the set natively at that many pixels (default: the 64 px set).
    """
    if native_size is not None and native_size < 16:
        raise ValueError(f"native_size must be at least 16 pixels, got {native_size}")
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; the set has {tuple(SPLITS)}")
    folder = dataset_folder(root, native_size)
    missing = [split for split in splits if not os.path.isdir(os.path.join(folder, split))]
    if not missing:
        return folder
    os.makedirs(folder, exist_ok=True)
    for split in missing:
        # Each split is written into a temporary folder and renamed into place, so a crash never
        # leaves a half-written split that a later call would take as complete.
        tmp = tempfile.mkdtemp(prefix=f".{split}_", dir=folder)
        try:
            count = (per_class or {}).get(split, SPLITS[split][0])
            for name in CLASSES:
                os.makedirs(os.path.join(tmp, name))
            for index in range(count * len(CLASSES)):
                if native_size is None:
                    image, label = generate_image(split, index)
                else:
                    image, label = generate_image(split, index, native_size, native=True)
                image.save(os.path.join(tmp, CLASSES[label], f"{index:06d}.jpg"), quality=92)
            try:
                os.rename(tmp, os.path.join(folder, split))
            except OSError:
                if not os.path.isdir(os.path.join(folder, split)):  # anything but "another process published it first"
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
