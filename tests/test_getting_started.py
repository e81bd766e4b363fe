"""docs/GETTING_STARTED.md's own-data commands, run as the guide writes them (small sizes appended):
example data, training, --eval-only and demo.py; the errors of DATASETS.REGISTER_COCO_INSTANCES and
the head's NUM_CLASSES check against the data set's categories."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shlex
import subprocess
import sys

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

import train_net
from detection_helpers import ROOT
from soft_d2.config import compose_config, load_config
from soft_d2.d2 import prepare_dataset
from soft_d2.detection import check_num_classes
from soft_d2.detection import classes as classes_module

GUIDE = os.path.join(ROOT, "docs", "GETTING_STARTED.md")
EXAMPLE_CONFIG = os.path.join(ROOT, "configs", "examples", "mask_rcnn_soft_norm_tiny_example_coco.yaml")
KEY = "DATASETS.REGISTER_COCO_INSTANCES"

SMALL_DATA = ["--train", "4", "--val", "2", "--size", "96"]
SMALL_INPUT = ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96",
               "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96"]
SMALL_TRAINING = SMALL_INPUT + ["SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
                                "SOLVER.CHECKPOINT_PERIOD", "1000", "DATALOADER.NUM_WORKERS", "0",
                                "TEST.VIS_IMAGES", "0"]


def _load_tool():
    path = os.path.join(ROOT, "tools", "make_example_coco.py")
    spec = importlib.util.spec_from_file_location("make_example_coco", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_example_coco = _load_tool()


def guide_commands() -> list[list[str]]:
    """The commands of the guide's one fenced bash block that runs tools/make_example_coco.py."""
    with open(GUIDE) as f:
        blocks = [b for b in re.findall(r"```bash\n(.*?)```", f.read(), re.S) if "tools/make_example_coco.py" in b]
    assert len(blocks) == 1, f"{GUIDE} should have one bash block with the own-data commands, has {len(blocks)}"
    text = blocks[0].replace("\\\n", " ")
    return [shlex.split(line) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@pytest.fixture
def catalog():
    """Each test starts without data sets registered by DATASETS.REGISTER_COCO_INSTANCES (another
    test of this process may have loaded a config with it, from another folder), and those it
    registers are unregistered after it."""
    for name in DatasetCatalog.list():
        if getattr(MetadataCatalog.get(name), "registered_from", None) == KEY:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    before = set(DatasetCatalog.list())
    yield
    for name in set(DatasetCatalog.list()) - before:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _example_data(folder) -> None:
    make_example_coco.main(["--output", str(folder), "--train", "2", "--val", "1", "--size", "64"])


def test_guide_commands_train_evaluate_and_draw(tmp_path):
    work = tmp_path / "work"  # the commands' relative paths (configs/, datasets/, output/) resolve here
    work.mkdir()
    for name in ("configs", "tools", "train_net.py", "demo.py"):
        os.symlink(os.path.join(ROOT, name), work / name)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
           "DETECTRON2_DATASETS": str(tmp_path / "builtin")}
    commands = guide_commands()
    scripts = [c[1] for c in commands]
    assert scripts == ["tools/make_example_coco.py", "train_net.py", "train_net.py", "demo.py"], scripts
    assert all(c[0] == ".venv/bin/python" for c in commands)
    assert "--eval-only" in commands[2] and "--opts" in commands[3]
    every_box = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]  # a 2-step model's scores are low: keep them all
    extra = [SMALL_DATA, SMALL_TRAINING, SMALL_INPUT + every_box,  # the last value given wins
             SMALL_INPUT + every_box + ["TEST.VIS_THRESHOLD", "0.0"]]
    for command, small in zip(commands, extra):
        proc = subprocess.run([sys.executable, *command[1:], *small], cwd=str(work), env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, f"{shlex.join(command)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        if command[1] == "train_net.py":
            assert "categories but MODEL" not in proc.stdout + proc.stderr  # 2 categories, NUM_CLASSES 2: no warning
            results = json.load(open(work / "output" / "example_coco" / "results.json"))
            assert set(results) == {"bbox", "segm"}
        if command[1] == "demo.py":  # instances counted under the json's category names, not class indices
            lines = [line for line in proc.stdout.splitlines() if line.startswith("datasets/example_coco/val/")]
            assert len(lines) == 2 and all(re.search(r"\((circle|triangle) \d+", line) for line in lines), lines
    out = work / "output" / "example_coco"
    assert (out / "model_final.pth").is_file()
    predictions = json.load(open(out / "inference" / "example_coco_val" / "coco_instances_results.json"))
    assert predictions and {p["category_id"] for p in predictions} <= {3, 7}  # mapped back to the json's own ids
    assert sorted(os.listdir(out / "demo")) == ["000001.jpg", "000002.jpg"]


def test_example_data_is_coco_and_deterministic(tmp_path):
    _example_data(tmp_path / "a")
    _example_data(tmp_path / "b")
    for rel in ("annotations/train.json", "annotations/val.json", "train/000001.jpg", "val/000001.jpg"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    coco = json.load(open(tmp_path / "a" / "annotations" / "train.json"))
    assert [c["id"] for c in coco["categories"]] == [3, 7]
    assert coco["annotations"] and all(a["iscrowd"] == 0 and a["area"] > 0 and len(a["segmentation"][0]) >= 6
                                       and a["category_id"] in (3, 7) for a in coco["annotations"])
    make_example_coco.main(["--output", str(tmp_path / "c"), "--size", "64", "--seed", "1", "--train", "2",
                            "--val", "1"])
    first = "train/000001.jpg"
    assert (tmp_path / "c" / first).read_bytes() != (tmp_path / "a" / first).read_bytes()  # another seed
    with pytest.raises(SystemExit, match="--overwrite"):  # never writes over existing splits unasked
        _example_data(tmp_path / "a")


def _entries(*triples) -> list[str]:
    return [KEY, repr([list(t) for t in triples])]


def test_register_key_entries_clashes_and_relative_paths(tmp_path, monkeypatch, catalog):
    monkeypatch.chdir(tmp_path)
    for bad in ([["only_name", "a.json"]], [["name", "a.json", 3]], ["name"]):
        with pytest.raises(ValueError, match=re.escape(KEY) + r".*\[name, json_file, image_root\]"):
            load_config(EXAMPLE_CONFIG, [KEY, repr(bad)])
    entry = ("gs_train", "data/train.json", "data/train")
    load_config(EXAMPLE_CONFIG, _entries(entry))
    load_config(EXAMPLE_CONFIG, _entries(entry))  # the same files again: nothing to do
    meta = MetadataCatalog.get("gs_train")
    assert (meta.json_file, meta.image_root) == (str(tmp_path / "data/train.json"), str(tmp_path / "data/train"))
    with pytest.raises(ValueError) as err:
        load_config(EXAMPLE_CONFIG, _entries(("gs_train", "other/train.json", "other/train")))
    assert KEY in str(err.value) and str(tmp_path / "data/train.json") in str(err.value)
    assert str(tmp_path / "other/train.json") in str(err.value)
    for builtin in ("coco_2017_val", "soft_shapes_train"):
        with pytest.raises(ValueError, match=f"{re.escape(KEY)}: '{builtin}' is the name of a data set registered"):
            load_config(EXAMPLE_CONFIG, _entries((builtin, "a.json", "images")))


def test_missing_files_name_the_path_and_the_key(tmp_path, monkeypatch, catalog):
    monkeypatch.chdir(tmp_path)
    load_config(EXAMPLE_CONFIG, _entries(("gs_missing", "nowhere/train.json", "nowhere/train")))
    with pytest.raises(FileNotFoundError) as err:
        prepare_dataset("gs_missing")
    text = str(err.value)
    assert str(tmp_path / "nowhere/train.json") in text and KEY in text and "DETECTRON2_DATASETS" not in text
    _example_data(tmp_path / "data")  # the json exists, the image folder named in the entry does not
    load_config(EXAMPLE_CONFIG, _entries(("gs_images", "data/annotations/train.json", "data/images")))
    missing = re.escape(str(tmp_path / "data/images"))
    with pytest.raises(FileNotFoundError, match=f"image_root {missing} does not exist"):
        prepare_dataset("gs_images")
    load_config(EXAMPLE_CONFIG, _entries(("gs_present", "data/annotations/train.json", "data/train")))
    prepare_dataset("gs_present")


def _warnings(monkeypatch) -> list[str]:
    seen = []
    monkeypatch.setattr(classes_module.logger, "warning", lambda message, *args: seen.append(message % args))
    return seen


def test_num_classes_against_the_data_set(tmp_path, monkeypatch, catalog):
    monkeypatch.chdir(tmp_path)
    _example_data(tmp_path / "datasets" / "example_coco")  # the config's own paths
    opts = SMALL_TRAINING + ["MODEL.ROI_HEADS.NUM_CLASSES", "1"]
    cfg = load_config(EXAMPLE_CONFIG, opts)
    check_num_classes(cfg, "example_coco_val")  # the json is not read yet: nothing known, nothing to check
    with pytest.raises(ValueError, match="'example_coco_train' has 2 categories .*Set MODEL.ROI_HEADS.NUM_CLASSES 2"):
        train_net.Trainer.build_train_loader(cfg)
    with pytest.raises(ValueError, match="'example_coco_val' has 2 categories .*Set MODEL.ROI_HEADS.NUM_CLASSES 2"):
        train_net.Trainer.build_test_loader(cfg, "example_coco_val")  # what --eval-only evaluates
    warnings = _warnings(monkeypatch)
    train_net.Trainer.build_test_loader(load_config(EXAMPLE_CONFIG, SMALL_TRAINING), "example_coco_val")
    assert warnings == []
    train_net.Trainer.build_test_loader(load_config(EXAMPLE_CONFIG, SMALL_TRAINING + ["MODEL.ROI_HEADS.NUM_CLASSES",
                                                                                      "5"]), "example_coco_val")
    assert len(warnings) == 1 and "2 categories" in warnings[0] and "MODEL.ROI_HEADS.NUM_CLASSES is 5" in warnings[0]
    retinanet = compose_config()
    retinanet.MODEL.META_ARCHITECTURE = "RetinaNet"
    retinanet.MODEL.RETINANET.NUM_CLASSES = 1
    with pytest.raises(ValueError, match="Set MODEL.RETINANET.NUM_CLASSES 2"):
        check_num_classes(retinanet, "example_coco_val")
    retinanet.MODEL.META_ARCHITECTURE = "SemanticSegmentor"  # no instance head: not compared
    check_num_classes(retinanet, "example_coco_val")
