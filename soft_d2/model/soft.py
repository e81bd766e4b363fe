"""SoftVisionTransformer: the SOFT / SOFT-Norm pyramid (spec §1-5) as a plain nn.Module, and the
ten released variants' timm entrypoints (``timm.create_model("soft_tiny")``,
``timm.list_models(module="soft")``).

Stages 1-3 use softmax-free SOFT blocks, stage 4 softmax blocks with a class token. The feature
maps after the four stages have strides 4, 8, 16, 32 (detection's res2..res5).
"""
from __future__ import annotations

import math
import numbers
from typing import Sequence

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
import torch
from torch import Tensor, nn

from .blocks import SoftBlock, SoftmaxBlock
from .checkpoint import checkpoint_filter_fn
from .stages import ConvBnRelu, ConvStem, SoftmaxStage, SoftStage, join_class_token, map_to_tokens, tokens_to_map
from .variants import VARIANTS, check_variant

NUM_STAGES = 4


def _grid_after_stride(size: int, stride: int) -> int:
    """Grid side after the stride-2 convolutions (each rounds up)."""
    for _ in range(int(math.log2(stride))):
        size = (size + 1) // 2
    return size


def _trunc_normal_init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


GLOBAL_POOLS = ("token", "avg", "")


def _check_pool(global_pool: str) -> None:
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"global_pool must be 'token' (class token), 'avg' (mean of the patch tokens) or '' "
                         f"(none), got {global_pool!r}")


def is_landmark_bound(value) -> bool:
    """None, or an integer >= 0 (not a bool, not a float: 100.0 is refused rather than truncated)."""
    return value is None or (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0)


class SoftVisionTransformer(nn.Module):
    """SOFT backbone and classifier.

    Args:
        img_size: input size the position embeddings are stored for (they are resized to any
            other input).
        embed_dims, num_heads, depths, sr_ratios: per stage. ``sr_ratios[:3]`` are the landmark
            strides; stage 4 has no spatial reduction, so ``sr_ratios[3]`` must be 1.
        mlp_ratios: MLP hidden size / dim per stage. The release's constructor took [8, 8, 4, 4]
            but its SOFT blocks ignore the first three and use 4; our variants say (4, 4, 4, 4),
            which builds the identical network, and honour any override in every stage.
        v_conv_sizes: depthwise kernel of the V convolution in stages 1-3.
        normalized: SOFT-Norm's symmetric normalization of the inverse (spec §5).
        newton_numerics: "regularized" (plain SOFT release) or "halving" (SOFT-Norm and 2021).
        newton_max_iter: Newton-Schulz steps (20 in every release).
        kernel_method: "auto" | "compiled" | "torch", the Gaussian-kernel implementation.
        max_landmarks: bounded-landmark mode for large inputs: at most this many landmarks per
            SOFT block (one int, or a list of one per stage 1-3); None or 0 is the release's
            unbounded m = floor(H/s) floor(W/s). Where m is at most the bound the function is
            exactly the release's (bit for bit).
        drop_rate: dropout after the position embeddings and inside stage-4 blocks.
        drop_path_rate: residual drop rates, linear over all blocks; in SOFT blocks it is the
            release's elementwise Dropout (``soft_block_drop="dropout"``) or "drop_path".
        default_init_soft_blocks: keep PyTorch's default Linear init in stages 1-3 (the released
            SOFT-Norm quirk; training only).
        global_pool: what the head sees: "token" (the class token, the release's), "avg" (mean of
            the patch tokens) or "" (every token).
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        num_heads: Sequence[int] = (2, 4, 10, 16),
        depths: Sequence[int] = (1, 2, 3, 2),
        mlp_ratios: Sequence[float] = (4, 4, 4, 4),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        v_conv_sizes: Sequence[int] = (9, 5, 3),
        stem_width: int = 32,
        qkv_bias: bool = True,
        normalized: bool = False,
        newton_numerics: str = "regularized",
        newton_max_iter: int = 20,
        kernel_method: str = "auto",
        max_landmarks: int | Sequence[int | None] | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        soft_block_drop: str = "dropout",
        default_init_soft_blocks: bool = False,
        global_pool: str = "token",
    ):
        super().__init__()
        for name, value, n in (("embed_dims", embed_dims, 4), ("num_heads", num_heads, 4), ("depths", depths, 4),
                               ("mlp_ratios", mlp_ratios, 4), ("sr_ratios", sr_ratios, 4),
                               ("v_conv_sizes", v_conv_sizes, 3)):
            if len(value) != n:
                raise ValueError(f"{name} needs {n} entries (one per stage), got {list(value)}")
        if sr_ratios[3] != 1:
            raise ValueError(f"sr_ratios[3] must be 1: stage 4 is softmax attention without reduction, got {sr_ratios[3]}")
        _check_pool(global_pool)
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.embed_dims = list(embed_dims)
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        total = sum(depths)
        # Linear 0..rate over all blocks, in float64 (timm's calculate_drop_path_rates takes a
        # float32 linspace, which differs from these in the last digits).
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        attention_options = dict(normalized=normalized, newton_numerics=newton_numerics,
                                 newton_max_iter=newton_max_iter, kernel_method=kernel_method)
        stages, in_chs, stride, first = [], in_chans, 4, 0
        self.feature_info = []
        for i in range(NUM_STAGES):
            dim = embed_dims[i]
            downsample = ConvStem(in_chs, dim, stem_width) if i == 0 else ConvBnRelu(in_chs, dim, stride=2)
            grid = (_grid_after_stride(img_size[0], stride), _grid_after_stride(img_size[1], stride))
            block_rates = rates[first:first + depths[i]]
            if i < NUM_STAGES - 1:
                blocks = [SoftBlock(dim, num_heads[i], mlp_ratios[i], sr_ratios[i], v_conv_sizes[i], drop=r,
                                    soft_block_drop=soft_block_drop, **attention_options) for r in block_rates]
                stages.append(SoftStage(downsample, dim, grid, blocks, pos_drop=drop_rate))
            else:
                blocks = [SoftmaxBlock(dim, num_heads[i], mlp_ratios[i], qkv_bias=qkv_bias, drop=drop_rate,
                                       drop_path=r) for r in block_rates]
                stages.append(SoftmaxStage(downsample, dim, grid, blocks, pos_drop=drop_rate))
            self.feature_info.append(dict(num_chs=dim, reduction=stride, module=f"stages.{i}"))
            in_chs, stride, first = dim, stride * 2, first + depths[i]
        self.stages = nn.ModuleList(stages)
        self.norm = nn.LayerNorm(embed_dims[-1], eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.set_max_landmarks(max_landmarks)
        self.init_weights(default_init_soft_blocks)

    # ----------------------------------------------------------------------------------- init
    def init_weights(self, default_init_soft_blocks: bool = False) -> None:
        for stage in self.stages:
            nn.init.trunc_normal_(stage.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.stages[-1].cls_token, std=0.02)
        self.apply(_trunc_normal_init)
        if default_init_soft_blocks:
            for stage in self.stages[:-1]:
                for m in stage.blocks.modules():
                    if isinstance(m, (nn.Linear, nn.LayerNorm)):
                        m.reset_parameters()

    @property
    def has_class_token(self) -> bool:
        """False once prune_intermediate_layers removed stage 4 (which holds the class token)."""
        return isinstance(self.stages[-1], SoftmaxStage)

    def no_weight_decay(self) -> set[str]:
        """Parameters that take no weight decay (besides norms and biases, which timm skips)."""
        names = {f"stages.{i}.pos_embed" for i in range(len(self.stages))}
        return names | ({f"stages.{len(self.stages) - 1}.cls_token"} if self.has_class_token else set())

    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^stages\.0\.downsample", blocks=r"^stages\.(\d+)" if coarse else [
            (r"^stages\.(\d+)\.blocks\.(\d+)", None), (r"^stages\.(\d+)\.(downsample|pos_embed|cls_token)", (0,)),
            (r"^norm", (99999,))])

    def set_max_landmarks(self, max_landmarks: int | Sequence[int | None] | None) -> None:
        """Set the bounded-landmark mode: one bound for every SOFT stage, or a list of one per
        stage 1-3; None or 0 (alone or as a list entry) is the release's unbounded count."""
        per_stage = isinstance(max_landmarks, (list, tuple))
        bounds = list(max_landmarks) if per_stage else [max_landmarks] * (NUM_STAGES - 1)
        if len(bounds) != NUM_STAGES - 1 or not all(is_landmark_bound(b) for b in bounds):
            raise ValueError(
                f"max_landmarks must be a non-negative int (0 or None: unbounded), alone or a list of one per "
                f"SOFT stage ({NUM_STAGES - 1}), e.g. 100 or [100, 100, 0]; got {max_landmarks!r}")
        bounds = [int(b) if b else None for b in bounds]
        for stage, bound in zip(self.stages[:NUM_STAGES - 1], bounds):
            for blk in stage.blocks:
                if blk.attn.landmarks is not None:
                    blk.attn.landmarks.max_landmarks = bound
        self.max_landmarks = bounds

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is None and num_classes > 0 and not self.has_class_token and self.global_pool != "avg":
            global_pool = "avg"  # a pruned model's output is a map: the only pooling a head can take
        if global_pool is not None:
            _check_pool(global_pool)
            if global_pool == "token" and not self.has_class_token:
                raise ValueError(f"global_pool='token' needs the class token of stage 4, which this model no longer "
                                 f"has (pruned to {len(self.stages)} stages); use global_pool='avg'")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    # -------------------------------------------------------------------------------- forward
    def check_input(self, x: Tensor) -> None:
        """Clear errors for wrong images. Under FX symbolic tracing the input is a Proxy without a
        shape to check, so nothing is checked; torch.compile and torch.export trace the checks."""
        if isinstance(x, torch.fx.Proxy):
            return
        if not isinstance(x, Tensor):
            raise ValueError(f"SOFT expects an image tensor [B, {self.in_chans}, H, W], got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"SOFT expects a 4-D image batch [B, {self.in_chans}, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"SOFT was built for {self.in_chans} input channels (in_chans), got {x.shape[1]} in shape "
                f"{tuple(x.shape)}; convert the images or build the model with in_chans={x.shape[1]}")
        if x.shape[0] == 0:
            raise ValueError(f"SOFT got an empty batch (shape {tuple(x.shape)}); pass at least one image")
        if not x.is_floating_point():
            raise ValueError(f"SOFT expects a floating-point image tensor, got {x.dtype}; convert with .float()")

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """timm's interface: the stage maps (NCHW, strides 4-32) picked by ``indices``.

        Stage 4's map is its tokens without the class token, before the final norm (``norm=True``
        applies the final norm to it). Returns (final normed tokens, maps) unless
        ``intermediates_only``.
        """
        from timm.models._features import feature_take_indices

        if output_fmt != "NCHW":
            raise ValueError(f"SOFT intermediates are NCHW only, got output_fmt={output_fmt!r}")
        self.check_input(x)
        take, max_index = feature_take_indices(len(self.stages), indices)
        last = max_index if (stop_early or intermediates_only) else len(self.stages) - 1
        maps = []
        tokens = None
        for i, stage in enumerate(self.stages[:last + 1]):
            if isinstance(stage, SoftmaxStage):
                x, class_token = stage(x, return_class_token=True)
                if i in take:
                    maps.append(tokens_to_map(self.norm(map_to_tokens(x)), x.shape[2], x.shape[3]) if norm else x)
                tokens = None if intermediates_only else join_class_token(class_token, x)
            else:
                x = stage(x)
                if i in take:
                    maps.append(x)
        if intermediates_only:
            return maps
        # The final output of forward_features: normed tokens, or the last map of a truncated run.
        return (self.norm(tokens) if tokens is not None else x), maps

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        from timm.models._features import feature_take_indices

        take, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        # Keep the metadata true: the output is now stage max_index's.
        self.feature_info = self.feature_info[:max_index + 1]
        self.embed_dims = self.embed_dims[:max_index + 1]
        self.num_features = self.head_hidden_size = self.embed_dims[-1]
        if prune_norm or not self.has_class_token:
            self.norm = nn.Identity()  # the final norm belongs to stage 4's tokens
        if prune_head or not self.has_class_token:
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: Tensor) -> Tensor:
        """Image -> final normed tokens [B, 1 + h*w, C4] (class token first); after
        prune_intermediate_layers below stage 4, the last remaining stage's map [B, C, h, w]."""
        self.check_input(x)
        for stage in self.stages[:-1]:
            x = stage(x)
        if not self.has_class_token:
            return self.stages[-1](x)
        # A module call (not forward_tokens): FX feature extraction of "stages.3" then takes its map.
        grid, class_token = self.stages[-1](x, return_class_token=True)
        return self.norm(join_class_token(class_token, grid))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.global_pool == "token":
            x = x[:, 0]
        elif self.global_pool == "avg":  # patch tokens (the class token left out) or a map
            x = x[:, 1:].mean(1) if self.has_class_token else x.mean((2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


# ------------------------------------------------------------------------------ timm registration
def _cfg(**kwargs) -> dict:
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None,
        "crop_pct": 0.875, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD, "first_conv": "stages.0.downsample.conv1.conv",
        "classifier": "head", "fixed_input_size": False, "license": "apache-2.0",
        "paper_ids": "arXiv:2110.11945", **kwargs,
    }


# Tag "in1k": the authors' ImageNet-1k release. It has no download URL to name here, so
# pretrained=True needs the file: timm.create_model("soft_tiny.in1k", pretrained=True,
# pretrained_cfg_overlay=dict(file="release.pth")); checkpoint_filter_fn converts its layout.
default_cfgs = generate_default_cfgs({
    f"{name}.in1k": _cfg(description="ImageNet-1k, the authors' release (load the file with "
                                     "pretrained_cfg_overlay=dict(file=PATH))")
    for name in VARIANTS
})


def create_soft(variant: str, pretrained: bool = False, **kwargs) -> SoftVisionTransformer:
    """Build a variant; keyword arguments override its hyper-parameters (custom sizes too)."""
    check_variant(variant)
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(
        SoftVisionTransformer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls="getter", out_indices=out_indices),
        **{**VARIANTS[variant], **kwargs},
    )


@register_model
def soft_tiny(pretrained: bool = False, **kwargs) -> SoftVisionTransformer:
    """SOFT-Tiny: depths (1, 2, 3, 2), 13.1M parameters."""
    return create_soft("soft_tiny", pretrained=pretrained, **kwargs)


@register_model
def soft_small(pretrained: bool = False, **kwargs) -> SoftVisionTransformer:
    """SOFT-Small: depths (1, 3, 20, 4), 38.9M parameters (the release's Small)."""
    return create_soft("soft_small", pretrained=pretrained, **kwargs)


@register_model
def soft_medium(pretrained: bool = False, **kwargs) -> SoftVisionTransformer:
    """SOFT-Medium: depths (1, 3, 29, 5), 45.8M parameters."""
    return create_soft("soft_medium", pretrained=pretrained, **kwargs)


@register_model
def soft_large(pretrained: bool = False, **kwargs) -> SoftVisionTransformer:
    """SOFT-Large: depths (1, 3, 40, 5), 64.7M parameters."""
    return create_soft("soft_large", pretrained=pretrained, **kwargs)


@register_model
def soft_huge(pretrained: bool = False, **kwargs) -> SoftVisionTransformer:
    """SOFT-Huge: depths (1, 5, 49, 5), 87.1M parameters."""
    return create_soft("soft_huge", pretrained=pretrained, **kwargs)


@register_model
def soft_norm_tiny(pretrained: bool = False, **kwargs) -> SoftVisionTransformer:
    """SOFT-Norm-Tiny: SOFT-Tiny with symmetric normalization (the SOFT-Norm release), 13.1M parameters."""
    return create_soft("soft_norm_tiny", pretrained=pretrained, **kwargs)


@register_model
def soft_norm_small(pretrained: bool = False, **kwargs) -> SoftVisionTransformer:
    """SOFT-Norm-Small: SOFT-Small with symmetric normalization (the SOFT-Norm release), 38.9M parameters."""
    return create_soft("soft_norm_small", pretrained=pretrained, **kwargs)


@register_model
def soft_norm_medium(pretrained: bool = False, **kwargs) -> SoftVisionTransformer:
    """SOFT-Norm-Medium: SOFT-Medium with symmetric normalization (the SOFT-Norm release), 45.8M parameters."""
    return create_soft("soft_norm_medium", pretrained=pretrained, **kwargs)


@register_model
def soft_norm_large(pretrained: bool = False, **kwargs) -> SoftVisionTransformer:
    """SOFT-Norm-Large: SOFT-Large with symmetric normalization (the SOFT-Norm release), 64.7M parameters."""
    return create_soft("soft_norm_large", pretrained=pretrained, **kwargs)


@register_model
def soft_norm_huge(pretrained: bool = False, **kwargs) -> SoftVisionTransformer:
    """SOFT-Norm-Huge: SOFT-Huge with symmetric normalization (the SOFT-Norm release), 87.1M parameters."""
    return create_soft("soft_norm_huge", pretrained=pretrained, **kwargs)
