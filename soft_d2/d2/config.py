"""Config keys of the SOFT Detectron2 layer: ``add_soft_config(cfg)``.

``MODEL.SOFT`` describes the backbone; the SOLVER and TEST additions are read by the task-neutral
trainer (soft_d2/d2/trainer.py). Each task adds its own keys (soft_d2.detection.add_detection_config,
soft_d2.segmentation.add_segmentation_config); ``soft_d2.config.compose_config`` adds them all.
Every model key is turned into a constructor argument in one place, ``soft_model_kwargs``, so a new
model option is one key here plus one row in ``_CONSTRUCTOR_KEYS``.
"""
from __future__ import annotations

from detectron2.config import CfgNode as CN

from ..model.soft import is_landmark_bound
from ..utils.runtime import kernel_method

# MODEL.SOFT.MAX_LANDMARKS default: every Detectron2 config runs at detection size, where the release's
# landmark count grows with the image (~1050 at 800x1344). At 224 every stage has 7 x 7 = 49 landmarks,
# so ImageNet weights see the function they were trained with. Chosen from accuracy and cost on trained
# weights (docs/BENCHMARKS.md, "The landmark bound on trained weights").
DEFAULT_MAX_LANDMARKS = 100

# MODEL.SOFT key -> SoftVisionTransformer constructor argument. Empty values ("" / []) keep the
# variant's own setting, so a config only spells out what it changes.
_CONSTRUCTOR_KEYS = {
    "DROP_PATH_RATE": "drop_path_rate",
    "DROP_RATE": "drop_rate",
    "SOFT_BLOCK_DROP": "soft_block_drop",
    "NEWTON_MAX_ITER": "newton_max_iter",
    "NEWTON_NUMERICS": "newton_numerics",
    "KERNEL_METHOD": "kernel_method",
    "SR_RATIOS": "sr_ratios",
    "EMBED_DIMS": "embed_dims",
    "NUM_HEADS": "num_heads",
    "DEPTHS": "depths",
    "MAX_LANDMARKS": "max_landmarks",
}


def add_soft_config(cfg: CN) -> CN:
    """Add the MODEL.SOFT node and the solver/test keys of the SOFT trainer to a Detectron2 config."""
    cfg.MODEL.SOFT = CN()
    s = cfg.MODEL.SOFT
    s.VARIANT = "soft_norm_tiny"        # one of soft_d2.VARIANTS (soft_tiny ... soft_norm_huge)
    s.OUT_FEATURES = ["res2", "res3", "res4", "res5"]  # stage maps returned, strides 4/8/16/32
    s.DROP_PATH_RATE = 0.1              # residual drop rate, linear over all blocks (release: 0.1)
    s.DROP_RATE = 0.0                   # dropout after position embeddings and in stage-4 blocks
    s.SOFT_BLOCK_DROP = ""              # "dropout" (release) or "drop_path" in SOFT blocks; "" = variant's
    s.NEWTON_MAX_ITER = 20              # Newton-Schulz steps of the inverse (20 in every release)
    s.NEWTON_NUMERICS = ""              # "regularized" (plain) / "halving" (Norm); "" = variant's
    s.KERNEL_METHOD = "auto"            # Gaussian kernel: "auto" | "compiled" | "torch" ("cuda" = compiled)
    s.MAX_LANDMARKS = DEFAULT_MAX_LANDMARKS  # landmark bound of every SOFT block (int); 0 = unbounded (release)
    s.SR_RATIOS = []                    # landmark strides per stage, [] = variant's (8, 4, 2, 1); changes landmark conv shapes
    s.EMBED_DIMS = []                   # channels per stage, [] = variant's (a custom width drops pretrained weights)
    s.NUM_HEADS = []                    # heads per stage, [] = variant's
    s.DEPTHS = []                       # blocks per stage, [] = variant's
    s.STEM_NORM = "BN"                  # norm of the patch-embedding convs: "BN" | "FrozenBN" | "SyncBN"
    s.GRAD_CHECKPOINT = False           # activation checkpointing per block (memory for compute)
    s.USE_EMA = True                    # released checkpoints: load 'state_dict_ema' when present
    s.ALLOW_PARTIAL_WEIGHTS = False     # MODEL.WEIGHTS must fill every backbone tensor; True loads what fits (on purpose)
    s.UNSAFE_UNPICKLE = False           # True: read MODEL.WEIGHTS / resumed checkpoints with full unpickling,
                                        # which runs any code in the file (UNSAFE: only for files you trust)

    cfg.SOLVER.OPTIMIZER = "ADAMW"      # "ADAMW" or "SGD"
    cfg.SOLVER.BETAS = (0.9, 0.999)     # AdamW betas
    cfg.SOLVER.EPS = 1e-8               # AdamW epsilon
    cfg.SOLVER.BACKBONE_MULTIPLIER = 1.0  # lr of backbone (bottom-up SOFT) parameters = BASE_LR * this
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0   # weight decay of position embeddings and the class token
    # (SOLVER.WEIGHT_DECAY_NORM, Detectron2's own key, covers every norm layer; set 0.0 in our configs)
    # SOLVER.CLIP_GRADIENTS.CLIP_TYPE additionally accepts "full_model": one norm over all parameters.
    cfg.SOLVER.POLY_LR_POWER = 1.0      # SOLVER.LR_SCHEDULER_NAME "WarmupPolyLR": lr * (1 - it / MAX_ITER) ** power
    cfg.SOLVER.AMP.PRECISION = "float16"  # autocast dtype when SOLVER.AMP.ENABLED: "float16" | "bfloat16" (fp16 / bf16)

    cfg.TEST.VIS_IMAGES = 0             # after final evaluation, draw this many test images: prediction | ground truth
    cfg.TEST.VIS_THRESHOLD = 0.5        # score threshold of the drawn predictions (instances)
    return cfg


def soft_model_kwargs(cfg: CN) -> dict:
    """Constructor overrides for ``create_soft`` from MODEL.SOFT (empty values are left out)."""
    kwargs = {}
    for key, arg in _CONSTRUCTOR_KEYS.items():
        value = cfg.MODEL.SOFT[key]
        if value == "" or (isinstance(value, (list, tuple)) and len(value) == 0):
            continue
        kwargs[arg] = tuple(value) if isinstance(value, (list, tuple)) else value
    s = cfg.MODEL.SOFT
    if isinstance(s.NEWTON_MAX_ITER, bool) or not isinstance(s.NEWTON_MAX_ITER, int) or s.NEWTON_MAX_ITER < 1:
        # 0 steps would leave the landmark inverse at its starting guess
        raise ValueError(f"MODEL.SOFT.NEWTON_MAX_ITER must be an int of at least 1 (the releases use 20), "
                         f"got {s.NEWTON_MAX_ITER!r}")
    for key in ("DROP_PATH_RATE", "DROP_RATE"):
        if isinstance(s[key], bool) or not isinstance(s[key], (int, float)) or not 0 <= s[key] < 1:
            raise ValueError(f"MODEL.SOFT.{key} must be a rate in [0, 1), got {s[key]!r}")
    bound = cfg.MODEL.SOFT.MAX_LANDMARKS
    if bound is None or not is_landmark_bound(bound):
        raise ValueError(f"MODEL.SOFT.MAX_LANDMARKS must be a non-negative int (landmarks per SOFT block; 0 = "
                         f"unbounded, the release's function), got {bound!r}")
    kwargs["max_landmarks"] = bound or None  # 0: the release's unbounded landmark count
    if "kernel_method" in kwargs:
        kwargs["kernel_method"] = kernel_method(kwargs["kernel_method"], "MODEL.SOFT.KERNEL_METHOD")
    return kwargs
