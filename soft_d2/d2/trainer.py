"""The Detectron2 trainer every SOFT task uses: Detectron2's DefaultTrainer with SOFT's optimizer
(parameter groups, fused AdamW), its LR schedules (Detectron2's plus WarmupPolyLR), its
checkpointer (released ImageNet weights through MODEL.WEIGHTS, atomic writes), mixed precision on
any device, and DDP across CPU processes. A task subclasses it for its data and evaluation
(``build_train_loader``, ``build_test_loader``, ``build_evaluator``), as train_net.py does.
"""
from __future__ import annotations

import contextlib
import functools
import weakref

import detectron2
import torch
from detectron2.engine import DefaultTrainer
from detectron2.engine import defaults as d2_defaults
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

from .amp import MixedPrecisionTrainer, autocast_dtype
from .checkpoint import SoftDetectionCheckpointer
from .schedule import build_lr_scheduler
from .solver import build_optimizer


def wrap_distributed(model: torch.nn.Module, device: str, **ddp_options) -> torch.nn.Module:
    """DDP over all processes; CPU modules take no device_ids (Detectron2's create_ddp_model always
    passes one, which DDP refuses for CPU modules)."""
    if comm.get_world_size() == 1:
        return model
    device_ids = [comm.get_local_rank()] if torch.device(device).type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, **ddp_options)


@contextlib.contextmanager
def _soft_ddp_and_amp(cfg):
    """DefaultTrainer.__init__ wraps the model with ``create_ddp_model`` and builds the AMP step with
    ``AMPTrainer`` (CUDA and float16 only), both looked up in detectron2.engine.defaults. While it runs,
    those two names build ours: DDP that also works for CPU processes, and MixedPrecisionTrainer with
    SOLVER.AMP.PRECISION on MODEL.DEVICE. A Detectron2 without those names fails here, loudly."""
    device = cfg.MODEL.DEVICE
    ours = {"create_ddp_model": functools.partial(wrap_distributed, device=device),
            "AMPTrainer": functools.partial(MixedPrecisionTrainer, precision=autocast_dtype(cfg.SOLVER.AMP.PRECISION),
                                            device=device)}
    missing = [name for name in ours if not hasattr(d2_defaults, name)]
    if missing:
        raise RuntimeError(f"Detectron2 {detectron2.__version__} has no detectron2.engine.defaults.{missing[0]}, "
                           f"which soft_d2.d2.trainer.SoftTrainer replaces while DefaultTrainer is built: "
                           f"install the Detectron2 version of requirements.txt / tools/install.sh")
    saved = {name: getattr(d2_defaults, name) for name in ours}
    try:
        for name, factory in ours.items():
            setattr(d2_defaults, name, factory)
        yield
    finally:
        for name, original in saved.items():
            setattr(d2_defaults, name, original)


class SoftTrainer(DefaultTrainer):
    def __init__(self, cfg):
        with _soft_ddp_and_amp(cfg):
            super().__init__(cfg)
        if cfg.SOLVER.AMP.ENABLED and not isinstance(self._trainer, MixedPrecisionTrainer):
            raise RuntimeError(f"DefaultTrainer of Detectron2 {detectron2.__version__} did not build its AMP "
                               f"step with AMPTrainer: soft_d2.d2.trainer needs updating for it")

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)  # Detectron2's, plus WarmupPolyLR

    def build_hooks(self):
        # Before the hooks take the checkpointer: ours loads SOFT ImageNet checkpoints and writes atomically.
        self.checkpointer = SoftDetectionCheckpointer.from_config(self.cfg, self.model, self.cfg.OUTPUT_DIR,
                                                                  trainer=weakref.proxy(self))
        return super().build_hooks()
