"""Mixed-precision training step for any device (Detectron2's AMPTrainer requires CUDA).

float16 uses a gradient scaler; bfloat16 has float32's range and needs none. SOFT itself keeps
its Newton inverse in float32 under autocast (see soft_d2.ops).
"""
from __future__ import annotations

import time

import torch
from detectron2.engine import SimpleTrainer

from ..utils.runtime import amp_dtype


def autocast_dtype(name: str) -> torch.dtype:
    return amp_dtype(name, "SOLVER.AMP.PRECISION")


class MixedPrecisionTrainer(SimpleTrainer):
    def __init__(self, model, data_loader, optimizer, precision: torch.dtype, device: str):
        super().__init__(model, data_loader, optimizer)
        self.precision = precision
        self.device_type = torch.device(device).type
        self.grad_scaler = torch.amp.GradScaler(self.device_type, enabled=precision == torch.float16)

    def run_step(self):
        assert self.model.training, "[MixedPrecisionTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast(self.device_type, dtype=self.precision):
            loss_dict = self.model(data)
        losses = sum(v.float() for v in loss_dict.values())
        self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        # The scaler unscales before optimizer.step(), so clipping inside step sees true gradients.
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def state_dict(self):
        return {**super().state_dict(), "grad_scaler": self.grad_scaler.state_dict()}

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
