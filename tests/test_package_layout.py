"""The shape of the code: a one-way import graph (ops -> model -> d2 -> {detection, segmentation};
classification -> model only), config composition, and a trainer that is Detectron2's own
DefaultTrainer with SOFT's parts plugged in through its documented build_* hooks."""
from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest
from detectron2.engine import DefaultTrainer, hooks
from detectron2.engine import defaults as d2_defaults

from detection_helpers import QUICKSTART_RETINANET, ROOT, load_cfg, make_small_builtin, quick_train_opts

# What each part may import of this project (itself aside). A part absent from a row may not be imported.
ALLOWED = {
    "soft_d2/ops": {"_C"},  # the compiled extension
    "soft_d2/utils": set(),
    "soft_d2/data": set(),
    "soft_d2/model": {"ops", "utils"},
    "soft_d2/d2": {"ops", "model", "utils", "data"},
    "soft_d2/detection": {"ops", "model", "utils", "data", "d2"},
    "soft_d2/segmentation": {"ops", "model", "utils", "data", "d2"},
    "classification": {"ops", "model", "utils", "data"},  # data: the built-in shapes generator (numpy, PIL)
}
PARTS = ("_C", "ops", "utils", "data", "model", "d2", "detection", "segmentation", "config")


def project_imports(path: str) -> set[str]:
    """The soft_d2 parts (ops, model, d2, ...) a file imports, absolute or relative."""
    package = os.path.relpath(os.path.dirname(path), ROOT).split(os.sep)
    found = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            names = [alias.name.split(".") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = base + (node.module.split(".") if node.module else [])
            # `from .. import ops` names the part in the alias
            names = [module + [alias.name] for alias in node.names] if len(module) == 1 else [module]
        else:
            continue
        for parts in names:
            if parts[0] == "soft_d2" and len(parts) > 1 and parts[1] in PARTS:
                found.add(parts[1])
            elif parts[0] == "soft_d2":
                found.add("soft_d2")  # the package root imports every registration of timm
    return found


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_import_graph_is_one_way(part):
    own = part.split("/")[-1]
    bad = {}
    for folder, _, files in os.walk(os.path.join(ROOT, part)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                imported = project_imports(path) - {own}
                if part == "classification":
                    imported -= {"soft_d2"}  # `import soft_d2` registers the timm models, nothing of Detectron2
                extra = imported - ALLOWED[part]
                if extra:
                    bad[os.path.relpath(path, ROOT)] = sorted(extra)
    assert not bad, f"{part} may import only {sorted(ALLOWED[part])} of soft_d2; found {bad}"


def test_project_imports_sees_relative_and_absolute_imports(tmp_path):
    """The graph check itself: each import form is recognised (so the test above can fail)."""
    folder = os.path.join(ROOT, "soft_d2", "segmentation")
    probe = os.path.join(folder, "_probe_imports.py")
    try:
        with open(probe, "w") as f:
            f.write("from ..detection.mapper import X\nfrom .. import model\nimport soft_d2.d2.config\n"
                    "from soft_d2.ops import y\nfrom .head import Z\n")
        assert project_imports(probe) == {"detection", "model", "d2", "ops", "segmentation"}
    finally:
        os.remove(probe)


def test_model_names_no_consumer():
    """Nothing in soft_d2/model or soft_d2/ops mentions a trainer, Detectron2 or a task."""
    words = ("detectron2", "train_net", "classification/", "DETECTION_", "soft_d2.d2", "soft_d2.detection")
    found = []
    for part in ("model", "ops"):
        for name in os.listdir(os.path.join(ROOT, "soft_d2", part)):
            if name.endswith(".py"):
                text = open(os.path.join(ROOT, "soft_d2", part, name)).read()
                found += [f"{part}/{name}: {w}" for w in words if w in text]
    assert not found


def test_d2_layer_imports_no_task():
    code = ("import sys, soft_d2.d2; "
            "print(sorted(m for m in sys.modules if m.startswith(('soft_d2.detection', 'soft_d2.segmentation', "
            "'soft_d2.config'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_each_config_function_adds_only_its_keys():
    from detectron2.config import get_cfg

    from soft_d2.config import compose_config
    from soft_d2.d2 import add_soft_config
    from soft_d2.detection import add_detection_config
    from soft_d2.segmentation import add_segmentation_config

    soft_only = add_soft_config(get_cfg())
    assert "SOFT" in soft_only.MODEL and "POLY_LR_POWER" in soft_only.SOLVER
    assert "COPY_PASTE" not in soft_only.INPUT and "POOL_SCALES" not in soft_only.MODEL.SEM_SEG_HEAD
    detection = add_detection_config(get_cfg())
    assert "COPY_PASTE" in detection.INPUT and "SOFT" not in detection.MODEL
    segmentation = add_segmentation_config(get_cfg())
    assert "POOL_SCALES" in segmentation.MODEL.SEM_SEG_HEAD and "SOFT" not in segmentation.MODEL
    everything = compose_config()
    for key in ("MODEL.SOFT.VARIANT", "SOLVER.AMP.PRECISION", "INPUT.COPY_PASTE.ENABLED",
                "MODEL.SEM_SEG_HEAD.AUX_LOSS_WEIGHT", "INPUT.SEG_RESIZE.ENABLED", "TEST.VIS_IMAGES"):
        node = everything
        for part in key.split("."):
            node = node[part]


def test_semantic_mapper_builds_without_the_detection_keys():
    from detectron2.config import get_cfg

    from soft_d2.d2 import SoftDatasetMapper, add_soft_config
    from soft_d2.segmentation import add_segmentation_config, build_sem_seg_mapper

    cfg = add_segmentation_config(add_soft_config(get_cfg()))
    assert isinstance(build_sem_seg_mapper(cfg, is_train=True), SoftDatasetMapper)


def test_trainer_is_defaulttrainer_with_soft_parts(tmp_path, monkeypatch):
    """train_net's Trainer runs Detectron2's own DefaultTrainer.__init__ and gets SOFT's checkpointer
    (in the checkpoint hook too), optimizer and AMP step; Detectron2's module is left as it was."""
    make_small_builtin(str(tmp_path / "datasets"))
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    import train_net
    from soft_d2.d2 import MixedPrecisionTrainer, SoftDetectionCheckpointer, SoftTrainer

    assert "__init__" not in vars(train_net.Trainer)
    assert SoftTrainer.__init__ is not DefaultTrainer.__init__  # a scoped wrapper around it, nothing else
    originals = (d2_defaults.create_ddp_model, d2_defaults.AMPTrainer)
    cfg = load_cfg(QUICKSTART_RETINANET, quick_train_opts(str(tmp_path), max_iter=1) +
                   ["SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.PRECISION", "bfloat16"])
    cfg.freeze()
    trainer = train_net.Trainer(cfg)
    assert (d2_defaults.create_ddp_model, d2_defaults.AMPTrainer) == originals
    assert isinstance(trainer.checkpointer, SoftDetectionCheckpointer)
    periodic = [h for h in trainer._hooks if isinstance(h, hooks.PeriodicCheckpointer)]
    assert len(periodic) == 1 and periodic[0].checkpointer is trainer.checkpointer
    assert isinstance(trainer._trainer, MixedPrecisionTrainer)
    assert trainer._trainer.precision == __import__("torch").bfloat16
    assert trainer.start_iter == 0 and trainer.max_iter == 1
