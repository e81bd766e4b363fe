#!/usr/bin/env python
"""Train and evaluate SOFT detectors (RetinaNet, Mask R-CNN) and segmenters (UperNet) with Detectron2.

    python train_net.py --config-file configs/quickstart/mask_rcnn_soft_norm_tiny_shapes.yaml
    python train_net.py --config-file configs/COCO-Detection/retinanet_soft_tiny_norm_fpn_1x.yaml --num-gpus 8
    python train_net.py --config-file configs/quickstart/upernet_soft_norm_tiny_shapes.yaml
    python train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file CONFIG --resume          # continue from OUTPUT_DIR/last_checkpoint
    python train_net.py --config-file configs/examples/mask_rcnn_soft_norm_tiny_example_coco.yaml  # own COCO data

Own COCO-format data sets are named in the config (DATASETS.REGISTER_COCO_INSTANCES): docs/GETTING_STARTED.md.

Without a GPU, MODEL.DEVICE falls back to the CPU and --num-gpus N starts N processes (GLOO).
"""
from __future__ import annotations

import os

# Before torch loads OpenMP: spin-waiting threads slow everything down on a shared CPU (docs/IMPLEMENTATION.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json
import logging

from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import COCOEvaluator, SemSegEvaluator, verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from soft_d2.config import load_config
from soft_d2.d2 import SoftDetectionCheckpointer, SoftTrainer, prepare_dataset
from soft_d2.detection import DetectionDatasetMapper, check_num_classes
from soft_d2.detection.visualize import save_dataset_predictions
from soft_d2.ops.roi_align import use_parallel_roi_align_backward
from soft_d2.segmentation import build_sem_seg_mapper
from soft_d2.segmentation.visualize import save_sem_seg_predictions
from soft_d2.utils.cpu_allocator import keep_freed_memory
from soft_d2.utils.files import atomic_write
from soft_d2.utils.runtime import share_cpu_threads

logger = logging.getLogger("soft_d2.train_net")


class Trainer(SoftTrainer):
    """The SOFT trainer (soft_d2.d2.SoftTrainer: optimizer, schedules, checkpoints, AMP, DDP) with each
    task's data and evaluation: COCO-style detection and instance segmentation, or semantic segmentation."""

    @classmethod
    def build_train_loader(cls, cfg):
        loader = build_detection_train_loader(cfg, mapper=cls.build_mapper(cfg, is_train=True))
        for name in cfg.DATASETS.TRAIN:  # their categories are known once the loader has read them
            check_num_classes(cfg, name)
        return loader

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        loader = build_detection_test_loader(cfg, dataset_name, mapper=cls.build_mapper(cfg, is_train=False))
        check_num_classes(cfg, dataset_name)  # before any evaluation (--eval-only too)
        return loader

    @staticmethod
    def build_mapper(cfg, is_train: bool):
        if is_semantic(cfg):  # crop / ratio resize / flip / photometric for training, short side for test
            return build_sem_seg_mapper(cfg, is_train)
        return DetectionDatasetMapper(cfg, is_train=is_train)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        prepare_dataset(dataset_name)
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        if is_semantic(cfg):  # mIoU, pixel accuracy
            return SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)
        tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
        return COCOEvaluator(dataset_name, tasks=tasks, distributed=True, output_dir=output_folder)


def is_semantic(cfg) -> bool:
    return cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor"


def setup(args):
    cfg = load_config(args.config_file, args.opts)  # a laptop without CUDA: same config, CPU run
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="soft_d2")
    return cfg


def prepare_all(cfg) -> None:
    """Generate built-in data (once, by the main process) and check that every data set exists."""
    names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    if comm.is_main_process():
        for name in names:
            prepare_dataset(name)
    comm.synchronize()
    for name in names:
        prepare_dataset(name)


def save_results(cfg, results) -> None:
    if not comm.is_main_process() or not results:
        return
    text = json.dumps(results, indent=1)
    atomic_write(os.path.join(cfg.OUTPUT_DIR, "results.json"), lambda f: f.write(text.encode()))


def save_picture(cfg, model) -> None:
    if cfg.TEST.VIS_IMAGES > 0 and comm.is_main_process() and len(cfg.DATASETS.TEST):
        model = model.module if isinstance(model, DistributedDataParallel) else model
        draw = save_sem_seg_predictions if is_semantic(cfg) else save_dataset_predictions
        path = draw(cfg, model, cfg.DATASETS.TEST[0], cfg.TEST.VIS_IMAGES, os.path.join(cfg.OUTPUT_DIR, "predictions.jpg"))
        logger.info(f"Prediction | ground truth of {cfg.TEST.VIS_IMAGES} images of {cfg.DATASETS.TEST[0]} "
                    f"drawn to {path}")


def main(args):
    cfg = setup(args)
    if cfg.MODEL.DEVICE == "cpu":
        share_cpu_threads(comm.get_local_size())
        keep_freed_memory()
        use_parallel_roi_align_backward()  # torchvision's CPU kernel runs on one thread
    prepare_all(cfg)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpointer = SoftDetectionCheckpointer.from_config(cfg, model, save_dir=cfg.OUTPUT_DIR)
        if not cfg.MODEL.WEIGHTS and not (args.resume and checkpointer.has_checkpoint()):
            # Detectron2 would evaluate the random initialization
            raise ValueError("--eval-only needs weights to evaluate: pass MODEL.WEIGHTS path/to/model_final.pth "
                             "(or --resume with a last_checkpoint in OUTPUT_DIR)")
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        save_results(cfg, results)
        save_picture(cfg, model)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    results = trainer.train()
    results = results if results is not None else getattr(trainer, "_last_eval_results", None)
    save_results(cfg, results)
    save_picture(cfg, trainer.model)
    return results


def parse_args(argv=None):
    return default_argument_parser().parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
