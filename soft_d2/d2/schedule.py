"""Learning-rate schedules: Detectron2's, plus "WarmupPolyLR" (the poly decay of segmentation recipes)."""
from __future__ import annotations

from detectron2.solver import build_lr_scheduler as build_detectron2_lr_scheduler
from detectron2.solver.lr_scheduler import LRMultiplier, WarmupParamScheduler
from fvcore.common.param_scheduler import PolynomialDecayParamScheduler


def build_lr_scheduler(cfg, optimizer):
    """WarmupPolyLR: linear warm-up (WARMUP_ITERS from WARMUP_FACTOR) onto lr * (1 - it / MAX_ITER) ** POLY_LR_POWER,
    which ends at 0; every other SOLVER.LR_SCHEDULER_NAME goes to Detectron2."""
    solver = cfg.SOLVER
    if solver.LR_SCHEDULER_NAME != "WarmupPolyLR":
        return build_detectron2_lr_scheduler(cfg, optimizer)
    poly = PolynomialDecayParamScheduler(1.0, solver.POLY_LR_POWER)
    schedule = WarmupParamScheduler(poly, solver.WARMUP_FACTOR, min(solver.WARMUP_ITERS / solver.MAX_ITER, 1.0),
                                    solver.WARMUP_METHOD)
    return LRMultiplier(optimizer, multiplier=schedule, max_iter=solver.MAX_ITER)
