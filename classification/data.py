"""Data: ImageFolder sets that survive corrupt files, timm transforms, (distributed) loaders, mixup."""
from __future__ import annotations

import logging
import os
import random
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Mixup, create_transform
from torch.utils.data import DataLoader, Sampler
from torch.utils.data.distributed import DistributedSampler
from torchvision.datasets import ImageFolder

logger = logging.getLogger("classification")

BUILTIN = "builtin:shapes"  # the 64 px set; "builtin:shapes:<size>" renders it natively at <size> px
MAX_SUBSTITUTES = 10  # consecutive unreadable files tolerated before giving up on a sample


def resolve_data_root(data: str) -> str:
    """The ImageFolder root: ``builtin:shapes[:<size>]`` generates the built-in set on first use."""
    if data == BUILTIN or data.startswith(BUILTIN + ":"):
        from soft_d2.data import shapes_classification

        size = data[len(BUILTIN) + 1:]
        if size and not (size.isdigit() and int(size) >= 16):
            raise ValueError(f"--data {data!r}: the built-in set is 'builtin:shapes' (64 px) or "
                             f"'builtin:shapes:<size>' with a size of at least 16 pixels, e.g. 'builtin:shapes:160'")
        return shapes_classification.ensure_dataset(native_size=int(size) if size else None)
    if not data:
        raise FileNotFoundError("no data set given: pass --data DIR (an ImageFolder with train/ and val/) "
                                "or --data builtin:shapes")
    for split in ("train", "val"):
        if not os.path.isdir(os.path.join(data, split)):
            raise FileNotFoundError(f"--data {data!r} has no {split}/ folder; expected {data}/train/<class>/*.jpg and "
                                    f"{data}/val/<class>/*.jpg (ImageNet's val images sorted into class folders)")
    return data


class RobustImageFolder(ImageFolder):
    """ImageFolder whose samples are (image, target, skipped files).

    A file that cannot be read or decoded is replaced by the next readable one, so a long run does
    not die mid-epoch and batches keep their size (mixup needs even batches, DDP equal ones); the
    skipped paths travel with the batch so the training loop can warn about and count them.
    """

    def _load(self, index: int) -> tuple[Any, int]:
        path, target = self.samples[index]
        with open(path, "rb") as f:
            image = Image.open(f)
            image = image.convert("RGB")  # forces the full decode inside the try of the caller
        return image, target

    def __getitem__(self, index: int):
        skipped = []
        for attempt in range(MAX_SUBSTITUTES):
            j = (index + attempt) % len(self.samples)
            try:
                image, target = self._load(j)
            except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for broken/truncated files
                skipped.append((self.samples[j][0], f"{type(err).__name__}: {err}"))
                continue
            if self.transform is not None:
                image = self.transform(image)
            return image, target, tuple(skipped)
        raise RuntimeError(f"{MAX_SUBSTITUTES} consecutive images could not be read:\n  "
                           + "\n  ".join(f"{path} ({reason})" for path, reason in skipped))


def collate(samples):
    images = torch.stack([s[0] for s in samples])
    targets = torch.tensor([s[1] for s in samples], dtype=torch.long)
    skipped = [entry for s in samples for entry in s[2]]  # (path, reason) pairs
    return images, targets, skipped


class ShardSampler(Sampler[int]):
    """Evaluation sharding without padding: rank r takes r, r + world, ... so sums over ranks are exact."""

    def __init__(self, size: int, rank: int, world_size: int):
        self.indices = list(range(rank, size, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker (base seed + id) and Python's random; numpy (used by some timm
    # augmentations) must follow the same seed or all workers draw identical numbers.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def train_transform(cfg):
    return create_transform(
        cfg.img_size, is_training=True, scale=tuple(cfg.scale), ratio=tuple(cfg.ratio), hflip=cfg.hflip,
        vflip=cfg.vflip, color_jitter=cfg.color_jitter, auto_augment=cfg.aa or None,
        interpolation=cfg.train_interpolation, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
        re_prob=cfg.reprob, re_mode=cfg.remode, re_count=cfg.recount)


def eval_transform(cfg):
    return create_transform(cfg.img_size, is_training=False, interpolation=cfg.interpolation,
                            crop_pct=cfg.crop_pct, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)


def build_datasets(cfg, root: str, train: bool = True):
    val = RobustImageFolder(os.path.join(root, "val"), transform=eval_transform(cfg))
    if not train:
        return None, val
    train_set = RobustImageFolder(os.path.join(root, "train"), transform=train_transform(cfg))
    if train_set.classes != val.classes:
        raise ValueError(f"train/ and val/ of {root!r} have different class folders: "
                         f"{len(train_set.classes)} vs {len(val.classes)} (first difference: "
                         f"{sorted(set(train_set.classes) ^ set(val.classes))[:5]})")
    return train_set, val


def train_loader(cfg, dataset, rank: int, world_size: int, pin_memory: bool) -> DataLoader:
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=cfg.seed,
                                 drop_last=True)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                        collate_fn=collate, pin_memory=pin_memory, drop_last=True, worker_init_fn=_seed_worker,
                        persistent_workers=False)
    if len(loader) == 0:
        raise ValueError(f"the training set has {len(sampler)} images per process, fewer than batch_size "
                         f"{cfg.batch_size}: lower batch_size or use fewer processes")
    return loader


def eval_loader(cfg, dataset, rank: int, world_size: int, pin_memory: bool) -> DataLoader:
    return DataLoader(dataset, batch_size=cfg.val_batch_size or cfg.batch_size,
                      sampler=ShardSampler(len(dataset), rank, world_size), num_workers=cfg.workers,
                      collate_fn=collate, pin_memory=pin_memory)


def build_mixup(cfg, num_classes: int) -> Mixup | None:
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    if cfg.batch_size % 2:
        raise ValueError(f"mixup/cutmix need an even batch_size, got {cfg.batch_size}")
    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                 switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode, label_smoothing=cfg.smoothing,
                 num_classes=num_classes)
