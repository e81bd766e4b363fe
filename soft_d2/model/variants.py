"""The ten released variants' hyper-parameters (their timm entrypoints are in soft.py)."""
from __future__ import annotations

import difflib

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


def check_variant(name: object, key: str = "variant") -> str:
    """``name`` if it is one of VARIANTS; otherwise a ValueError naming ``key`` and listing the
    variants, the closest spellings first."""
    if isinstance(name, str) and name in VARIANTS:
        return name
    close = difflib.get_close_matches(str(name), list(VARIANTS), n=len(VARIANTS), cutoff=0.5)
    ordered = close + [v for v in VARIANTS if v not in close]
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"{key} {name!r} is not a SOFT variant{hint}; valid variants: {', '.join(ordered)}")
