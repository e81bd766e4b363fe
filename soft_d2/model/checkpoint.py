"""Released SOFT checkpoints: key conversion to our names and a loader that reports mismatches.

The release names (``block1.0.att.mha.W_q.weight``) map one to one onto ours
(``stages.0.blocks.0.attn.q.weight``); no tensor changes shape or value.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from .checkpoint_file import read_weights_file

# (release template, our template). {S}: 1-based stage of the release, {s}: our 0-based stage,
# {j}: block index, {p}: parameter/buffer name. Stage-4 rows come first: in our names a stage-4
# block and a SOFT block differ only by what follows "blocks.{j}.".
_RENAMES: list[tuple[str, str]] = [
    ("block4.{j}.{rest}", "stages.3.blocks.{j}.{rest}"),
    ("cls_token", "stages.3.cls_token"),
    ("pos_embed{S4}", "stages.{s4}.pos_embed"),
    ("patch_embed1.proj.0.{p}", "stages.0.downsample.conv1.conv.{p}"),
    ("patch_embed1.proj.1.{p}", "stages.0.downsample.conv1.bn.{p}"),
    ("patch_embed1.proj.3.{p}", "stages.0.downsample.conv2.conv.{p}"),
    ("patch_embed1.proj.4.{p}", "stages.0.downsample.conv2.bn.{p}"),
    ("patch_embed1.proj.6.{p}", "stages.0.downsample.conv3.conv.{p}"),
    ("patch_embed1.proj.7.{p}", "stages.0.downsample.conv3.bn.{p}"),
    ("patch_embed{S4}.proj.0.{p}", "stages.{s4}.downsample.conv.{p}"),
    ("patch_embed{S4}.proj.1.{p}", "stages.{s4}.downsample.bn.{p}"),
    ("block{S}.{j}.att.mha.W_q.{p}", "stages.{s}.blocks.{j}.attn.q.{p}"),
    ("block{S}.{j}.att.mha.W_v.{p}", "stages.{s}.blocks.{j}.attn.v.{p}"),
    ("block{S}.{j}.att.mha.attn.Qlandmark_op.{p}", "stages.{s}.blocks.{j}.attn.landmarks.conv.{p}"),
    ("block{S}.{j}.att.mha.attn.Qnorm_act.0.{p}", "stages.{s}.blocks.{j}.attn.landmarks.norm.{p}"),
    ("block{S}.{j}.att.mha.attn.conv.{p}", "stages.{s}.blocks.{j}.attn.v_conv.{p}"),
    ("block{S}.{j}.att.mha.ff.{p}", "stages.{s}.blocks.{j}.attn.proj.{p}"),
    ("block{S}.{j}.att.norm1.{p}", "stages.{s}.blocks.{j}.norm1.{p}"),
    ("block{S}.{j}.att.ff1.{p}", "stages.{s}.blocks.{j}.mlp.fc1.{p}"),
    ("block{S}.{j}.att.ff2.{p}", "stages.{s}.blocks.{j}.mlp.fc2.{p}"),
    ("block{S}.{j}.att.norm2.{p}", "stages.{s}.blocks.{j}.norm2.{p}"),
]
_FIELDS = {
    "S": r"[1-3]", "s": r"[0-2]", "S4": r"[1-4]", "s4": r"[0-3]",
    "j": r"\d+", "p": r"[A-Za-z_]+", "rest": r".+",
}
# How a matched stage field turns into the other side's.
_STAGE_SHIFT = {"S": ("s", -1), "s": ("S", +1), "S4": ("s4", -1), "s4": ("S4", +1)}


def _compile(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(re.escape(p) if k % 2 == 0 else f"(?P<{p}>{_FIELDS[p]})" for k, p in enumerate(parts))
    return re.compile(f"^{regex}$")


def _rename_table(forward: bool) -> list[tuple[re.Pattern, str]]:
    return [(_compile(src if forward else dst), dst if forward else src) for src, dst in _RENAMES]


_TO_OURS = _rename_table(True)
_TO_RELEASE = _rename_table(False)


def _rename(key: str, table: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, target in table:
        match = pattern.match(key)
        if match:
            fields = dict(match.groupdict())
            for name, value in list(fields.items()):
                if name in _STAGE_SHIFT:
                    other, shift = _STAGE_SHIFT[name]
                    fields[other] = str(int(value) + shift)
            return target.format(**fields)
    return None


class CheckpointMismatchError(RuntimeError):
    """A checkpoint does not fit the model; its message lists every offending key."""


def is_official_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """True for the release's key layout (``block1.*``, ``patch_embed1.*``, ``pos_embed1``)."""
    return any(k.startswith(("block1.", "patch_embed1.", "pos_embed1")) for k in state_dict)


def unwrap_state_dict(checkpoint: Mapping[str, Any], use_ema: bool = True,
                      source: str = "<state dict>") -> dict[str, Any]:
    """The model weights of a training checkpoint: 'state_dict_ema' (preferred, as the release
    evaluates EMA weights; ``use_ema=False`` takes the raw ones), 'state_dict' or 'model', else
    the mapping itself; a 'module.' prefix (DDP) is removed."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointMismatchError(f"checkpoint {source} holds a {type(checkpoint).__name__}, not a dict of tensors "
                                      "or a training checkpoint dict")
    wrappers = (["state_dict_ema"] if use_ema else []) + ["state_dict", "model"]
    for key in wrappers:
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping) and inner:
            checkpoint = inner
            break
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in checkpoint.items()}


def convert_official_state_dict(state_dict: Mapping[str, Any], use_ema: bool = True,
                                source: str = "<state dict>") -> dict[str, Any]:
    """Map a released SOFT state dict (or training checkpoint) to our parameter names.

    Accepts a bare state dict or one wrapped in 'state_dict' / 'state_dict_ema' / 'model', with or
    without a 'module.' prefix. Keys already in our layout pass through; keys the release does
    not have are kept unchanged (the loader reports them).
    """
    state_dict = unwrap_state_dict(state_dict, use_ema=use_ema, source=source)
    if not is_official_state_dict(state_dict):
        return dict(state_dict)
    return {(_rename(k, _TO_OURS) or k): v for k, v in state_dict.items()}


def to_official_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Our names back to the release's (the inverse of convert_official_state_dict)."""
    return {(_rename(k, _TO_RELEASE) or k): v for k, v in state_dict.items()}


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, Any]:
    """timm's pretrained filter: unwrap and convert a released (or our) checkpoint."""
    return convert_official_state_dict(state_dict)


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # key, checkpoint, model
    skipped: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def format(self, limit: int = 20) -> str:
        def listing(title: str, items: Sequence) -> list[str]:
            if not items:
                return []
            shown = [f"    {x}" for x in items[:limit]]
            more = [f"    ... and {len(items) - limit} more"] if len(items) > limit else []
            return [f"  {title} ({len(items)}):"] + shown + more

        lines = [f"  loaded {len(self.loaded)} tensors"]
        lines += listing("missing from the checkpoint", self.missing)
        lines += listing("in the checkpoint but not in the model", self.unexpected)
        lines += listing("shape differs (key, checkpoint, model)", self.mismatched)
        lines += listing("skipped on request", self.skipped)
        return "\n".join(lines)


def compare_state_dicts(model: nn.Module, state_dict: Mapping[str, Tensor],
                        exclude: Sequence[str] = ()) -> LoadReport:
    """What loading ``state_dict`` into ``model`` would do, without loading it."""
    report = LoadReport()
    expected = model.state_dict()
    for key, value in state_dict.items():
        if key.startswith(tuple(exclude)):
            report.skipped.append(key)
        elif key not in expected:
            report.unexpected.append(key)
        elif not isinstance(value, Tensor):
            report.mismatched.append((key, type(value).__name__, tuple(expected[key].shape)))
        elif tuple(value.shape) != tuple(expected[key].shape):
            report.mismatched.append((key, tuple(value.shape), tuple(expected[key].shape)))
        else:
            report.loaded.append(key)
    report.missing = [k for k in expected if k not in state_dict and not k.startswith(tuple(exclude))]
    return report


def read_checkpoint(path: str | os.PathLike, *, unsafe_unpickle: bool = False,
                    opt_in: str = "unsafe_unpickle=True") -> Any:
    """The contents of a checkpoint file: tensors, plain containers and the few extra types released
    checkpoints hold (checkpoint_file.SAFE_GLOBALS). torch.save files are read with
    ``torch.load(weights_only=True)``; ``.pkl`` and other plain ``pickle.dump`` files (Detectron2's model
    zoo) by an unpickler that also allows numpy arrays, which are returned as tensors.

    A file needing anything else raises UnsafeCheckpointError naming the type; ``unsafe_unpickle=True``
    unpickles it in full, which runs any code it carries (only for files you trust). A missing, empty,
    truncated or foreign file raises CheckpointFileError (FileNotFoundError if absent) naming it.
    """
    return read_weights_file(path, unsafe_unpickle=unsafe_unpickle, opt_in=opt_in)


def load_checkpoint(
    model: nn.Module,
    checkpoint: str | os.PathLike | Mapping[str, Any],
    *,
    use_ema: bool = True,
    strict: bool = True,
    exclude: Sequence[str] = (),
    unsafe_unpickle: bool = False,
    opt_in: str = "unsafe_unpickle=True",
) -> LoadReport:
    """Load a released or our own checkpoint (file or dict) into ``model``.

    Nothing is loaded when the checkpoint does not fit the model exactly and ``strict`` is True:
    a CheckpointMismatchError lists the missing, unexpected and mis-shaped keys. With
    ``strict=False`` the fitting tensors are loaded and the report says what was not.
    ``exclude`` names key prefixes to leave out on purpose (e.g. ``("head.",)`` for a new head).
    Files are read by ``read_checkpoint`` (``unsafe_unpickle`` and ``opt_in`` as there: only for trusted files).
    """
    source = os.fspath(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "<state dict>"
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = read_checkpoint(checkpoint, unsafe_unpickle=unsafe_unpickle, opt_in=opt_in)
    state_dict = convert_official_state_dict(checkpoint, use_ema=use_ema, source=source)
    report = compare_state_dicts(model, state_dict, exclude)
    if strict and not report.complete:
        raise CheckpointMismatchError(
            f"checkpoint {source} does not fit {type(model).__name__} (nothing was loaded):\n{report.format()}\n"
            "Check the variant (e.g. soft_tiny vs soft_small), num_classes, or pass strict=False / "
            "exclude=(...) to load what fits."
        )
    model.load_state_dict({k: state_dict[k] for k in report.loaded}, strict=False)
    return report
