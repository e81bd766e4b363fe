"""What the landmark bound costs in accuracy, on trained weights: features, top-1 and detection.

    # 1. trained weights whose landmarks mean something (25 per stage at 160 px; ~65 min on 2 cores)
    python classification/train.py --config classification/configs/shapes160_soft_norm_half.yaml
    # 2. per-stage feature error and top-1 of each bound at 2x, 3x, 4x that size (native images)
    python benchmarks/landmark_bound.py features
    # 3. RetinaNet fine-tuned from those weights at short side 512, bounds 100 and 196 and faithful,
    #    same seeds (about 12 / 25 / 35 min per run on 2 cores)
    python benchmarks/landmark_bound.py detection --seeds 1 2
    # 4. seconds per training iteration of that detector in each setting (quiet machine)
    python benchmarks/landmark_bound.py cost

Each command keeps its raw numbers under .cache/bench/. Finished detection runs are kept
(output/landmark_bound/<run>/results.json) and not run again.

Writing (the rule of every benchmark script that writes, see backbone.doc_target): a full run of a
command writes its own section of docs/BENCHMARKS.md (landmark-features, landmark-detection,
landmark-cost; only the text between its markers changes, see benchmarks/doc_sections.py);
--write FILE writes into FILE instead; --no-write prints only. A partial run prints only unless
--write FILE is given: features with --scales or --bounds other than the defaults, detection with
--max-iter (a smoke run), cost with --bounds or --size other than the defaults. Each table is
headed by one line naming the machine, thread count, torch, timm (and detectron2 for detection and
cost) versions, the command and the date.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Before torch loads OpenMP: spin-waiting threads slow everything down on a shared CPU (docs/IMPLEMENTATION.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# benchmarks/ is on sys.path when this file runs as a script
from backbone import DOC, ROOT, add_write_options, command_line, doc_target, header_line  # noqa: E402
from doc_sections import write_section  # noqa: E402

CACHE = ROOT / ".cache" / "bench"
PRETRAINED = ROOT / "output" / "landmark_bound" / "pretrain" / "best.pth"
DET_CONFIG = ROOT / "benchmarks" / "configs" / "retinanet_landmark_bound_512.yaml"
DET_OUTPUT = ROOT / "output" / "landmark_bound"
BOUNDS = (49, 100, 196, 400)
TRAIN_SIZE = 160
FEATURE_SCALES = [1, 2, 3, 4]  # features: input sizes, in multiples of TRAIN_SIZE
RUN_BOUNDS = [100, 196, 0]  # detection and cost: the settings (0: faithful)
COST_SIZE = (512, 704)  # cost: the input size (H, W)
PACKAGES = {"features": ("torch", "timm"), "detection": ("torch", "timm", "detectron2"),
            "cost": ("torch", "timm", "detectron2")}  # the versions named above each command's table


def write_doc(which: str, intro: str, table: str, path: Path = DOC, command: str | None = None) -> None:
    """The section of subcommand ``which`` (features, detection, cost) in the benchmarks document at
    ``path``: ``intro``, then the header line and ``table`` (nothing else in the file changes)."""
    import torch

    header = header_line(command or command_line(), torch.get_num_threads(), PACKAGES[which])
    write_section(path, f"landmark-{which}", f"{intro}\n\n{header}\n\n{table}",
                  f"benchmarks/landmark_bound.py {which}")


def setting_name(bound) -> str:
    """How the tables name a landmark setting."""
    return "faithful" if bound is None else f"<= {bound}"


# ------------------------------------------------------------------------------------- features
def load_classifier(path: Path):
    """The pretrained classifier, built from the options saved in its checkpoint (EMA weights)."""
    import timm

    import soft_d2
    from soft_d2.model.checkpoint import read_checkpoint

    if not path.is_file():
        raise SystemExit(f"{path} does not exist: train it first with\n  python classification/train.py "
                         "--config classification/configs/shapes160_soft_norm_half.yaml")
    state = read_checkpoint(path)
    cfg = state["config"]
    model = timm.create_model(cfg["model"], num_classes=state["state_dict"]["head.weight"].shape[0],
                              kernel_method="torch", **cfg["model_kwargs"])
    soft_d2.load_checkpoint(model, state, use_ema=True)
    return model.eval()


def _normalized(images):
    """HWC uint8 images -> one normalized NCHW float batch (ImageNet mean/std, as in training)."""
    import numpy as np
    import torch
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    x = torch.from_numpy(np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255 for im in images]))
    mean, std = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    return (x.permute(0, 3, 1, 2) - mean) / std


def val_images(size: int):
    """The val split rendered natively at ``size`` px (written once under datasets/), and its labels."""
    import torch
    from PIL import Image

    from soft_d2.data import shapes_classification as cls

    folder = Path(cls.ensure_dataset(native_size=size, splits=("val",))) / "val"
    images, labels = [], []
    for label, name in enumerate(sorted(p.name for p in folder.iterdir())):
        for path in sorted((folder / name).glob("*.jpg")):
            images.append(Image.open(path))
            labels.append(label)
    return _normalized(images), torch.tensor(labels)


def train_images(size: int, per_class: int, class_names: list[str]):
    """The first ``per_class`` training images of each class rendered natively at ``size`` px
    (in memory), labelled like the val folders (sorted class names)."""
    import torch

    from soft_d2.data import shapes_classification as cls

    images, labels = [], []
    for index in range(per_class * len(cls.CLASSES)):  # classes take turns
        image, label = cls.generate_image("train", index, size, native=True)
        images.append(image)
        labels.append(class_names.index(cls.CLASSES[label]))
    return _normalized(images), torch.tensor(labels)


def pre_logits(model, x, batch: int):
    """Class-token features (the head's input) of the faithful function, batch by batch."""
    import torch

    model.set_max_landmarks(None)
    with torch.no_grad():
        return torch.cat([model.forward_head(model.forward_features(x[i:i + batch]), pre_logits=True)
                          for i in range(0, len(x), batch)])


def refit_head(model, features, labels, steps: int = 100):
    """A copy of the classifier head refit (L-BFGS, cross-entropy + a little L2, from the trained
    head) to features at a new input size: a linear probe that separates what the features still
    carry from the resolution shift that the trained head does not cover."""
    import copy

    import torch

    head = copy.deepcopy(model.head)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(features), labels) + 1e-4 * head.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return head.eval()


def landmark_counts(model, size: int, bound) -> list[int]:
    from soft_d2.model.attention import ConvLandmarks

    counts = []
    grid = size
    for i, stage in enumerate(model.stages[:3]):
        grid = math.ceil(grid / (4 if i == 0 else 2))
        layer = next(m for m in stage.modules() if isinstance(m, ConvLandmarks))
        saved = layer.max_landmarks
        layer.max_landmarks = bound
        h, w = layer.input_size(grid, grid)
        layer.max_landmarks = saved
        counts.append((h // layer.sr_ratio) * (w // layer.sr_ratio))
    return counts


def run_features(args) -> None:
    import torch

    from soft_d2.data import shapes_classification as cls

    model = load_classifier(Path(args.checkpoint))
    settings = [None, *args.bounds]
    names = sorted(cls.CLASSES)  # ImageFolder's label order, the trainer's
    rows = []
    for scale in args.scales:
        size = TRAIN_SIZE * scale
        start = time.time()
        x_train, y_train = train_images(size, args.probe_images, names)
        probe = refit_head(model, pre_logits(model, x_train, args.batch), y_train)
        x, y = val_images(size)
        sq_err = {b: [0.0] * 4 for b in args.bounds}
        sq_ref = [0.0] * 4
        correct = {b: 0 for b in settings}
        correct_probe = {b: 0 for b in settings}
        with torch.no_grad():
            for i in range(0, len(x), args.batch):
                xb, yb = x[i:i + args.batch], y[i:i + args.batch]
                outputs = {}
                for bound in settings:
                    model.set_max_landmarks(bound)
                    final, maps = model.forward_intermediates(xb)
                    outputs[bound] = maps
                    features = model.forward_head(final, pre_logits=True)
                    correct[bound] += (model.head(features).argmax(-1) == yb).sum().item()
                    correct_probe[bound] += (probe(features).argmax(-1) == yb).sum().item()
                for s, ref in enumerate(outputs[None]):
                    sq_ref[s] += ref.double().square().sum().item()
                    for bound in args.bounds:
                        sq_err[bound][s] += (outputs[bound][s].double() - ref.double()).square().sum().item()
        print(f"{size}px: {len(x_train)} probe + {len(x)} val images in {time.time() - start:.0f} s", flush=True)
        for bound in settings:
            rows.append(dict(size=size, scale=scale, bound=bound, landmarks=landmark_counts(model, size, bound),
                             top1=100 * correct[bound] / len(x), top1_probe=100 * correct_probe[bound] / len(x),
                             images=len(x), probe_images=len(x_train),
                             rel_err=None if bound is None else [math.sqrt(e / r) for e, r in zip(sq_err[bound], sq_ref)]))
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / "landmark_bound_features.json").write_text(json.dumps(rows, indent=1))
    intro, table = features_doc(rows, Path(args.checkpoint), args.probe_images)
    print(intro + "\n\n" + table)
    partial = list(args.scales) != FEATURE_SCALES or list(args.bounds) != list(BOUNDS)
    target = doc_target(args.write, args.no_write, partial)
    if target is not None:
        write_doc("features", intro, table, target)


def features_doc(rows: list[dict], checkpoint: Path, probe_images: int) -> tuple[str, str]:
    """The features section's text: (what was measured, the table)."""
    checkpoint = checkpoint.resolve()
    shown = checkpoint.relative_to(ROOT) if checkpoint.is_relative_to(ROOT) else checkpoint
    intro = (f"Weights: `{shown}` (EMA), trained at {TRAIN_SIZE} px (25 landmarks per "
             f"stage). {rows[0]['images']} validation images rendered natively at each size (the same scenes at every "
             "size). Relative error = ||maps(bound) - maps(faithful)|| / ||maps(faithful)|| over the whole validation set, "
             "per stage output. Top-1 with the trained head, and with the head refit at that size (L-BFGS on the "
             f"faithful features of the first {probe_images} training images per class, rendered at that size).")
    lines = ["| input | landmarks per stage 1 / 2 / 3 | setting | top-1 (%), trained head | top-1 (%), head refit | "
             "rel. error res2 / res3 / res4 / res5 |",
             "|---|---|---|---:|---:|---|"]
    for r in rows:
        err = "-" if r["rel_err"] is None else " / ".join(f"{e:.4f}" for e in r["rel_err"])
        setting = setting_name(r["bound"])
        lines.append(f"| {r['size']}x{r['size']} ({r['scale']}x) | {' / '.join(map(str, r['landmarks']))} | {setting} | "
                     f"{r['top1']:.1f} | {r['top1_probe']:.1f} | {err} |")
    return intro, "\n".join(lines)


# ------------------------------------------------------------------------------------ detection
def run_name(bound, seed: int) -> str:
    return f"{'faithful' if bound is None else f'bound{bound}'}_seed{seed}"


def run_detection(args) -> None:
    if not Path(args.checkpoint).is_file():
        raise SystemExit(f"{args.checkpoint} does not exist: run the classification pretraining first (see --help)")
    settings = [None if b == 0 else b for b in args.bounds]
    for seed in args.seeds:
        for bound in settings:
            out = DET_OUTPUT / run_name(bound, seed)
            if (out / "results.json").exists():
                print(f"{out.name}: done, kept", flush=True)
                continue
            # A run that stops part-way resumes from its last checkpoint when started again.
            resume = ["--resume"] if (out / "last_checkpoint").exists() else []
            cmd = [sys.executable, str(ROOT / "train_net.py"), "--config-file", str(DET_CONFIG), *resume,
                   "MODEL.WEIGHTS", str(args.checkpoint), "MODEL.SOFT.MAX_LANDMARKS", str(bound or 0),
                   "SEED", str(seed), "OUTPUT_DIR", str(out)] + (["SOLVER.MAX_ITER", str(args.max_iter)] if args.max_iter else [])
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, cwd=ROOT)
    rows = detection_rows()
    intro, table = detection_doc(rows)
    print(intro + "\n\n" + table)
    target = doc_target(args.write, args.no_write, partial=args.max_iter is not None)
    if target is not None:
        write_doc("detection", intro, table, target)


def detection_rows() -> list[dict]:
    """Every finished run under output/landmark_bound/ (all settings and seeds), also kept as JSON."""
    rows = []
    for path in sorted(DET_OUTPUT.glob("*_seed*/results.json")):
        match = re.fullmatch(r"(faithful|bound(\d+))_seed(\d+)", path.parent.name)
        if match:
            bbox = json.loads(path.read_text())["bbox"]
            bound = int(match.group(2)) if match.group(2) else None
            rows.append(dict(bound=bound, seed=int(match.group(3)),
                             **{k: bbox[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}))
    rows.sort(key=lambda r: (r["bound"] is None, r["bound"] or 0, r["seed"]))
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / "landmark_bound_detection.json").write_text(json.dumps(rows, indent=1))
    return rows


def detection_doc(rows: list[dict]) -> tuple[str, str]:
    """The detection section's text: (what was run, the table of every run and each setting's mean)."""
    settings = list(dict.fromkeys(r["bound"] for r in rows))
    intro = (f"Config: `{DET_CONFIG.relative_to(ROOT)}` with `MODEL.WEIGHTS` = the pretrained weights above, "
             "`MODEL.SOFT.MAX_LANDMARKS` as shown, `SEED` as shown; validation on the 100 built-in val images at "
             "short side 512.")
    lines = ["| setting | seed | box AP | AP50 | AP75 | APs | APm | APl |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        setting = setting_name(r["bound"])
        lines.append(f"| {setting} | {r['seed']} | {r['AP']:.1f} | {r['AP50']:.1f} | {r['AP75']:.1f} | {r['APs']:.1f} | "
                     f"{r['APm']:.1f} | {r['APl']:.1f} |")
    for bound in settings:
        mine = [r for r in rows if r["bound"] == bound]
        if len(mine) > 1:
            lines.append(f"| {setting_name(bound)} | mean | {statistics.mean(r['AP'] for r in mine):.1f} | "
                         f"{statistics.mean(r['AP50'] for r in mine):.1f} | {statistics.mean(r['AP75'] for r in mine):.1f} | | | |")
    return intro, "\n".join(lines)


# ----------------------------------------------------------------------------------------- cost
def one_cost_case(bound, steps: int, height: int, width: int) -> dict:
    """Median seconds of full training iterations (forward, backward, AdamW) of the experiment's
    detector on a fixed batch of four images with objects; runs in its own process."""
    import torch
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage

    from soft_d2.config import load_config
    from soft_d2.d2 import autocast_dtype, build_optimizer

    cfg = load_config(str(DET_CONFIG), ["MODEL.SOFT.MAX_LANDMARKS", str(bound or 0), "MODEL.WEIGHTS", ""])
    model = build_model(cfg).train()
    optimizer = build_optimizer(cfg, model)
    gen = torch.Generator().manual_seed(0)
    batch = []
    for _ in range(cfg.SOLVER.IMS_PER_BATCH):
        inst = Instances((height, width))
        inst.gt_boxes = Boxes(torch.tensor([[40.0, 60.0, 200.0, 220.0], [300.0, 100.0, 500.0, 400.0]]))
        inst.gt_classes = torch.tensor([0, 2])
        batch.append(dict(image=torch.randint(0, 256, (3, height, width), generator=gen, dtype=torch.uint8),
                          height=height, width=width, instances=inst))
    times = []
    with EventStorage():  # the detector logs its statistics there
        for i in range(steps + 1):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=autocast_dtype(cfg.SOLVER.AMP.PRECISION), enabled=cfg.SOLVER.AMP.ENABLED):
                losses = model(batch)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
            if i:  # the first step warms up
                times.append(time.perf_counter() - start)
    import resource

    return dict(bound=bound, time_s=statistics.median(times), peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def run_cost(args) -> None:
    settings = [None if b == 0 else b for b in args.bounds]
    results = {b: [] for b in settings}
    for round_ in range(args.rounds):
        for bound in settings:  # alternating: noise hits both settings alike
            cmd = [sys.executable, __file__, "cost", "--one", json.dumps(bound), "--steps", str(args.steps),
                   "--size", str(args.size[0]), str(args.size[1])]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
            result = json.loads(out.strip().splitlines()[-1])
            results[bound].append(result)
            print(f"round {round_ + 1}: {run_name(bound, 0)[:-6]} {result['time_s']:.2f} s, {result['peak_mb']:.0f} MB", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / "landmark_bound_cost.json").write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1))
    intro, table = cost_doc(results, args.size, args.steps, args.rounds)
    print(intro + "\n\n" + table)
    partial = list(args.bounds) != RUN_BOUNDS or tuple(args.size) != COST_SIZE
    target = doc_target(args.write, args.no_write, partial)
    if target is not None:
        write_doc("cost", intro, table, target)


def cost_doc(results: dict, size, steps: int, rounds: int) -> tuple[str, str]:
    """The cost section's text: (what was timed, the table). ``results``: per setting (None:
    faithful), one_cost_case's result of each round."""
    settings = list(results)
    base = statistics.median(r["time_s"] for r in results[settings[0]])
    intro = (f"One training iteration of the experiment's detector (batch of 4 images of {size[0]}x{size[1]}, "
             f"autocast as configured): median of {steps} steps after a warm-up, per round; {rounds} rounds "
             "alternating the settings, each case in its own process.")
    lines = ["| setting | s / iteration (median of rounds) | rounds | peak memory (MB) | vs first row |",
             "|---|---:|---|---:|---:|"]
    for bound in settings:
        times = [r["time_s"] for r in results[bound]]
        lines.append(f"| {setting_name(bound)} | {statistics.median(times):.2f} | {', '.join(f'{t:.2f}' for t in times)} | "
                     f"{max(r['peak_mb'] for r in results[bound]):.0f} | {statistics.median(times) / base:.2f}x |")
    return intro, "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    feat = sub.add_parser("features", help="feature error and top-1 per bound at 2x-4x the training size")
    feat.add_argument("--checkpoint", default=str(PRETRAINED))
    feat.add_argument("--scales", type=int, nargs="+", default=FEATURE_SCALES)
    feat.add_argument("--bounds", type=int, nargs="+", default=list(BOUNDS))
    feat.add_argument("--batch", type=int, default=10)
    feat.add_argument("--probe-images", type=int, default=40, help="training images per class for the refit head")
    add_write_options(feat)
    det = sub.add_parser("detection", help="fine-tune the RetinaNet bounded and faithful")
    det.add_argument("--checkpoint", default=str(PRETRAINED))
    det.add_argument("--seeds", type=int, nargs="+", default=[1])
    det.add_argument("--bounds", type=int, nargs="+", default=RUN_BOUNDS, help="0: faithful")
    det.add_argument("--max-iter", type=int, default=None, help="override SOLVER.MAX_ITER (smoke runs)")
    add_write_options(det)
    cost = sub.add_parser("cost", help="seconds per training iteration, bounded and faithful")
    cost.add_argument("--bounds", type=int, nargs="+", default=RUN_BOUNDS, help="0: faithful")
    cost.add_argument("--rounds", type=int, default=3)
    cost.add_argument("--steps", type=int, default=3)
    cost.add_argument("--size", type=int, nargs=2, default=COST_SIZE, metavar=("H", "W"))
    add_write_options(cost)
    cost.add_argument("--one", help=argparse.SUPPRESS)  # internal: one case, JSON out
    args = parser.parse_args()
    if args.command == "features":
        run_features(args)
    elif args.command == "detection":
        run_detection(args)
    elif args.one is not None:
        print(json.dumps(one_cost_case(json.loads(args.one), args.steps, *args.size)))
    else:
        run_cost(args)


if __name__ == "__main__":
    main()
