"""Make ADE20K's ``annotations_detectron2`` (the label files Detectron2's ADE20K loader reads).

    python -m soft_d2.segmentation.prepare_ade20k          # uses $DETECTRON2_DATASETS (default ./datasets)

ADE20K's own PNGs label "other" 0 and the 150 classes 1..150; Detectron2 (and the mIoU protocol)
use 0..149 with "other" ignored, so every label becomes label - 1 and 0 becomes 255.
Each split is written to a temporary folder and renamed into place when complete.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile

import numpy as np
from PIL import Image

from ..d2.datasets import datasets_root
from .datasets import ADE20K_FOLDER

SPLITS = ("training", "validation")


def convert_annotations(base: str, splits=SPLITS) -> int:
    """Convert ``base``/annotations/<split> into ``base``/annotations_detectron2/<split>; return the file count."""
    count = 0
    for split in splits:
        source = os.path.join(base, "annotations", split)
        target = os.path.join(base, "annotations_detectron2", split)
        if not os.path.isdir(source):
            raise FileNotFoundError(f"{source} does not exist: unzip ADEChallengeData2016.zip into {os.path.dirname(base)}")
        if os.path.isdir(target):
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{split}_", dir=os.path.dirname(target))
        for name in sorted(os.listdir(source)):
            if not name.endswith(".png"):
                continue
            labels = np.asarray(Image.open(os.path.join(source, name)), dtype=np.uint8)
            Image.fromarray(labels - np.uint8(1)).save(os.path.join(tmp, name))  # uint8: 0 - 1 wraps to 255
            count += 1
        try:
            os.rename(tmp, target)
        except OSError:  # converted by another process meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    return count


def main() -> None:
    base = os.path.join(datasets_root(), ADE20K_FOLDER)
    print(f"converted {convert_annotations(base)} label files into {os.path.join(base, 'annotations_detectron2')}")


if __name__ == "__main__":
    sys.exit(main())
