"""``bcnn-triton train``: the two-step B-CNN recipe, and the synthetic bilinear-vs-GAP demo."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from tqdm.auto import tqdm

from bcnn_triton.cli.common import (
    configure_logging,
    non_negative_int,
    positive_float,
    positive_int,
    unit_fraction,
)
from bcnn_triton.data import DATASETS, DataConfig, detect_dataset
from bcnn_triton.errors import UserInputError
from bcnn_triton.models import BACKBONES
from bcnn_triton.train import (
    AMP_DTYPES,
    STAGE_DEFAULTS,
    StageResult,
    TrainConfig,
    init_distributed,
    run_training,
    shutdown_distributed,
)

__all__ = ["add_train_parser", "run_train"]

# The synthetic demo (no arguments), sized to finish in about two minutes on 2 CPU cores. The
# backbone stays frozen at its random init, so the two heads see the very same features; lr 3
# instead of the recipe's 1.0 because random features give a descriptor whose class-dependent
# part is small, which lr 1.0 does not learn within the demo's 20 epochs.
DEMO = {
    "backbone": "tiny",
    "image_size": 64,
    "heads": ("bilinear", "gap"),
    "stage": "fc",
    "epochs": {"fc": 20, "all": 8},
    "lr": {"fc": 3.0, "all": STAGE_DEFAULTS["all"]["lr"]},
    "batch_size": 32,
    "workers": 0,
}
# Real data: the published recipe (HaoMood/bilinear-cnn: 55 + 25 epochs, batch 64, 448 px).
RECIPE = {
    "backbone": "vgg16",
    "image_size": 448,
    "heads": ("bilinear",),
    "stage": "both",
    "epochs": {"fc": 55, "all": 25},
    "lr": {stage: values["lr"] for stage, values in STAGE_DEFAULTS.items()},
    "batch_size": 64,
    "workers": min(8, os.cpu_count() or 1),
}

DESCRIPTION = """\
Train a B-CNN with the two-step recipe: stage "fc" trains the classifier on a frozen backbone
(SGD, momentum 0.9, lr 1.0, weight decay 1e-8), stage "all" fine-tunes everything from the fc
stage's best weights (lr 1e-2, weight decay 1e-5). ReduceLROnPlateau on validation accuracy;
the validation split is held out of the training images (--val-fraction, seeded); the test split
is evaluated once per stage, with the weights of the best validation epoch.

With no arguments: a demo on built-in synthetic images whose classes differ only in which
colour goes with which orientation (matched first-order statistics). It trains the tiny
backbone with a bilinear head, then with a global-average-pooling head, and prints both test
accuracies (about two minutes on 2 CPU cores)."""

EPILOG = """\
examples:
  bcnn-triton train                                     # the synthetic demo
  bcnn-triton train --data ~/data/CUB_200_2011 --out runs/cub
                                                        # both stages: runs/cub/fc, runs/cub/all
  bcnn-triton train --data ~/data/CUB_200_2011 --out runs/cub --stage fc --epochs 55
  bcnn-triton train --data ~/data/CUB_200_2011 --out runs/cub --stage all --epochs 25
                                                        # starts from runs/cub/fc/best.pt
  bcnn-triton train --data ~/data/CUB_200_2011 --out runs/cub --resume
  torchrun --nproc_per_node 4 -m bcnn_triton train --data ~/data/CUB_200_2011 \\
      --out runs/cub --batch-size 64                    # 4 GPUs, 16 images each
  torchrun --nproc_per_node 4 --max-restarts 3 -m bcnn_triton train ... --out runs/cub \\
      --auto-resume                                     # restarted workers continue

--out holds, per stage: checkpoint-NNNN.pt (the last two epochs), best.pt (best validation
epoch), metrics.json, metrics.csv and curves.png. With --head both: --out/bilinear, --out/gap."""


def add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train`` and its flags."""
    parser = subparsers.add_parser(
        "train",
        help="train a B-CNN (no arguments: the synthetic bilinear-vs-GAP demo)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        default="synthetic",
        metavar="PATH|synthetic",
        help="dataset folder, or 'synthetic' for generated images (default: synthetic)",
    )
    data.add_argument(
        "--dataset",
        choices=("auto", *DATASETS),
        default="auto",
        help="layout of --data: cub (CUB-200-2011 native files), folder (PATH/<class>/<image>, "
        "or PATH/train + PATH/test), aircraft, cars, flowers (torchvision's layouts); "
        "default: detected from the files",
    )
    data.add_argument(
        "--image-size",
        type=positive_int,
        help="train: resize + random crop; eval: resize + centre crop (default: 448, demo 64)",
    )
    data.add_argument(
        "--val-fraction",
        type=unit_fraction,
        default=0.1,
        help="share of each class's training images held out for validation (default: 0.1)",
    )
    data.add_argument(
        "--test-fraction",
        type=unit_fraction,
        default=0.2,
        help="share held out as test split for a folder without train/ and test/ (default: 0.2)",
    )
    data.add_argument("--bbox-crop", action="store_true", help="CUB: crop to the bounding box")
    data.add_argument(
        "--download",
        action="store_true",
        help="download aircraft / flowers if missing (nothing is downloaded otherwise)",
    )
    data.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="skip unreadable images with a warning (default: stop with an error naming them)",
    )
    data.add_argument(
        "--num-classes",
        type=positive_int,
        default=4,
        help="synthetic data: number of classes (also of colours and of orientations; >= 2)",
    )
    data.add_argument(
        "--train-size",
        type=positive_int,
        default=2048,
        help="synthetic data: training images (validation included; default: 2048)",
    )
    data.add_argument(
        "--test-size",
        type=positive_int,
        default=1024,
        help="synthetic data: test images (default: 1024)",
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "--backbone", choices=BACKBONES, help="feature extractor (default: vgg16; demo: tiny)"
    )
    model.add_argument(
        "--head",
        choices=("bilinear", "gap", "both"),
        help="bilinear pooling, global average pooling, or both one after the other "
        "(default: bilinear; demo: both)",
    )
    model.add_argument(
        "--weights",
        metavar="NAME|PATH|none",
        help="backbone weights: a torchvision name (DEFAULT, IMAGENET1K_V1...), a state-dict "
        "file, or none (default: DEFAULT for torchvision backbones, none for tiny)",
    )
    model.add_argument(
        "--reduce-dim",
        type=positive_int,
        help="1x1 conv to this many channels before pooling (for resnet50/101's 2048)",
    )

    recipe = parser.add_argument_group("recipe")
    recipe.add_argument(
        "--stage",
        choices=("fc", "all", "both"),
        help="fc: classifier on the frozen backbone; all: fine-tune everything from the fc "
        "stage's best.pt in --out (or --init); both: fc then all (default: both; demo: fc)",
    )
    recipe.add_argument(
        "--init",
        type=Path,
        metavar="PATH",
        help="stage all: start from this best.pt or checkpoint instead of OUT/fc/best.pt",
    )
    recipe.add_argument(
        "--epochs",
        type=positive_int,
        nargs="+",
        metavar="N",
        help="epochs per stage; with --stage both one value for both or two (fc all) "
        "(default: 55 25; demo: 20)",
    )
    recipe.add_argument(
        "--lr",
        type=positive_float,
        nargs="+",
        metavar="LR",
        help=f"learning rate per stage, like --epochs (default: {STAGE_DEFAULTS['fc']['lr']:g} "
        f"{STAGE_DEFAULTS['all']['lr']:g}; demo: {DEMO['lr']['fc']:g})",
    )
    recipe.add_argument(
        "--weight-decay",
        type=float,
        nargs="+",
        metavar="WD",
        help=f"weight decay per stage, like --epochs (default: "
        f"{STAGE_DEFAULTS['fc']['weight_decay']:g} {STAGE_DEFAULTS['all']['weight_decay']:g})",
    )
    recipe.add_argument(
        "--batch-size",
        type=positive_int,
        help="global batch, split evenly over torchrun processes (default: 64; demo: 32)",
    )
    recipe.add_argument(
        "--plateau-patience",
        type=non_negative_int,
        default=3,
        help="epochs without validation gain before the lr is divided by 10 (default: 3)",
    )
    recipe.add_argument("--seed", type=int, default=0, help="seed of init, splits, order, crops")

    runtime = parser.add_argument_group("runtime")
    runtime.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)"
    )
    runtime.add_argument(
        "--workers",
        type=non_negative_int,
        help=f"DataLoader worker processes (default: {RECIPE['workers']}; demo: 0)",
    )
    runtime.add_argument(
        "--amp",
        choices=tuple(AMP_DTYPES),
        default="off",
        help="autocast dtype; fp16 uses a GradScaler (default: off)",
    )
    runtime.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    runtime.add_argument(
        "--sync-bn", action="store_true", help="under torchrun: BatchNorm statistics over all ranks"
    )
    runtime.add_argument("--no-progress", action="store_true", help="no progress bars")

    output = parser.add_argument_group("output and resuming")
    output.add_argument(
        "--out",
        type=Path,
        help="run folder (default: runs/<date>-<time>; required under torchrun)",
    )
    resume = output.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last complete checkpoint",
    )
    resume.add_argument(
        "--auto-resume",
        action="store_true",
        help="continue if --out holds checkpoints, else start; for torchrun --max-restarts",
    )
    parser.set_defaults(handler=run_train)


def _per_stage(name: str, values: list | None, stages: tuple[str, ...], defaults: dict) -> dict:
    if values is None:
        return {stage: defaults[stage] for stage in stages}
    if len(values) == 1:
        return {stage: values[0] for stage in stages}
    if len(values) == len(stages):
        return dict(zip(stages, values, strict=True))
    raise UserInputError(
        f"{name} takes one value, or one per stage ({' '.join(stages)}); got {len(values)}"
    )


def _default_out() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def build_train_configs(args: argparse.Namespace, world_size: int = 1) -> list[TrainConfig]:
    """One TrainConfig per head (two for ``--head both``), from parsed arguments."""
    synthetic = args.data == "synthetic" or args.dataset == "synthetic"
    defaults = DEMO if synthetic else RECIPE
    dataset = "synthetic" if synthetic else args.dataset
    if dataset == "auto":
        dataset = detect_dataset(args.data)
    backbone = args.backbone or defaults["backbone"]
    weights = args.weights
    if weights is None:
        weights = None if backbone == "tiny" or synthetic else "DEFAULT"
    elif weights.lower() == "none":
        weights = None
    stage = args.stage or defaults["stage"]
    stages = ("fc", "all") if stage == "both" else (stage,)
    if args.init is not None and "fc" in stages:
        raise UserInputError("--init gives stage all its starting weights; use it with --stage all")
    if args.out is None and world_size > 1:
        raise UserInputError(
            "under torchrun, pass --out: every process (and every restart) must use one folder"
        )
    if synthetic and args.num_classes < 2:
        raise UserInputError("--num-classes must be at least 2 for the synthetic dataset")
    data = DataConfig(
        dataset=dataset,
        root=None if synthetic else args.data,
        image_size=args.image_size or defaults["image_size"],
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        download=args.download,
        bbox_crop=args.bbox_crop,
        synthetic_classes=args.num_classes,
        synthetic_train_size=args.train_size,
        synthetic_test_size=args.test_size,
    )
    heads = (
        defaults["heads"]
        if args.head is None
        else (("bilinear", "gap") if args.head == "both" else (args.head,))
    )
    out = args.out or _default_out()
    resume = "required" if args.resume else "auto" if args.auto_resume else "never"
    common = {
        "data": data,
        "backbone": backbone,
        "weights": weights,
        "reduce_dim": args.reduce_dim,
        "stages": stages,
        "epochs": _per_stage("--epochs", args.epochs, stages, defaults["epochs"]),
        "lr": _per_stage("--lr", args.lr, stages, defaults["lr"]),
        "weight_decay": _per_stage(
            "--weight-decay",
            args.weight_decay,
            stages,
            {s: d["weight_decay"] for s, d in STAGE_DEFAULTS.items()},
        ),
        "batch_size": args.batch_size or defaults["batch_size"],
        "workers": defaults["workers"] if args.workers is None else args.workers,
        "amp": args.amp,
        "channels_last": args.channels_last,
        "sync_bn": args.sync_bn,
        "plateau_patience": args.plateau_patience,
        "seed": args.seed,
        "skip_bad_images": args.skip_bad_images,
        "resume": resume,
        "init": args.init,
        "progress": not args.no_progress,
    }
    return [
        TrainConfig(out=out / head if len(heads) > 1 else out, head=head, **common)
        for head in heads
    ]


_POOLING = {"bilinear": "Gram, signed sqrt, L2", "gap": "global average"}


def _comparison_table(runs: list[tuple[TrainConfig, list[StageResult], float]]) -> str:
    first = runs[0][0]
    data = first.data
    what = (
        f"synthetic second-order data ({data.synthetic_classes} classes)"
        if data.dataset == "synthetic"
        else f"{data.dataset} ({data.root})"
    )
    stages = " + ".join(
        "fc (frozen backbone)" if stage == "fc" else "all (fine-tuned)" for stage in first.stages
    )
    lines = [
        f"{what}, backbone {first.backbone}, {data.image_size} px, stage {stages}",
        f"{'head':<10} {'pooling':<24} {'best val':>9} {'test top-1':>11} {'time':>8}",
    ]
    for config, results, seconds in runs:
        final = results[-1]
        lines.append(
            f"{config.head:<10} {_POOLING[config.head]:<24} {100 * final.best_val_acc:>8.1f}% "
            f"{100 * final.test.top1:>10.1f}% {seconds:>7.0f}s"
        )
    out = first.out.parent if len(runs) > 1 else first.out
    lines.append(f"({runs[0][1][-1].test.count} test images; outputs in {out})")
    return "\n".join(lines)


def run_train(args: argparse.Namespace) -> int:
    """Handler of ``bcnn-triton train``: run each head, then print the results."""
    context = init_distributed(args.device)
    configure_logging(context.rank, context.distributed)
    clean_exit = False
    try:
        runs = []
        for config in build_train_configs(args, context.world_size):
            started = time.perf_counter()
            results = run_training(config, context)
            runs.append((config, results, time.perf_counter() - started))
        if context.is_main:
            tqdm.write(_comparison_table(runs))
        clean_exit = True
    finally:
        shutdown_distributed(context, clean=clean_exit)
    return 0
