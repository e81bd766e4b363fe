#!/usr/bin/env python
"""Pretrain SOFT on ImageNet-1K (or any ImageFolder), resume, or evaluate a checkpoint.

    python classification/train.py --data /data/imagenet --config classification/configs/SOFT_Tiny_norm.yaml
    classification/dist_train.sh 8 --data /data/imagenet --config classification/configs/SOFT_Tiny_norm.yaml
    python classification/train.py --config classification/configs/quickstart_soft_norm_tiny_shapes.yaml
    python -m classification.train --data DIR --model soft_norm_tiny --eval --eval_checkpoint CKPT

The script needs the project installed (pip install --no-build-isolation -e .), which makes the
`classification` package importable; ``python -m classification.train`` also runs from the
repository root without it. The checkpoints (output/last.pth, output/best.pth) load in Detectron2
with MODEL.WEIGHTS.
"""
from __future__ import annotations

import importlib.util
import os
import sys

# Spin-waiting OpenMP threads make shared or oversubscribed CPUs many times slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Run as a script, sys.path[0] is classification/ itself: the package has to come from the install.
if importlib.util.find_spec("classification") is None:
    sys.exit("classification/train.py: the `classification` package is not importable; install the project "
             "(pip install --no-build-isolation -e . in the repository root) or run "
             "`python -m classification.train ...` from the repository root")

import json
import logging
import random
import time

import numpy as np
import timm
import torch
import torch.distributed as dist
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel

import soft_d2  # noqa: F401  (registers the SOFT variants with timm)
from soft_d2.utils.cpu_allocator import keep_freed_memory
from soft_d2.utils.runtime import amp_dtype, fused_optimizer_options, kernel_method, share_cpu_threads
from classification import checkpoint as ckpt
from classification import data as cls_data
from classification.config import Config, ConfigError, parse_args
from classification.engine import SkipCounter, all_reduce_sum, evaluate, train_one_epoch

logger = logging.getLogger("classification")


# ------------------------------------------------------------------------------------ runtime
def setup_distributed(cfg: Config) -> tuple[int, int, torch.device]:
    """(rank, world size, device) from torchrun's environment; NCCL on GPUs, GLOO on CPUs."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but PyTorch sees no GPU; use --device cpu")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if not use_cuda:
        share_cpu_threads(int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
        keep_freed_memory()
    return rank, world_size, device


def setup_logging(rank: int, output: str | None) -> None:
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False
    for handler in [h for h in logger.handlers if getattr(h, "_ours", False)]:  # from an earlier main() call
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("[%(asctime)s %(levelname)s] %(message)s", "%H:%M:%S")
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(fmt)
    stream._ours = True
    logger.addHandler(stream)
    if output and rank == 0:
        os.makedirs(output, exist_ok=True)
        file_handler = logging.FileHandler(os.path.join(output, "log.txt"))
        file_handler.setFormatter(fmt)
        file_handler._ours = True
        logger.addHandler(file_handler)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """bfloat16 where the GPU has it (no scaler needed), float16 with a scaler otherwise; the SOFT
    kernels and the Newton inverse run in fp32 under autocast regardless (soft_d2.ops)."""
    choice = cfg.amp
    if choice == "none" or (choice == "auto" and device.type != "cuda"):
        return None
    if choice == "auto":
        choice = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return amp_dtype(choice, "amp")


def use_channels_last(cfg: Config, device: torch.device) -> bool:
    # Helps the convolutional stem on GPUs (tensor cores); on CPUs it only adds conversions.
    value = str(cfg.channels_last).lower()
    return device.type == "cuda" if value == "auto" else value == "true"


def tensorboard_writer(output: str):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.info("tensorboard is not installed: no TensorBoard scalars (metrics.jsonl has the epoch metrics)")
        return None
    return SummaryWriter(os.path.join(output, "tensorboard"))


def build_model(cfg: Config, num_classes: int) -> torch.nn.Module:
    try:
        return timm.create_model(
            cfg.model, num_classes=num_classes, drop_rate=cfg.drop, drop_path_rate=cfg.drop_path,
            newton_max_iter=cfg.newton_maxiter, kernel_method=kernel_method(cfg.kernel_method, "kernel_method"),
            **cfg.model_kwargs)
    except TypeError as err:
        if "unexpected keyword argument" not in str(err):
            raise
        raise ConfigError(f"model_kwargs {cfg.model_kwargs}: {err}") from None


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    # AdamW; timm puts 1-D tensors (norms, biases) and model.no_weight_decay() (position
    # embeddings, class token) into a group without weight decay.
    return create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.opt_eps,
                               **fused_optimizer_options(cfg.opt))


# --------------------------------------------------------------------------------------- main
def run_eval(cfg: Config, model, val_set, rank, world_size, device, dtype, channels_last) -> dict:
    report = ckpt.load_weights(model, cfg.eval_checkpoint, use_ema=not cfg.eval_raw_weights,
                               unsafe_unpickle=cfg.unsafe_unpickle)
    logger.info(f"loaded {cfg.eval_checkpoint} ({'raw' if cfg.eval_raw_weights else 'EMA when present'} weights): "
                f"{len(report.loaded)} tensors")
    loader = cls_data.eval_loader(cfg, val_set, rank, world_size, device.type == "cuda")
    skips = SkipCounter()
    metrics = evaluate(model, loader, device, dtype, channels_last, skips)
    metrics["skipped_images"] = int(all_reduce_sum([skips.count], device)[0])
    logger.info(f"eval {cfg.eval_checkpoint}: top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  "
                f"({metrics['images']} images)")
    if rank == 0 and cfg.output:
        os.makedirs(cfg.output, exist_ok=True)
        with open(os.path.join(cfg.output, "eval.json"), "w") as f:
            json.dump({"checkpoint": cfg.eval_checkpoint, **metrics}, f, indent=1)
    return metrics


def main(cfg: Config) -> dict:
    rank, world_size, device = setup_distributed(cfg)
    setup_logging(rank, cfg.output)
    root = cls_data.resolve_data_root(cfg.data)
    train_set, val_set = cls_data.build_datasets(cfg, root, train=not cfg.eval)
    num_classes = cfg.num_classes or len(val_set.classes)
    if num_classes < len(val_set.classes):  # labels past the head would fail deep inside the loss
        raise ConfigError(f"num_classes {num_classes} is smaller than the {len(val_set.classes)} class folders of {root}")
    seed_all(cfg.seed)  # the same initial weights on every process
    model = build_model(cfg, num_classes).to(device)
    channels_last = use_channels_last(cfg, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    dtype = autocast_dtype(cfg, device)
    logger.info(f"{cfg.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
                f"{num_classes} classes, data {root}, {world_size} process(es) on {device.type}, "
                f"amp {dtype or 'off'}, kernel {kernel_method(cfg.kernel_method, 'kernel_method')}")
    if cfg.eval:
        return run_eval(cfg, model, val_set, rank, world_size, device, dtype, channels_last)

    pin = device.type == "cuda"
    loader = cls_data.train_loader(cfg, train_set, rank, world_size, pin)
    val_loader = cls_data.eval_loader(cfg, val_set, rank, world_size, pin)
    updates_per_epoch = len(loader) if cfg.max_steps is None else min(len(loader), cfg.max_steps)
    optimizer = build_optimizer(cfg, model)
    # Per-step schedule (warmup and cosine move every step, not every epoch).
    scheduler, total_epochs = create_scheduler_v2(
        optimizer, sched=cfg.sched, num_epochs=cfg.epochs, min_lr=cfg.min_lr, warmup_lr=cfg.warmup_lr,
        warmup_epochs=cfg.warmup_epochs, cooldown_epochs=cfg.cooldown_epochs, step_on_epochs=False,
        updates_per_epoch=updates_per_epoch)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    ema = ModelEmaV3(model, decay=cfg.model_ema_decay, use_warmup=cfg.model_ema_warmup) if cfg.model_ema else None

    start_epoch, num_updates, best = 0, 0, None
    if cfg.resume:
        state = ckpt.resume(cfg.resume, model, ema, optimizer, scheduler, scaler, unsafe_unpickle=cfg.unsafe_unpickle)
        start_epoch, num_updates, best = state["epoch"], state["num_updates"], state.get("best_metric")
        logger.info(f"resumed {cfg.resume}: {start_epoch} epochs ({num_updates} steps) done, best {best}")
    train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world_size > 1 else model

    mixup = cls_data.build_mixup(cfg, num_classes)
    if mixup is not None:
        loss_fn = SoftTargetCrossEntropy()  # mixup already smooths the (mixed) targets
    elif cfg.smoothing > 0:
        loss_fn = LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    else:
        loss_fn = torch.nn.CrossEntropyLoss()

    writer = tensorboard_writer(cfg.output) if (rank == 0 and cfg.tensorboard) else None
    skips = SkipCounter()
    history = []
    logger.info(f"training epochs {start_epoch}..{total_epochs - 1}, {updates_per_epoch} steps of "
                f"{cfg.batch_size} x {world_size} images each")
    for epoch in range(start_epoch, total_epochs):
        # Every random stream (augmentation, mixup, dropout, worker seeds) restarts from
        # (seed, rank, epoch): a resumed run replays exactly what the uninterrupted one would.
        seed_all(cfg.seed + rank + 100003 * (epoch + 1))
        loader.sampler.set_epoch(epoch)
        train_metrics, num_updates = train_one_epoch(
            train_model, loader, loss_fn, optimizer, scheduler, epoch=epoch, total_epochs=total_epochs,
            num_updates=num_updates, device=device, amp_dtype=dtype, scaler=scaler, mixup=mixup, ema=ema,
            clip_grad=cfg.clip_grad, channels_last=channels_last, skips=skips, log_interval=cfg.log_interval,
            max_steps=cfg.max_steps, world_size=world_size, writer=writer)
        val = evaluate(model, val_loader, device, dtype, channels_last, skips)
        val_ema = evaluate(ema.module, val_loader, device, dtype, channels_last, skips) if ema is not None else None
        # The release reports (and Detectron2 loads) the EMA weights: they decide "best".
        metric = (val_ema or val)["top1"]
        is_best = best is None or metric > best
        best = metric if is_best else best
        record = {"epoch": epoch, "num_updates": num_updates, "train": train_metrics, "val": val,
                  "val_ema": val_ema, "best_top1": best}
        history.append(record)
        logger.info(f"epoch {epoch}: train loss {train_metrics['loss']:.4f}, {train_metrics['images_per_s']:.1f} img/s; "
                    f"val top-1 {val['top1']:.2f}% top-5 {val['top5']:.2f}%"
                    + (f"; EMA top-1 {val_ema['top1']:.2f}% top-5 {val_ema['top5']:.2f}%" if val_ema else "")
                    + (f"; {skips.count} unreadable images skipped so far" if skips.count else ""))
        if rank == 0:
            state = ckpt.training_state(model, ema, optimizer, scheduler, scaler, epoch + 1, num_updates, cfg,
                                        metric, best)
            ckpt.save(state, cfg.output, is_best)
            with open(os.path.join(cfg.output, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
            if writer is not None:
                for name, value in (("val/top1", val["top1"]), ("val/top5", val["top5"]), ("val/loss", val["loss"]),
                                    ("train/epoch_loss", train_metrics["loss"])):
                    writer.add_scalar(name, value, epoch)
                if val_ema:
                    writer.add_scalar("val_ema/top1", val_ema["top1"], epoch)
                    writer.add_scalar("val_ema/top5", val_ema["top5"], epoch)
                writer.flush()
    if writer is not None:
        writer.close()
    if world_size > 1:
        dist.barrier()
    summary = {"history": history, "best_top1": best, "num_updates": num_updates,
               "checkpoint": os.path.join(cfg.output, ckpt.LAST), "skipped_images": skips.count}
    if history:
        summary.update(final=history[-1])
    return summary


def cli(argv: list[str] | None = None) -> dict:
    start = time.perf_counter()
    cfg = parse_args(argv)
    try:
        result = main(cfg)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    logger.info(f"done in {time.perf_counter() - start:.1f} s")
    return result


if __name__ == "__main__":
    cli()
