"""One training epoch and one evaluation pass; metrics summed over all processes."""
from __future__ import annotations

import contextlib
import logging
import math
import time

import torch
import torch.distributed as dist
from timm.utils import dispatch_clip_grad

logger = logging.getLogger("classification")


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sums over processes (identity without torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _format_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class SkipCounter:
    """Unreadable images met so far: each file is warned about by name once, and counted once."""

    def __init__(self):
        self.files: set[str] = set()

    @property
    def count(self) -> int:
        return len(self.files)

    def report(self, skipped: list[tuple[str, str]]) -> None:
        for path, reason in skipped:
            if path not in self.files:
                self.files.add(path)
                logger.warning(f"skipped unreadable image {path} ({reason}); using the next image instead "
                               f"({self.count} unreadable so far)")


def train_one_epoch(model, loader, loss_fn, optimizer, scheduler, *, epoch: int, total_epochs: int,
                    num_updates: int, device: torch.device, amp_dtype, scaler, mixup, ema, clip_grad,
                    channels_last: bool, skips: SkipCounter, log_interval: int, max_steps: int | None = None,
                    world_size: int = 1, writer=None) -> tuple[dict, int]:
    """Train one epoch; returns (metrics, num_updates). The LR is a function of num_updates only,
    so a resumed run sets exactly the LR the uninterrupted run would have."""
    model.train()
    steps = len(loader) if max_steps is None else min(len(loader), max_steps)
    loss_sum, seen, start, skipped_before = 0.0, 0, time.perf_counter(), skips.count
    window_start, window_images = start, 0
    for step, (images, targets, skipped) in enumerate(loader):
        if step >= steps:
            break
        skips.report(skipped)
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if mixup is not None:
            images, targets = mixup(images, targets)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        scheduler.step_update(num_updates)
        with autocast(device, amp_dtype):
            loss = loss_fn(model(images), targets)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch} step {step}; lower lr or enable clip_grad")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if clip_grad:
                scaler.unscale_(optimizer)
                dispatch_clip_grad(model.parameters(), clip_grad, mode="norm")
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if clip_grad:
                dispatch_clip_grad(model.parameters(), clip_grad, mode="norm")
            optimizer.step()
        num_updates += 1
        if ema is not None:
            ema.update(model, step=num_updates)
        loss_sum += loss.item() * images.shape[0]
        seen += images.shape[0]
        window_images += images.shape[0]
        if (step + 1) % log_interval == 0 or step + 1 == steps:
            now = time.perf_counter()
            rate = window_images * world_size / max(now - window_start, 1e-9)
            per_step = (now - start) / (step + 1)
            eta_epoch = per_step * (steps - step - 1)
            eta_total = eta_epoch + per_step * steps * (total_epochs - epoch - 1)
            lr = optimizer.param_groups[0]["lr"]
            logger.info(f"epoch {epoch} [{step + 1}/{steps}] loss {loss.item():.4f} (avg {loss_sum / seen:.4f}) "
                        f"lr {lr:.3e} {rate:.1f} img/s  eta epoch {_format_time(eta_epoch)} "
                        f"total {_format_time(eta_total)}")
            if writer is not None:
                writer.add_scalar("train/loss", loss.item(), num_updates)
                writer.add_scalar("train/lr", lr, num_updates)
                writer.add_scalar("train/images_per_s", rate, num_updates)
            window_start, window_images = now, 0
    elapsed = time.perf_counter() - start
    total_loss, total_seen, total_skipped = all_reduce_sum(
        [loss_sum, seen, skips.count - skipped_before], device)
    metrics = {"loss": total_loss / max(total_seen, 1), "images": int(total_seen), "seconds": elapsed,
               "images_per_s": total_seen / max(elapsed, 1e-9), "lr": optimizer.param_groups[0]["lr"],
               "skipped_images": int(total_skipped)}
    return metrics, num_updates


@torch.no_grad()
def evaluate(model, loader, device: torch.device, amp_dtype, channels_last: bool, skips: SkipCounter) -> dict:
    """Top-1 / top-5 accuracy (%) and cross-entropy over the whole (sharded) set."""
    model.eval()
    correct1 = correct5 = loss_sum = count = 0.0
    for images, targets, skipped in loader:
        skips.report(skipped)
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            logits = model(images)
        logits = logits.float()
        loss_sum += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top.eq(targets[:, None])
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=1).sum().item()
        count += targets.numel()
    correct1, correct5, loss_sum, count = all_reduce_sum([correct1, correct5, loss_sum, count], device)
    return {"top1": 100.0 * correct1 / max(count, 1), "top5": 100.0 * correct5 / max(count, 1),
            "loss": loss_sum / max(count, 1), "images": int(count)}
