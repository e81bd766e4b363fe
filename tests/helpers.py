"""Small builders shared by the tests."""
import torch

from soft_d2.model import SoftVisionTransformer


def release_config_model(config: dict, normalized: bool, kernel_method: str = "auto") -> SoftVisionTransformer:
    """Our model for a release constructor config (as stored in release_outputs_*.pt).

    The release's SOFT blocks ignore mlp_ratios[:3] and use 4; ours honours them, so say 4.
    """
    return SoftVisionTransformer(
        embed_dims=config["embed_dims"], num_heads=config["num_heads"], depths=config["depths"],
        mlp_ratios=(4, 4, 4, config["mlp_ratios"][3]), sr_ratios=config["sr_ratios"],
        num_classes=config["num_classes"], newton_max_iter=config["newton_max_iter"],
        normalized=normalized, newton_numerics="halving" if normalized else "regularized",
        kernel_method=kernel_method,
    ).eval()


def small_model(normalized: bool = False, **kwargs) -> SoftVisionTransformer:
    """A fast custom-size SOFT for shape and API tests."""
    cfg = dict(embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1), num_classes=7,
               normalized=normalized, newton_numerics="halving" if normalized else "regularized")
    cfg.update(kwargs)
    return SoftVisionTransformer(**cfg).eval()


def all_outputs(model, x):
    """The release's output set: stage maps, stage-4 tokens (pre-norm), normed class token, logits."""
    maps = []
    h = x
    for stage in model.stages[:-1]:
        h = stage(h)
        maps.append(h)
    tokens, _ = model.stages[-1].forward_tokens(h)
    normed = model.norm(tokens)
    return {
        "stage1": maps[0], "stage2": maps[1], "stage3": maps[2], "stage4_tokens": tokens,
        "stage4_cls_normed": normed[:, 0], "logits": model.forward_head(normed),
    }


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to the largest |b|, in float64."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max()).item()
