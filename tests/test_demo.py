"""demo.py on user images: a UperNet config's picture (image | predicted classes) and pixel shares,
one line per image with and without --output, and the score threshold of detectors (the config's
TEST.VIS_THRESHOLD unless --confidence-threshold is given)."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
from detectron2.modeling import build_model
from PIL import Image

import demo
from detection_helpers import QUICKSTART_RETINANET, load_cfg
from segmentation_helpers import QUICKSTART_UPERNET, SMALL_SOFT, make_small_sem_seg
from soft_d2.d2 import SoftDetectionCheckpointer
from soft_d2.segmentation.datasets import STUFF_CLASSES
from soft_d2.segmentation.visualize import draw_label_prediction, pixel_shares

SEG_INPUT = ["INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "160"]
# Every RetinaNet candidate kept: the scores of untrained weights are near the focal-loss prior (~0.01).
DET_INPUT = ["INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"]
CLASS_SHARE = r"[a-z]+ (<1|\d+)%"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    """Two built-in shapes images (256-352 px), read by demo.py as any user image."""
    folder = make_small_sem_seg(str(tmp_path_factory.mktemp("datasets")), train_images=1, val_images=2)
    val = os.path.join(folder, "val", "images")
    return sorted(os.path.join(val, f) for f in os.listdir(val))


def saved_weights(folder, config: str, opts: list[str], name: str) -> str:
    SoftDetectionCheckpointer(build_model(load_cfg(config, opts)), str(folder)).save(name)
    return os.path.join(str(folder), f"{name}.pth")


@pytest.fixture(scope="module")
def upernet_weights(tmp_path_factory) -> str:
    return saved_weights(tmp_path_factory.mktemp("upernet"), QUICKSTART_UPERNET, SMALL_SOFT, "upernet")


@pytest.fixture(scope="module")
def retinanet_weights(tmp_path_factory) -> str:
    return saved_weights(tmp_path_factory.mktemp("retinanet"), QUICKSTART_RETINANET, [], "retinanet")


def printed_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().out.splitlines() if line]


def test_upernet_config_draws_image_and_prediction_and_prints_pixel_shares(images, upernet_weights, tmp_path, capsys):
    opts = ["--opts", "MODEL.WEIGHTS", upernet_weights, *SMALL_SOFT, *SEG_INPUT]
    out = str(tmp_path / "out")
    written = demo.main(["--config-file", QUICKSTART_UPERNET, "--input", *images, "--output", out, *opts])
    assert written == [os.path.join(out, os.path.basename(p)) for p in images]
    drawn = printed_lines(capsys)
    assert len(drawn) == len(images)
    for path, line, picture in zip(images, drawn, written):
        width, height = Image.open(path).size
        assert Image.open(picture).size == (2 * width, height)  # image | prediction
        match = re.fullmatch(rf"{re.escape(path)}: ({CLASS_SHARE}(, {CLASS_SHARE})*); drawn to {re.escape(picture)}", line)
        assert match, line
        shares = dict(re.findall(r"([a-z]+) (<1|\d+)%", match.group(1)))
        assert set(shares) <= set(STUFF_CLASSES) and len(shares) >= 1
        assert abs(sum(int(v) for v in shares.values() if v != "<1") - 100) <= len(shares)
    # Without --output: the same lines, nothing drawn.
    assert demo.main(["--config-file", QUICKSTART_UPERNET, "--input", *images, *opts]) == []
    assert printed_lines(capsys) == [line.split("; drawn to ")[0] for line in drawn]


def test_label_picture_is_the_image_beside_the_blended_classes():
    rgb = np.full((40, 60, 3), 100, dtype=np.uint8)
    labels = np.zeros((40, 60), dtype=np.int64)
    labels[30:, 40:] = 2  # class 2 at the bottom right, away from the legend
    labels[0, 0] = 255  # ignored
    picture = draw_label_prediction(rgb, labels, ["background", "circle", "triangle"])
    assert picture.shape == (40, 120, 3)
    assert (picture[:, :60] == rgb).all()
    prediction = picture[:, 60:]
    assert (prediction[20:, :30] == 100).all()  # background as it is
    assert (prediction[35, 50] != 100).any()  # triangle blended in
    assert (prediction[:12, :12] != 100).any()  # the legend names the coloured class
    assert pixel_shares(labels) == [(0, pytest.approx(2199 / 2399)), (2, pytest.approx(200 / 2399))]


def test_detector_prints_counts_without_output(images, retinanet_weights, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert demo.main(["--config-file", QUICKSTART_RETINANET, "--input", *images, "--confidence-threshold", "0.0",
                      "--opts", "MODEL.WEIGHTS", retinanet_weights, *DET_INPUT]) == []
    lines = printed_lines(capsys)
    assert len(lines) == len(images) and os.listdir(tmp_path) == []
    for path, line in zip(images, lines):
        match = re.fullmatch(rf"{re.escape(path)}: (\d+) instances \(((circle|triangle|square) \d+(, )?)+\)", line)
        assert match, line
        per_class = [int(n) for n in re.findall(r"[a-z]+ (\d+)", line.split("(", 1)[1])]
        assert sum(per_class) == int(match.group(1)) > 0


def test_detector_threshold_is_the_config_vis_threshold_unless_given(images, retinanet_weights, capsys):
    def counts(*args: str, vis_threshold: str) -> list[str]:
        demo.main(["--config-file", QUICKSTART_RETINANET, "--input", images[0], *args, "--opts", "MODEL.WEIGHTS",
                   retinanet_weights, *DET_INPUT, "TEST.VIS_THRESHOLD", vis_threshold])
        return [line.split(": ", 1)[1] for line in printed_lines(capsys)]

    everything = counts(vis_threshold="0.0")
    assert everything[0].split()[0] != "0"
    assert counts(vis_threshold="1.01") == ["0 instances"]  # scores are below 1
    assert counts("--confidence-threshold", "0.0", vis_threshold="1.01") == everything
    assert counts("--confidence-threshold", "1.01", vis_threshold="0.0") == ["0 instances"]
    assert demo.get_parser().parse_args(["--config-file", "c", "--input", "i"]).confidence_threshold is None
    assert "TEST.VIS_THRESHOLD" in demo.get_parser().format_help()
