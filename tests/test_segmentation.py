"""UperNet head, segmentation data (built-in label maps, ADE20K checks), augmentation, poly schedule
and the ADE20K configs (built and stepped at a small input size)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures.masks import polygons_to_bitmask
from PIL import Image

import train_net
from segmentation_helpers import ADE20K_CONFIGS, QUICKSTART_UPERNET, SMALL_SOFT, load_cfg, make_small_sem_seg
from soft_d2.data import shapes
from soft_d2.d2 import prepare_dataset
from soft_d2.segmentation.datasets import label_map
from soft_d2.segmentation.head import cross_entropy_ignoring
from soft_d2.segmentation.mapper import PhotometricDistortion, RandomRatioResize, build_sem_seg_mapper
from soft_d2.d2.schedule import build_lr_scheduler
from soft_d2.segmentation.upernet import FCNHead, UperNetDecoder


# ---------------------------------------------------------------- the head (plain PyTorch)

@pytest.mark.parametrize("sizes", [[(25, 19), (13, 10), (7, 5), (4, 3)], [(32, 48), (16, 24), (8, 12), (4, 6)]])
def test_decoder_logits_at_finest_stride_for_odd_sizes(sizes):
    decoder = UperNetDecoder([8, 16, 24, 32], num_classes=5, channels=16).eval()
    feats = [torch.randn(2, c, h, w) for c, (h, w) in zip([8, 16, 24, 32], sizes)]
    assert decoder(feats).shape == (2, 5, *sizes[0])


def test_decoder_uses_every_level_and_the_pyramid_pooling():
    torch.manual_seed(0)
    decoder = UperNetDecoder([8, 16, 24, 32], num_classes=3, channels=16).eval()
    feats = [torch.randn(1, c, 16 // 2 ** i, 16 // 2 ** i) for i, c in enumerate([8, 16, 24, 32])]
    base = decoder(feats)
    for level in range(4):  # changing any one input map changes the logits
        changed = list(feats)
        changed[level] = feats[level] + 1.0
        assert not torch.allclose(decoder(changed), base, atol=1e-5), level
    assert [b[0].output_size for b in decoder.ppm.branches] == [1, 2, 3, 6]


def test_decoder_rejects_wrong_number_of_maps():
    decoder = UperNetDecoder([8, 16], num_classes=3, channels=8)
    with pytest.raises(ValueError, match="expected 2 maps"):
        decoder([torch.randn(1, 8, 8, 8)])
    with pytest.raises(ValueError, match="at least 2"):
        UperNetDecoder([8], num_classes=3)


def test_fcn_head_keeps_resolution():
    assert FCNHead(24, 7, channels=8).eval()(torch.randn(2, 24, 5, 9)).shape == (2, 7, 5, 9)


def test_cross_entropy_ignores_255_and_is_zero_without_labels():
    logits = torch.randn(2, 4, 4, 4, requires_grad=True)
    targets = torch.randint(0, 4, (2, 16, 16))
    targets[:, :8] = 255
    up = F.interpolate(logits, size=(16, 16), mode="bilinear", align_corners=False)
    keep = targets != 255
    expected = F.cross_entropy(up.permute(0, 2, 3, 1)[keep], targets[keep])
    assert cross_entropy_ignoring(logits, targets, 255).item() == pytest.approx(expected.item(), rel=1e-5)
    empty = cross_entropy_ignoring(logits, torch.full((2, 16, 16), 255), 255)
    empty.backward()
    assert empty.item() == 0.0 and torch.isfinite(logits.grad).all()


# ---------------------------------------------------------------- the head in Detectron2

def small_segmentor(opts=()):
    cfg = load_cfg(QUICKSTART_UPERNET, SMALL_SOFT + list(opts))
    return cfg, build_model(cfg)


def batch(sizes, num_classes=4, with_labels=True):
    out = []
    for h, w in sizes:
        d = {"image": torch.randint(0, 256, (3, h, w)).float(), "height": 2 * h, "width": 2 * w}
        if with_labels:
            label = torch.randint(0, num_classes, (h, w))
            label[:2] = 255
            d["sem_seg"] = label
        out.append(d)
    return out


def test_training_losses_and_every_parameter_gets_a_gradient():
    _, model = small_segmentor()
    model.train()
    losses = model(batch([(70, 97), (64, 64)]))
    assert set(losses) == {"loss_sem_seg", "loss_sem_seg_aux"}
    sum(losses.values()).backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    _, no_aux = small_segmentor(["MODEL.SEM_SEG_HEAD.AUX_LOSS_WEIGHT", "0.0"])
    assert no_aux.sem_seg_head.aux_head is None
    assert set(no_aux.train()(batch([(64, 64), (64, 64)]))) == {"loss_sem_seg"}


def test_inference_gives_logits_at_the_requested_size_without_the_aux_head():
    _, model = small_segmentor()
    model.eval()
    calls = []
    model.sem_seg_head.aux_head.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        out = model(batch([(70, 97), (33, 65)], with_labels=False))
    assert [tuple(o["sem_seg"].shape) for o in out] == [(4, 140, 194), (4, 66, 130)]
    assert calls == []


def test_overfits_one_batch():
    torch.manual_seed(0)
    cfg, model = small_segmentor(["SOLVER.BASE_LR", "0.01", "MODEL.SEM_SEG_HEAD.DROPOUT", "0.0"])
    model.train()
    data = batch([(64, 64), (64, 64)])
    for d in data:  # learnable labels: 16x16 blocks of a class, coloured by their class (plus noise)
        blocks = torch.randint(0, 4, (4, 4))
        d["sem_seg"] = blocks.repeat_interleave(16, 0).repeat_interleave(16, 1)
        d["image"] = (d["sem_seg"] * 60.0)[None].repeat(3, 1, 1) + torch.randn(3, 64, 64) * 10
    optimizer = train_net.Trainer.build_optimizer(cfg, model)
    history = []
    for _ in range(25):  # AdamW moves each weight by <= lr per step: the classifier needs a few dozen
        loss = model(data)["loss_sem_seg"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert history[-1] < 0.55 * history[0], history


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="MODEL.SEM_SEG_HEAD.IN_FEATURES"):
        small_segmentor(["MODEL.SOFT.OUT_FEATURES", "['res3', 'res4', 'res5']"])
    with pytest.raises(ValueError, match="MODEL.SEM_SEG_HEAD.NORM"):
        small_segmentor(["MODEL.SEM_SEG_HEAD.NORM", "LayerNormX"])
    with pytest.raises(ValueError, match="AUX_IN_FEATURE"):
        small_segmentor(["MODEL.SEM_SEG_HEAD.AUX_IN_FEATURE", "res6"])
    with pytest.raises(ValueError, match="MODEL.SEM_SEG_HEAD.CLASSIFIER_INIT_STD must be positive"):
        small_segmentor(["MODEL.SEM_SEG_HEAD.CLASSIFIER_INIT_STD", "0.0"])


@pytest.mark.parametrize("std", [0.01, 0.3])
def test_classifier_init_std_sets_both_classifiers(std):
    torch.manual_seed(0)
    _, model = small_segmentor(["MODEL.SEM_SEG_HEAD.CLASSIFIER_INIT_STD", str(std), "MODEL.SEM_SEG_HEAD.CONVS_DIM", "128",
                                "MODEL.SEM_SEG_HEAD.AUX_CONVS_DIM", "64"])  # 512 and 256 weights: std within ~10%
    head = model.sem_seg_head
    for classifier in (head.decoder.classifier, head.aux_head.classifier):
        weight = classifier.weight.detach()
        assert weight.numel() >= 256 and weight.std().item() == pytest.approx(std, rel=0.15)
        assert torch.count_nonzero(classifier.bias) == 0


# ---------------------------------------------------------------- the ADE20K configs

@pytest.mark.parametrize("config", ADE20K_CONFIGS, ids=["small", "medium"])
def test_ade20k_config_builds_and_steps(config):
    cfg = load_cfg(config)
    # The recipe as documented (docs/MODEL_ZOO.md, config comments).
    assert cfg.MODEL.SEM_SEG_HEAD.NAME == "UperNetHead" and cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 150
    assert tuple(cfg.INPUT.CROP.SIZE) == (512, 512) and tuple(cfg.INPUT.SEG_RESIZE.RATIO_RANGE) == (0.5, 2.0)
    assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR) == (160000, 16, 6e-5)
    assert cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR" and cfg.MODEL.SEM_SEG_HEAD.AUX_LOSS_WEIGHT == 0.4
    assert cfg.DATASETS.TEST == ("ade20k_sem_seg_val",)
    size = "small" if "small" in config else "medium"
    assert cfg.MODEL.SOFT.VARIANT == f"soft_norm_{size}" and size in cfg.MODEL.WEIGHTS
    model = build_model(cfg).train()
    optimizer = train_net.Trainer.build_optimizer(cfg, model)
    scheduler = train_net.Trainer.build_lr_scheduler(cfg, optimizer)
    before = model.sem_seg_head.decoder.classifier.weight.detach().clone()
    losses = model(batch([(64, 96), (64, 96)], num_classes=150))  # a small input: the recipe's 512 crops are slow on CPU
    assert set(losses) == {"loss_sem_seg", "loss_sem_seg_aux"}
    assert losses["loss_sem_seg"].item() == pytest.approx(np.log(150), rel=0.05)  # near-uniform start
    sum(losses.values()).backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    optimizer.step()
    scheduler.step()
    assert not torch.equal(model.sem_seg_head.decoder.classifier.weight, before)
    model.eval()
    with torch.no_grad():
        out = model(batch([(40, 72)], num_classes=150, with_labels=False))
    assert out[0]["sem_seg"].shape == (150, 80, 144)


def test_evaluator_and_mapper_follow_the_task(tmp_path, monkeypatch):
    from detectron2.evaluation import COCOEvaluator, SemSegEvaluator

    from detection_helpers import QUICKSTART_RETINANET, make_small_builtin
    root = str(tmp_path / "datasets")
    make_small_sem_seg(root, 2, 2)
    make_small_builtin(root, 2, 2)
    monkeypatch.setenv("DETECTRON2_DATASETS", root)
    seg = load_cfg(QUICKSTART_UPERNET, ["OUTPUT_DIR", str(tmp_path / "seg")])
    det = load_cfg(QUICKSTART_RETINANET, ["OUTPUT_DIR", str(tmp_path / "det")])
    assert isinstance(train_net.Trainer.build_evaluator(seg, "soft_shapes_sem_seg_val"), SemSegEvaluator)
    assert isinstance(train_net.Trainer.build_evaluator(det, "soft_shapes_val"), COCOEvaluator)
    record = DatasetCatalog.get("soft_shapes_sem_seg_train")[0]
    mapped = train_net.Trainer.build_mapper(seg, is_train=True)(record)
    assert mapped["image"].shape[-2:] == mapped["sem_seg"].shape
    assert max(mapped["sem_seg"].shape) <= 192
    assert set(mapped["sem_seg"].unique().tolist()) <= {0, 1, 2, 3, 255}


# ---------------------------------------------------------------- data

def test_label_maps_match_the_detection_annotations():
    image, labels = label_map("val", 3)
    _, objects = shapes.generate_image("val", 3)
    assert labels.shape == (image.height, image.width) and labels.dtype == np.uint8
    for obj in objects:
        mask = polygons_to_bitmask([np.asarray(p) for p in obj["segmentation"]], image.height, image.width)
        assert (labels[mask] == obj["category"] + 1).mean() > 0.99
        assert abs(int(mask.sum()) - obj["area"]) <= 0.1 * obj["area"] + 20  # polygons trace the visible pixels
    assert (labels == 0).any() and set(np.unique(labels)) <= {0, 1, 2, 3}


def test_builtin_set_is_generated_on_first_use_and_evaluable(tmp_path, monkeypatch):
    root = str(tmp_path / "datasets")
    folder = make_small_sem_seg(root, train_images=3, val_images=2)
    monkeypatch.setenv("DETECTRON2_DATASETS", root)
    records = DatasetCatalog.get("soft_shapes_sem_seg_val")
    assert len(records) == 2 and all(r["file_name"].startswith(folder) for r in records)
    meta = MetadataCatalog.get("soft_shapes_sem_seg_val")
    assert meta.stuff_classes == ["background", "circle", "triangle", "square"] and meta.ignore_label == 255
    label = np.asarray(Image.open(records[0]["sem_seg_file_name"]))
    expected = label_map("val", 0)[1]
    assert np.array_equal(label, expected)  # PNG: lossless
    assert [n for n in os.listdir(folder) if n.startswith(".")] == []  # no temporary folder left behind


def test_ade20k_missing_gives_a_clear_error(tmp_path, monkeypatch):
    root = tmp_path / "datasets"
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    base = root / "ADEChallengeData2016"
    for name in ("ade20k_sem_seg_train", "ade20k_sem_seg_val"):
        with pytest.raises(FileNotFoundError) as err:
            prepare_dataset(name)
        text = str(err.value)
        assert str(base) in text and "DETECTRON2_DATASETS" in text and "annotations_detectron2" in text
        assert "prepare_ade20k" in text and "soft_shapes_sem_seg_train" in text
    # Images there but not the converted labels: only the labels folder is named as missing.
    (base / "images" / "validation").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(base / "images" / "validation" / "a.jpg")
    with pytest.raises(FileNotFoundError, match="missing [^ ]*annotations_detectron2/validation/. ADE20K"):
        DatasetCatalog.get("ade20k_sem_seg_val")


def test_ade20k_conversion_and_registration_follow_the_current_root(tmp_path, monkeypatch):
    from soft_d2.segmentation.prepare_ade20k import convert_annotations

    root = tmp_path / "datasets"
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    base = root / "ADEChallengeData2016"
    (base / "images" / "validation").mkdir(parents=True)
    (base / "annotations" / "validation").mkdir(parents=True)
    Image.new("RGB", (6, 4)).save(base / "images" / "validation" / "ADE_val_1.jpg")
    raw = np.array([[0, 1, 150, 7]] * 4, dtype=np.uint8)
    Image.fromarray(raw).save(base / "annotations" / "validation" / "ADE_val_1.png")
    assert convert_annotations(str(base), splits=("validation",)) == 1
    converted = np.asarray(Image.open(base / "annotations_detectron2" / "validation" / "ADE_val_1.png"))
    assert converted[0].tolist() == [255, 0, 149, 6]
    records = DatasetCatalog.get("ade20k_sem_seg_val")
    assert len(records) == 1 and records[0]["file_name"] == str(base / "images" / "validation" / "ADE_val_1.jpg")
    assert len(MetadataCatalog.get("ade20k_sem_seg_val").stuff_classes) == 150


# ---------------------------------------------------------------- augmentation and schedule

def test_ratio_resize_keeps_aspect_within_the_scaled_bounds():
    aug = RandomRatioResize(2048, 512, (0.5, 2.0))
    image = np.zeros((300, 400, 3), dtype=np.uint8)
    shorts = []
    for _ in range(50):
        t = aug.get_transform(image)
        assert abs(t.new_w / t.new_h - 4 / 3) < 0.01
        shorts.append(t.new_h)
    assert 256 <= min(shorts) and max(shorts) <= 1024 and max(shorts) - min(shorts) > 300
    with pytest.raises(ValueError, match="RATIO_RANGE"):
        RandomRatioResize(2048, 512, (2.0, 0.5))


def test_photometric_distortion_changes_colours_only():
    np.random.seed(0)
    image = np.random.randint(0, 256, (20, 30, 3), dtype=np.uint8)
    label = np.random.randint(0, 4, (20, 30)).astype(np.uint8)
    changed = 0
    for _ in range(10):
        t = PhotometricDistortion().get_transform(image)
        out = t.apply_image(image)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert np.array_equal(t.apply_segmentation(label), label)
        changed += not np.array_equal(out, image)
    assert changed >= 5


def test_test_mapper_resizes_to_the_short_side(tmp_path, monkeypatch):
    root = str(tmp_path / "datasets")
    make_small_sem_seg(root, 1, 1)
    monkeypatch.setenv("DETECTRON2_DATASETS", root)
    cfg = load_cfg(QUICKSTART_UPERNET)
    record = DatasetCatalog.get("soft_shapes_sem_seg_val")[0]
    mapped = build_sem_seg_mapper(cfg, is_train=False)(dict(record))
    assert min(mapped["image"].shape[-2:]) == cfg.INPUT.MIN_SIZE_TEST
    assert mapped["sem_seg"].shape == mapped["image"].shape[-2:]  # resized with the image (nearest)


def test_poly_schedule_warms_up_then_decays_to_zero():
    cfg = load_cfg(ADE20K_CONFIGS[0], ["SOLVER.MAX_ITER", "100", "SOLVER.WARMUP_ITERS", "10"])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
    scheduler = build_lr_scheduler(cfg, optimizer)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    base = cfg.SOLVER.BASE_LR
    assert lrs[0] == pytest.approx(base * 1e-6, rel=1e-3)
    assert lrs[10] == pytest.approx(base * 0.9, rel=1e-6) and lrs[50] == pytest.approx(base * 0.5, rel=1e-6)
    assert lrs[99] == pytest.approx(base * 0.01, rel=1e-6)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11])) and all(a > b for a, b in zip(lrs[10:], lrs[11:]))
