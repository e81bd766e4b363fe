"""Fit one training batch of a semantic-segmentation config and report, per class, the share of its
pixels predicted right: the first check when a segmenter does not learn (a model and recipe that
cannot fit a handful of crops will not learn the data set).

    python tools/fit_one_batch.py --config-file configs/quickstart/upernet_soft_norm_tiny_shapes.yaml
    python tools/fit_one_batch.py --config-file configs/quickstart/upernet_soft_norm_tiny_shapes.yaml \\
        --steps 80 -- MODEL.SEM_SEG_HEAD.CLASSIFIER_INIT_STD 0.01

The batch is SOLVER.IMS_PER_BATCH training crops (the config's mapper and augmentations, drawn
once with --seed), the optimizer the config's, at its BASE_LR without warm-up or decay (so a
short fit is not slowed by the schedule). Every --every steps: the loss and, in eval mode on the
same crops, each class's pixel accuracy.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="a SemanticSegmentor config (e.g. the UperNet quickstart)")
    parser.add_argument("--steps", type=int, default=80, help="optimizer steps on the one batch")
    parser.add_argument("--every", type=int, default=20, help="report every N steps")
    parser.add_argument("--seed", type=int, default=0, help="seeds the model init and the crops drawn")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides (after --)")
    args = parser.parse_args(argv)
    args.opts = args.opts[1:] if args.opts[:1] == ["--"] else args.opts
    return args


def class_accuracy(model, batch, num_classes: int) -> list[float]:
    """Per class: the share of its labelled pixels whose argmax is that class (nan if absent)."""
    model.eval()
    with torch.no_grad():  # images only, at their mapped size (no resize back to the originals)
        out = model([{"image": b["image"]} for b in batch])
    model.train()
    pred = torch.cat([o["sem_seg"].argmax(0).flatten() for o in out])
    label = torch.cat([b["sem_seg"].flatten() for b in batch])
    return [((pred == c) & (label == c)).sum().item() / n if (n := (label == c).sum().item()) else float("nan")
            for c in range(num_classes)]


def main(argv=None) -> None:
    args = parse_args(argv)
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.modeling import build_model
    from detectron2.utils.env import seed_all_rng

    from soft_d2.config import load_config
    from soft_d2.d2.amp import autocast_dtype
    from soft_d2.d2.solver import build_optimizer
    from soft_d2.segmentation import build_sem_seg_mapper

    cfg = load_config(args.config_file, args.opts)
    if cfg.MODEL.META_ARCHITECTURE != "SemanticSegmentor":
        raise SystemExit(f"{args.config_file}: MODEL.META_ARCHITECTURE is {cfg.MODEL.META_ARCHITECTURE}; "
                         f"this tool fits semantic-segmentation configs (SemanticSegmentor)")
    seed_all_rng(args.seed)
    name = cfg.DATASETS.TRAIN[0]
    records = DatasetCatalog.get(name)
    classes = MetadataCatalog.get(name).stuff_classes
    mapper = build_sem_seg_mapper(cfg, is_train=True)
    batch = [mapper(dict(records[i])) for i in range(min(cfg.SOLVER.IMS_PER_BATCH, len(records)))]
    model = build_model(cfg).train()
    optimizer = build_optimizer(cfg, model)
    # As train_net.py trains: SOLVER.AMP's autocast on MODEL.DEVICE, a gradient scaler for float16 only.
    device_type = torch.device(cfg.MODEL.DEVICE).type
    precision = autocast_dtype(cfg.SOLVER.AMP.PRECISION) if cfg.SOLVER.AMP.ENABLED else None
    scaler = torch.amp.GradScaler(device_type, enabled=precision == torch.float16)
    print(f"{len(batch)} crops of {name}; classes {list(classes)}")
    for step in range(1, args.steps + 1):
        with torch.autocast(device_type, dtype=precision, enabled=precision is not None):
            losses = model(batch)
        loss = sum(v.float() for v in losses.values())
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if step % args.every == 0 or step == args.steps:
            accuracy = class_accuracy(model, batch, len(classes))
            shown = "  ".join(f"{c} {100 * a:.0f}%" for c, a in zip(classes, accuracy) if not np.isnan(a))
            print(f"step {step}: loss {loss.item():.3f}; pixels right per class: {shown}", flush=True)


if __name__ == "__main__":
    main()
