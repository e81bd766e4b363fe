"""tools/export_model.py: exports, reloads and checks against eager; refuses what it cannot export."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def read_each_program_once(monkeypatch):
    """torch.export.load parses every symbolic shape expression of a program with sympy, tens of
    seconds for these: a test inspects the very program the tool has just saved, reloaded and
    checked, instead of parsing the file a second time."""
    loaded, load = {}, torch.export.load

    def load_once(path, *args, **kwargs):
        key = (os.fspath(path), os.stat(path).st_mtime_ns)
        if key not in loaded:
            loaded[key] = load(path, *args, **kwargs)
        return loaded[key]

    monkeypatch.setattr(torch.export, "load", load_once)


def export_tool():
    spec = importlib.util.spec_from_file_location("export_model", ROOT / "tools" / "export_model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as when run as a script: its dataclass resolves names through it
    spec.loader.exec_module(module)
    return module


def test_classifier_exports_with_dynamic_size(tmp_path, capsys):
    tool = export_tool()
    assert tool.main(["--variant", "soft_norm_tiny", "--size", "64x96", "--format", "torch",
                      "--output", str(tmp_path)]) == 0
    report = capsys.readouterr().out
    assert report.count("max |diff|") == 3 and "dynamic height/width" in report  # 64x96 and two other sizes
    program = torch.export.load(tmp_path / "model.pt2").module()
    assert program(torch.randn(1, 3, 96, 80)).shape == (1, 1000)


def test_tool_refuses_a_dynamic_size_below_its_minimum(tmp_path):
    with pytest.raises(SystemExit):
        export_tool().main(["--variant", "soft_norm_tiny", "--size", "32x64", "--output", str(tmp_path)])


DETECTION = ROOT / "configs" / "quickstart"
EVERY_DETECTION = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"]


def test_whole_mask_rcnn_exports_with_dynamic_size_to_torch_and_onnx(tmp_path, capsys):
    """The built-in validation images (three sizes and a transposed one) through torch.export and
    onnxruntime, compared with eager; untrained weights with no score threshold give 100 objects."""
    tool = export_tool()
    assert tool.main(["--config-file", str(DETECTION / "mask_rcnn_soft_norm_tiny_shapes.yaml"), "--output",
                      str(tmp_path), "MODEL.SOFT.MAX_LANDMARKS", "0", *EVERY_DETECTION]) == 0
    report = capsys.readouterr().out
    assert report.count("vs the Detectron2 model (eager): 100 objects") == 4
    for runtime in ("torch.export dynamic height/width", "ONNX (onnxruntime) dynamic height/width"):
        assert report.count(f"{runtime} -> ") == 4 and "masks" in report
    assert report.count(": 100 objects, max |diff|") == 12
    program = torch.export.load(tmp_path / "model.pt2").module()
    torch.manual_seed(0)
    boxes, scores, classes, masks = program(torch.rand(3, 224, 416) * 255, torch.tensor([200, 400]))
    assert boxes.shape[1] == 4 and masks.shape[1:] == (1, 28, 28)
    assert float(boxes[:, 2].max()) <= 400 and float(boxes[:, 3].max()) <= 200  # clipped to image_size


def test_retinanet_with_bounded_landmarks_exports_with_dynamic_size(tmp_path, capsys):
    """Bounded landmarks in one program for every size: under a bound of 90 the validation images
    (padded 320x288, 288x352 and transposed 288x320) fall on both sides of it in stage 1."""
    from soft_d2.model.landmark_grid import landmark_input_size

    tool = export_tool()
    assert tool.main(["--config-file", str(DETECTION / "retinanet_soft_norm_tiny_shapes.yaml"), "--format", "torch",
                      "--output", str(tmp_path), "MODEL.SOFT.MAX_LANDMARKS", "90", *EVERY_DETECTION]) == 0
    report = capsys.readouterr().out
    assert report.count("vs the Detectron2 model (eager): ") == 4 and "no objects" not in report
    assert report.count("torch.export dynamic height/width -> ") == 4
    grids = [(h // 4, w // 4) for h, w in ((320, 288), (288, 352), (288, 320))]  # stage 1, landmark stride 8
    assert [landmark_input_size(*grid, 8, 90) != grid for grid in grids] == [False, True, False]
    program = torch.export.load(tmp_path / "model.pt2").module()
    boxes, scores, classes = program(torch.rand(3, 480, 640) * 255, torch.tensor([470, 630]))
    assert boxes.shape[1] == 4 and boxes.shape[0] > 0 and float(boxes[:, 2].max()) <= 630


def test_detector_export_refuses_size_and_segmentation_configs(tmp_path):
    tool = export_tool()
    with pytest.raises(SystemExit, match="2"):
        tool.main(["--config-file", str(DETECTION / "retinanet_soft_norm_tiny_shapes.yaml"), "--size", "320x320",
                   "--output", str(tmp_path)])
    with pytest.raises(SystemExit, match="2"):  # a semantic segmentor: only its backbone exports
        tool.main(["--config-file", str(DETECTION / "upernet_soft_norm_tiny_shapes.yaml"), "--output", str(tmp_path)])


@pytest.mark.parametrize("config", ["retinanet_soft_norm_tiny_shapes.yaml", "mask_rcnn_soft_norm_tiny_shapes.yaml"])
def test_exportable_detector_equals_the_model_with_and_without_objects(config):
    """Every selection step without a Python branch on counts: 100 objects, and none at all."""
    from detectron2.modeling import build_model

    import soft_d2
    from soft_d2.detection.export import ExportableDetector

    for threshold, expected in (("0.0", 100), ("1.0", 0)):
        cfg = soft_d2.load_config(str(DETECTION / config), ["MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
                                                            threshold, "MODEL.RETINANET.SCORE_THRESH_TEST", threshold])
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        image = torch.rand(3, 200, 300) * 255
        with torch.no_grad():
            instances = model([{"image": image}])[0]["instances"]
            detector = ExportableDetector(model)
            boxes, scores, classes, *masks = detector(*detector.pad(image))
        assert len(instances) == boxes.shape[0] == expected
        torch.testing.assert_close(boxes, instances.pred_boxes.tensor, rtol=0, atol=0)
        torch.testing.assert_close(scores, instances.scores, rtol=0, atol=0)
        assert torch.equal(classes, instances.pred_classes)
        assert len(masks) == (1 if "mask_rcnn" in config else 0)


def test_detector_export_refuses_weights_of_another_model(tmp_path):
    from soft_d2.model import CheckpointMismatchError

    weights = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 2048)}, weights)
    with pytest.raises(CheckpointMismatchError, match="0 of"):
        export_tool().main(["--config-file", str(DETECTION / "retinanet_soft_norm_tiny_shapes.yaml"),
                            "--output", str(tmp_path), "MODEL.WEIGHTS", str(weights)])


def test_backbone_exports_with_dynamic_size_in_fpn_multiples(tmp_path, capsys):
    """--backbone-only: SOFT + FPN, checked at sizes in multiples of the FPN's size divisibility
    (other sizes cannot be added in the FPN's top-down path); a size off that grid is refused."""
    tool = export_tool()
    config = str(DETECTION / "mask_rcnn_soft_norm_tiny_shapes.yaml")
    assert tool.main(["--config-file", config, "--backbone-only", "--size", "160x224", "--format", "torch",
                      "--output", str(tmp_path), "MODEL.SOFT.MAX_LANDMARKS", "6"]) == 0
    report = capsys.readouterr().out
    assert report.count("torch.export dynamic height/width -> ") == 3 and "224x256" in report
    features = torch.export.load(tmp_path / "model.pt2").module()(torch.randn(1, 3, 192, 320))
    assert len(features) > 1 and all(f.shape[-2] * 320 == f.shape[-1] * 192 for f in features)  # 192x320 / stride
    with pytest.raises(SystemExit, match="2"):
        tool.main(["--config-file", config, "--backbone-only", "--size", "160x200", "--output", str(tmp_path)])
