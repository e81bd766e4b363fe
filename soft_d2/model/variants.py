"""The ten released variants and their timm registration (``timm.create_model("soft_tiny")``)."""
from __future__ import annotations

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .checkpoint import checkpoint_filter_fn
from .soft import SoftVisionTransformer

_SIZES = {
    # embed_dims, num_heads, depths (release's models/__init__; head dim 32 everywhere)
    "tiny": dict(embed_dims=(64, 128, 320, 512), num_heads=(2, 4, 10, 16), depths=(1, 2, 3, 2)),
    "small": dict(embed_dims=(64, 128, 320, 512), num_heads=(2, 4, 10, 16), depths=(1, 3, 20, 4)),
    "medium": dict(embed_dims=(64, 128, 288, 512), num_heads=(2, 4, 9, 16), depths=(1, 3, 29, 5)),
    "large": dict(embed_dims=(64, 128, 320, 512), num_heads=(2, 4, 10, 16), depths=(1, 3, 40, 5)),
    "huge": dict(embed_dims=(64, 128, 352, 512), num_heads=(2, 4, 11, 16), depths=(1, 5, 49, 5)),
}
_COMMON = dict(mlp_ratios=(4, 4, 4, 4), sr_ratios=(8, 4, 2, 1), v_conv_sizes=(9, 5, 3), newton_max_iter=20)
_PLAIN = dict(normalized=False, newton_numerics="regularized")
# The Norm release: symmetric normalization, halving Newton start, default init of SOFT blocks.
_NORM = dict(normalized=True, newton_numerics="halving", default_init_soft_blocks=True)

VARIANTS: dict[str, dict] = {}
for _size, _arch in _SIZES.items():
    VARIANTS[f"soft_{_size}"] = {**_COMMON, **_arch, **_PLAIN}
    VARIANTS[f"soft_norm_{_size}"] = {**_COMMON, **_arch, **_NORM}


def _cfg(**kwargs) -> dict:
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None,
        "crop_pct": 0.875, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD, "first_conv": "stages.0.downsample.conv1.conv",
        "classifier": "head", "fixed_input_size": False, "license": "apache-2.0",
        "paper_ids": "arXiv:2110.11945", **kwargs,
    }


default_cfgs = generate_default_cfgs({name: _cfg() for name in VARIANTS})


def create_soft(variant: str, pretrained: bool = False, **kwargs) -> SoftVisionTransformer:
    """Build a variant; keyword arguments override its hyper-parameters (custom sizes too)."""
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(
        SoftVisionTransformer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls="getter", out_indices=out_indices),
        **{**VARIANTS[variant], **kwargs},
    )


def _register(name: str) -> None:
    def entrypoint(pretrained: bool = False, **kwargs) -> SoftVisionTransformer:
        return create_soft(name, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = name
    entrypoint.__qualname__ = name
    entrypoint.__doc__ = f"SOFT variant {name!r}: {VARIANTS[name]}"
    entrypoint.__module__ = __name__
    globals()[name] = register_model(entrypoint)


for _name in VARIANTS:
    _register(_name)
