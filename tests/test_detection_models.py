"""The 8 published COCO configs build, train one step (every parameter gets a gradient, as DDP
without find_unused_parameters needs) and run inference; the Backbone wrapper's contract."""
from __future__ import annotations

import copy

import pytest
import torch
from detectron2.modeling import build_backbone, build_model
from detectron2.utils.events import EventStorage

from detection_helpers import PUBLISHED, SMALL_INPUT, all_parameters_have_grad, load_cfg
from soft_d2.detection import DetectionDatasetMapper
from soft_d2.data.shapes import CATEGORIES, generate_image


@pytest.fixture(scope="module")
def example_files(tmp_path_factory):
    """Two built-in images of different sizes written to files, with their annotations."""
    folder = tmp_path_factory.mktemp("examples")
    records = []
    for index in (0, 1):
        image, objects = generate_image("val", index)
        path = str(folder / f"{index}.jpg")
        image.save(path)
        records.append({"file_name": path, "height": image.height, "width": image.width, "image_id": index,
                        "annotations": [{"bbox": o["bbox"], "bbox_mode": 1, "category_id": o["category"],
                                         "segmentation": o["segmentation"], "iscrowd": 0} for o in objects]})
    return records


def mapped(cfg, records, is_train: bool) -> list[dict]:
    mapper = DetectionDatasetMapper(cfg, is_train=is_train)
    return [mapper(copy.deepcopy(r)) for r in records]


@pytest.mark.parametrize("config", PUBLISHED, ids=lambda p: p.split("/")[-1][:-5])
def test_published_config_trains_a_step_and_infers(config, example_files):
    cfg = load_cfg(config, SMALL_INPUT + ["MODEL.WEIGHTS", "", "MODEL.RETINANET.NUM_CLASSES", str(len(CATEGORIES)),
                                          "MODEL.ROI_HEADS.NUM_CLASSES", str(len(CATEGORIES))])
    assert cfg.SOLVER.IMS_PER_BATCH == 16 and cfg.SOLVER.MAX_ITER == 90000 and cfg.SOLVER.BASE_LR == 1e-4
    assert cfg.INPUT.FORMAT == "RGB" and cfg.MODEL.SOFT.VARIANT.startswith("soft_norm_")
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    batch = mapped(cfg, example_files, is_train=True)
    with EventStorage(0):
        losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    total.backward()
    assert all_parameters_have_grad(model) == []
    model.eval()
    with torch.no_grad():
        outputs = model(mapped(cfg, example_files, is_train=False))
    assert len(outputs) == 2
    for out, record in zip(outputs, example_files):
        assert out["instances"].image_size == (record["height"], record["width"])  # predictions come back in original image coordinates
        if cfg.MODEL.MASK_ON:
            assert out["instances"].has("pred_masks")


def test_backbone_outputs_strides_and_padding():
    cfg = load_cfg(PUBLISHED[4], ["MODEL.BACKBONE.NAME", "build_soft_backbone"])
    backbone = build_backbone(cfg)
    shapes = backbone.output_shape()
    assert {k: v.stride for k, v in shapes.items()} == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
    assert [shapes[k].channels for k in ("res2", "res3", "res4", "res5")] == [64, 128, 320, 512]
    assert backbone.size_divisibility == 32
    assert backbone.padding_constraints["size_divisibility"] == 32
    features = backbone(torch.randn(1, 3, 96, 160))
    assert features["res2"].shape == (1, 64, 24, 40) and features["res5"].shape == (1, 512, 3, 5)
    # The class token is not part of res5; the final norm is applied to it (kept, not pruned).
    assert not isinstance(backbone.model.norm, torch.nn.Identity)
    assert isinstance(backbone.model.head, torch.nn.Identity)


def test_backbone_without_res5_prunes_stage4_and_norm():
    cfg = load_cfg(PUBLISHED[4], ["MODEL.BACKBONE.NAME", "build_soft_backbone", "MODEL.SOFT.OUT_FEATURES",
                                  "['res2', 'res3']"])
    backbone = build_backbone(cfg)
    assert len(backbone.model.stages) == 2 and isinstance(backbone.model.norm, torch.nn.Identity)
    out = backbone(torch.randn(2, 3, 64, 64))
    assert set(out) == {"res2", "res3"}
    sum(v.sum() for v in out.values()).backward()
    assert all_parameters_have_grad(backbone) == []


def test_fpn_levels_and_padding():
    rcnn = build_backbone(load_cfg(PUBLISHED[4]))
    retina = build_backbone(load_cfg(PUBLISHED[0]))
    assert {k: v.stride for k, v in rcnn.output_shape().items()} == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    assert {k: v.stride for k, v in retina.output_shape().items()} == {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}
    for fpn in (rcnn, retina):
        assert fpn.size_divisibility == 32 and fpn.padding_constraints["size_divisibility"] == 32


def test_model_options_reach_the_model():
    cfg = load_cfg(PUBLISHED[4], ["MODEL.SOFT.NEWTON_MAX_ITER", "7", "MODEL.SOFT.KERNEL_METHOD", "torch",
                                  "MODEL.SOFT.STEM_NORM", "SyncBN", "MODEL.SOFT.GRAD_CHECKPOINT", "True"])
    soft = build_backbone(cfg).bottom_up.model
    attn = soft.stages[0].blocks[0].attn
    assert attn.newton_max_iter == 7
    assert soft.grad_checkpointing
    from detectron2.layers import NaiveSyncBatchNorm
    assert isinstance(soft.stages[0].downsample.conv1.bn, NaiveSyncBatchNorm)
    frozen = build_backbone(load_cfg(PUBLISHED[4])).bottom_up.model  # published configs: FrozenBN
    from detectron2.layers import FrozenBatchNorm2d
    assert isinstance(frozen.stages[0].downsample.conv1.bn, FrozenBatchNorm2d)
    with pytest.raises(ValueError, match="STEM_NORM"):
        build_backbone(load_cfg(PUBLISHED[4], ["MODEL.SOFT.STEM_NORM", "LN"]))


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 5])
def test_freeze_at_freezes_the_stem_and_stages_as_for_resnet(freeze_at):
    """MODEL.BACKBONE.FREEZE_AT k: the stem (k >= 1) and res2..res<k> take no gradient, keep their
    BatchNorm statistics and stay in eval mode in training; everything after them trains."""
    from detectron2.layers import FrozenBatchNorm2d

    cfg = load_cfg(PUBLISHED[4], ["MODEL.BACKBONE.FREEZE_AT", str(freeze_at), "MODEL.SOFT.STEM_NORM", "BN",
                                  "MODEL.SOFT.DROP_PATH_RATE", "0.5"])
    backbone = build_backbone(cfg).train()
    soft = backbone.bottom_up.model
    frozen_prefixes = (["stages.0.downsample."] if freeze_at >= 1 else []) + \
        [f"stages.{i}." for i in range(freeze_at - 1)] + (["norm."] if freeze_at == 5 else [])
    for name, p in soft.named_parameters():
        assert p.requires_grad != name.startswith(tuple(frozen_prefixes)), name
    assert isinstance(soft.stages[0].downsample.conv1.bn, FrozenBatchNorm2d) == (freeze_at >= 1)
    assert isinstance(soft.stages[1].downsample.bn, FrozenBatchNorm2d) == (freeze_at >= 3)
    trained_blocks = [m.training for i, stage in enumerate(soft.stages) for m in stage.blocks.modules()
                      if i >= freeze_at - 1]
    assert all(trained_blocks)
    frozen_blocks = [m.training for stage in soft.stages[:max(freeze_at - 1, 0)] for m in stage.modules()]
    assert not any(frozen_blocks)  # no dropout in frozen stages
    x = torch.randn(1, 3, 64, 96)
    sum(f.sum() for f in backbone(x).values()).backward()
    for name, p in soft.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name


@pytest.mark.parametrize("bad", [-1, 6])
def test_freeze_at_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match="MODEL.BACKBONE.FREEZE_AT"):
        build_backbone(load_cfg(PUBLISHED[4], ["MODEL.BACKBONE.FREEZE_AT", str(bad)]))
