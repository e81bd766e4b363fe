"""Training options: defaults (the release's recipe, spec §6) < YAML file < command line.

The release's YAML files and flags use both ``min-lr`` and ``min_lr`` spellings; both are accepted.
Every option can be given in a YAML file (``--config``) or on the command line (``--lr 1e-3``).
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any

import yaml

from soft_d2.utils.runtime import amp_precision, kernel_method

# name: (default, type, help). type is a callable, "bool", "list:<type>" or "json".
OPTIONS: dict[str, tuple[Any, Any, str]] = {
    # --- data
    "data": ("", str, "ImageFolder root with train/ and val/, or 'builtin:shapes[:<size>]' (generated on first use; <size>: rendered natively at that size)"),
    "num_classes": (None, int, "classes of the head (default: the number of class folders)"),
    "img_size": (224, int, "training and evaluation input size"),
    "crop_pct": (0.875, float, "evaluation centre-crop share"),
    "interpolation": ("bicubic", str, "evaluation resize interpolation"),
    "train_interpolation": ("random", str, "training resize interpolation"),
    "batch_size": (64, int, "images per process per step"),
    "val_batch_size": (None, int, "evaluation images per process (default: batch_size)"),
    "workers": (8, int, "data-loading processes per training process"),
    # --- model
    "model": ("soft_tiny", str, "variant: soft_{tiny,small,medium,large,huge} or soft_norm_*"),
    "model_kwargs": ({}, "json", "extra model constructor arguments (JSON), e.g. custom sizes"),
    "newton_maxiter": (20, int, "Newton-Schulz iterations of the landmark inverse"),
    "kernel_method": ("auto", str, "Gaussian kernels: auto (compiled where built) | compiled | torch; 'cuda' (the release's name) = compiled"),
    "drop": (0.0, float, "dropout rate (position embeddings, stage 4, head)"),
    "drop_path": (0.1, float, "residual-branch drop rate (linear over the blocks)"),
    "grad_checkpointing": (False, "bool", "recompute activations in backward to save memory"),
    # --- optimization
    "opt": ("adamw", str, "optimizer (timm name)"),
    "lr": (5e-4, float, "peak learning rate"),
    "weight_decay": (0.05, float, "weight decay (not on norms, biases, position embeddings, class token)"),
    "opt_eps": (1e-8, float, "optimizer epsilon"),
    "clip_grad": (None, float, "gradient-norm clip (none when unset)"),
    "sched": ("cosine", str, "learning-rate schedule (timm name)"),
    "min_lr": (1e-5, float, "final learning rate of the cosine"),
    "warmup_lr": (1e-6, float, "learning rate at the start of the warmup"),
    "warmup_epochs": (5, float, "linear warmup epochs (may be fractional)"),
    "cooldown_epochs": (10, int, "epochs at min_lr after the cosine (total = epochs + cooldown_epochs)"),
    "epochs": (300, int, "epochs of the cosine schedule"),
    # --- augmentation and regularization
    "aa": ("rand-m9-mstd0.5-inc1", str, "RandAugment policy ('' for none)"),
    "color_jitter": (0.4, float, "colour jitter (used when aa is '')"),
    "scale": ([0.08, 1.0], "list:float", "random-resized-crop area range"),
    "ratio": ([0.75, 4 / 3], "list:float", "random-resized-crop aspect range"),
    "hflip": (0.5, float, "horizontal flip probability"),
    "vflip": (0.0, float, "vertical flip probability"),
    "reprob": (0.25, float, "random erasing probability"),
    "remode": ("pixel", str, "random erasing mode"),
    "recount": (1, int, "random erasing count"),
    "mixup": (0.8, float, "mixup alpha (0: off)"),
    "cutmix": (1.0, float, "cutmix alpha (0: off)"),
    "mixup_prob": (1.0, float, "probability of mixup or cutmix per batch"),
    "mixup_switch_prob": (0.5, float, "probability of cutmix instead of mixup"),
    "mixup_mode": ("batch", str, "mixup per batch | pair | elem"),
    "smoothing": (0.1, float, "label smoothing"),
    # --- model EMA
    "model_ema": (True, "bool", "keep an exponential moving average of the weights"),
    "model_ema_decay": (0.99996, float, "EMA decay per optimizer step"),
    "model_ema_warmup": (False, "bool", "ramp the EMA decay up from 0 (for short runs)"),
    # --- runtime
    "device": ("auto", str, "auto | cpu | cuda"),
    "amp": ("auto", str, "auto (bfloat16 on GPUs that have it, else float16; none on CPU) | bfloat16 | float16 | none (bf16, fp16 accepted)"),
    "channels_last": ("auto", str, "auto (on GPU) | true | false"),
    "seed": (42, int, "random seed (rank r uses seed + r)"),
    "log_interval": (50, int, "steps between progress lines"),
    "output": ("output/classification", str, "folder for checkpoints and logs"),
    "resume": ("", str, "checkpoint to continue training from (same epoch, same LR)"),
    "eval": (False, "bool", "only evaluate --eval_checkpoint"),
    "eval_checkpoint": ("", str, "checkpoint to evaluate (released or ours)"),
    "eval_raw_weights": (False, "bool", "evaluate 'state_dict' instead of the EMA weights"),
    "unsafe_unpickle": (False, "bool", "UNSAFE: read --resume / --eval_checkpoint with full unpickling, which runs any "
                                       "code the file carries; only for files you trust (default: weights only)"),
    "max_steps": (None, int, "stop each epoch after this many steps (smoke tests)"),
    "tensorboard": (True, "bool", "write TensorBoard scalars (when tensorboard is installed)"),
}


class ConfigError(ValueError):
    """An option is unknown or has a bad value; the message names it and the fix."""


class Config(dict):
    """The resolved options; also readable as attributes (``cfg.lr``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _normalize_key(key: str) -> str:
    return str(key).replace("-", "_")


def _convert(name: str, value: Any) -> Any:
    kind = OPTIONS[name][1]
    if value is None:
        return None
    try:
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if kind == "json":
            value = json.loads(value) if isinstance(value, str) else value
            if not isinstance(value, dict):
                raise ValueError(f"a JSON object of keyword arguments is needed, not a {type(value).__name__}")
            return dict(value)
        if isinstance(kind, str) and kind.startswith("list:"):
            item = {"float": float, "int": int}[kind[5:]]
            return [item(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
        return kind(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"option {name!r}: cannot read {value!r} as {kind if isinstance(kind, str) else kind.__name__} "
                          f"({err})") from None


def read_yaml(path: str) -> dict[str, Any]:
    """A YAML file of overrides; unknown keys are an error listing the valid ones."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping of option: value, got {type(data).__name__}")
    out = {}
    for key, value in data.items():
        name = _normalize_key(key)
        if name not in OPTIONS:
            raise ConfigError(f"config file {path!r}: unknown option {key!r}. Valid options: {', '.join(sorted(OPTIONS))}")
        out[name] = _convert(name, value)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="SOFT ImageNet-style classification training (timm 1.x, PyTorch)",
                                     argument_default=argparse.SUPPRESS)
    parser.add_argument("-c", "--config", help="YAML file of options (keys as below, '-' or '_')")
    for name, (default, kind, text) in OPTIONS.items():
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        text = f"{text} (default: {default})"
        if kind == "bool":
            parser.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction, help=text)
        elif isinstance(kind, str) and kind.startswith("list:"):
            parser.add_argument(*flags, dest=name, nargs="+", help=text)
        else:
            parser.add_argument(*flags, dest=name, help=text)
    return parser


def resolve(config_file: str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the YAML file, then ``overrides`` (e.g. parsed command-line options)."""
    cfg = Config({name: (list(d) if isinstance(d, list) else dict(d) if isinstance(d, dict) else d)
                  for name, (d, _, _) in OPTIONS.items()})
    if config_file:
        cfg.update(read_yaml(config_file))
    for key, value in (overrides or {}).items():
        name = _normalize_key(key)
        if name not in OPTIONS:
            raise ConfigError(f"unknown option {key!r}. Valid options: {', '.join(sorted(OPTIONS))}")
        cfg[name] = _convert(name, value)
    check(cfg)
    return cfg


def parse_args(argv: list[str] | None = None) -> Config:
    args = vars(build_parser().parse_args(argv))
    config_file = args.pop("config", None)
    return resolve(config_file, args)


def check(cfg: Config) -> None:
    """Values that would only fail later (or silently do the wrong thing) fail here."""
    from soft_d2.model import check_variant

    try:
        check_variant(cfg.model, "model")
        kernel_method(cfg.kernel_method, "kernel_method")
        if cfg.amp not in ("auto", "none"):
            amp_precision(cfg.amp, "amp ('auto', 'none' or a precision)")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if str(cfg.channels_last).lower() not in ("auto", "true", "false"):
        raise ConfigError(f"channels_last must be auto, true or false, got {cfg.channels_last!r}")
    for name in ("batch_size", "epochs", "img_size", "newton_maxiter"):
        if cfg[name] < 1:
            raise ConfigError(f"{name} must be at least 1, got {cfg[name]}")
    for name in ("drop", "drop_path"):
        if not 0 <= cfg[name] < 1:
            raise ConfigError(f"{name} must be a rate in [0, 1), got {cfg[name]}")
    if cfg.eval and not cfg.eval_checkpoint:
        raise ConfigError("--eval needs --eval_checkpoint CKPT (a released checkpoint or one of ours)")
