"""How much of a model's SOFT backbone a checkpoint fills, counted before anything is loaded.

Detectron2 loads whatever matches by name and only warns about the rest, so a checkpoint of another
model (a ResNet, Swin or PVT, or a SOFT of another size) would silently start the backbone from
random weights. Here a backbone that is not filled tensor for tensor is an error naming the file and
the count, unless MODEL.SOFT.ALLOW_PARTIAL_WEIGHTS asks for it; the rest of the model (FPN, heads)
may differ, as when fine-tuning on other classes, and the load is reported in one line.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from torch import nn

from ..model import CheckpointMismatchError, LoadReport, SoftVisionTransformer
from ..model.checkpoint import compare_state_dicts

_SHOWN = 3  # names given per kind in the one-line report


def find_soft_model(model: nn.Module) -> tuple[str, SoftVisionTransformer]:
    """The module path (with trailing dot) and the SoftVisionTransformer inside a detector."""
    for name, module in model.named_modules():
        if isinstance(module, SoftVisionTransformer):
            return (name + "." if name else ""), module
    raise ValueError(f"{type(model).__name__} contains no SoftVisionTransformer, so a SOFT ImageNet checkpoint cannot be loaded into it")


def fit_report(soft: SoftVisionTransformer, state_dict: Mapping[str, Any], exclude: Sequence[str] = ()) -> LoadReport:
    """``state_dict`` (keys relative to ``soft``) against the backbone. BatchNorm counters the model
    lacks (FrozenBN has none) carry no weights and count as skipped, not as foreign entries."""
    own = soft.state_dict()
    untracked = [k for k in state_dict if k.endswith("num_batches_tracked") and k not in own]
    report = compare_state_dicts(soft, {k: v for k, v in state_dict.items() if k not in untracked}, exclude)
    report.skipped += untracked
    return report


def backbone_fit(model: nn.Module, state_dict: Mapping[str, Any]) -> tuple[str, LoadReport] | None:
    """(module prefix, fit of the entries under it) for detector-level keys; None without a SOFT backbone."""
    try:
        prefix, soft = find_soft_model(model)
    except ValueError:
        return None
    inside = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return prefix, fit_report(soft, inside)


def backbone_total(report: LoadReport) -> int:
    return len(report.loaded) + len(report.missing) + len(report.mismatched)


def fit_error(source: str, module: str, report: LoadReport, outside: Sequence[str] = ()) -> CheckpointMismatchError:
    """The refusal: the file, the backbone's module path, how many backbone tensors match, what does not,
    and the ways out. ``outside``: the file's entries outside ``module`` (what the file is instead)."""
    total, extra = backbone_total(report), len(report.unexpected)
    count = (f"all {total} backbone tensors are in the file, but so are {extra} backbone entries it does not have "
             f"(a SOFT with more blocks or stages)" if report.loaded and len(report.loaded) == total and extra
             else f"{len(report.loaded)} of {total} backbone tensors match")
    lines = [f"checkpoint {source} does not fit the SOFT backbone{f' ({module})' if module else ''}: "
             f"{count}, so nothing was loaded.", report.format(limit=8)]
    if outside and not report.loaded:
        lines.append(f"  the file's entries begin {', '.join(outside[:6])}, ... ({len(outside)} outside {module})")
    lines.append("It holds another model's weights (e.g. a ResNet, Swin or PVT checkpoint) or a SOFT of another size: "
                 "use a SOFT checkpoint of this MODEL.SOFT.VARIANT (with the EMBED_DIMS / DEPTHS / NUM_HEADS / "
                 "SR_RATIOS it was trained with), set MODEL.WEIGHTS \"\" to train from scratch, or set "
                 "MODEL.SOFT.ALLOW_PARTIAL_WEIGHTS True to load the tensors that fit on purpose.")
    return CheckpointMismatchError("\n".join(lines))


def _some(names: Sequence[str]) -> str:
    return ", ".join(names[:_SHOWN]) + (", ..." if len(names) > _SHOWN else "")


def load_summary(source: str, prefix: str, report: LoadReport, model_keys: Iterable[str], incompatible,
                 imagenet_skipped: Sequence[str] | None = None) -> tuple[str, bool]:
    """(one line saying what was loaded, whether anything of a detector checkpoint did not fit).

    ``incompatible``: fvcore's (missing_keys, unexpected_keys, incorrect_shapes) of the load;
    ``imagenet_skipped``: the ImageNet checkpoint's entries the backbone has no place for, if it was one.
    """
    rest = [k for k in model_keys if not k.startswith(prefix)]
    reshaped = [k for k, _, _ in incompatible.incorrect_shapes if not k.startswith(prefix)]
    missing = [k for k in incompatible.missing_keys if not k.startswith(prefix) and k not in reshaped]
    unused = list(incompatible.unexpected_keys)
    kind = " (a SOFT ImageNet checkpoint)" if imagenet_skipped is not None else ""
    total = backbone_total(report)
    parts = [f"loaded checkpoint {source}{kind}: {len(report.loaded)} of {total} backbone tensors"]
    if not report.complete:  # what MODEL.SOFT.ALLOW_PARTIAL_WEIGHTS let through
        other = total - len(report.loaded)
        left = [f"the other {other} keep their initialization"] if other else []
        if report.unexpected:
            left.append(f"{len(report.unexpected)} backbone entries of the file have no place in this backbone")
        parts[0] += f" (MODEL.SOFT.ALLOW_PARTIAL_WEIGHTS is set: {', and '.join(left)})"
    if imagenet_skipped:
        parts[0] += f", skipped what the backbone has no place for: {', '.join(imagenet_skipped)}"
    if rest:
        detail = []
        if missing:
            detail.append(f"{len(missing)} not in the file" + (f": {_some(missing)}" if imagenet_skipped is None else ""))
        if reshaped:
            detail.append(f"{len(reshaped)} of another shape, kept as initialized: {_some(reshaped)}")
        loaded = len(rest) - len(missing) - len(reshaped)
        parts.append(f"rest of the model {loaded} of {len(rest)}" + (f" ({'; '.join(detail)})" if detail else ""))
    if unused:
        parts.append(f"{len(unused)} entries of the file unused: {_some(unused)}")
    differs = bool(not report.complete or reshaped or unused or (missing and imagenet_skipped is None))
    return "; ".join(parts), differs
