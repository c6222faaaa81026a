"""``bcnn-triton train``: the two-step B-CNN recipe, and the synthetic demo of three heads.

Defaults are not written here: flags left out take the recipe's value (the defaults of
``TrainConfig`` and ``DataConfig``), or the demo's (``DEMO``) on synthetic data, and the help
texts show those values. A flag whose ``dest`` is the name of a config field is passed through
as it is; the few others (``--data``, ``--head``, ``--stage``...) are translated below.
"""

from __future__ import annotations

import argparse
import shlex
import textwrap
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from bcnn_triton.cli.common import (
    InterruptedRunError,
    TerminatedError,
    configure_logging,
    integer,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    unit_fraction,
)
from bcnn_triton.config import (
    AMP_MODES,
    BACKBONES,
    DATASETS,
    DEMO,
    HEAD_SPECS,
    HEADS,
    STAGES,
    DataConfig,
    TrainConfig,
    default_of,
    is_timm_backbone,
    min_image_size,
)
from bcnn_triton.errors import UserInputError

__all__ = ["add_parser", "build_train_configs", "run_train"]

_LR, _WD = default_of("lr"), default_of("weight_decay")
DESCRIPTION = "\n\n".join(
    textwrap.fill(" ".join(paragraph.split()), 96)
    for paragraph in (
        f"""Train a B-CNN with the two-step recipe: stage "fc" trains the classifier on a frozen
        backbone (SGD, momentum {default_of("momentum"):g}, lr {_LR["fc"]:g}, weight decay
        {_WD["fc"]:g}), stage "all" fine-tunes everything from the fc stage's best weights (lr
        {_LR["all"]:g}, weight decay {_WD["all"]:g}). ReduceLROnPlateau on validation accuracy;
        the validation split is held out of the training images (--val-fraction, seeded); the
        test split is evaluated once per stage, with the weights of the best validation epoch.""",
        """With no arguments: a demo on built-in synthetic images whose classes differ only in
        which colour goes with which orientation (matched first-order statistics). It trains
        the tiny backbone with a bilinear head, then with an iSQRT-COV head (covariance, matrix
        square root), then with a global-average-pooling head, and prints the three test
        accuracies (about a minute and a half on 2 CPU cores).""",
    )
)

EPILOG = """\
examples:
  bcnn-triton train                                     # the synthetic demo
  bcnn-triton train --data ~/data/CUB_200_2011 --out runs/cub
                                                        # both stages: runs/cub/fc, runs/cub/all
  bcnn-triton train --data ~/data/CUB_200_2011 --out runs/cub --stage fc --epochs 55
  bcnn-triton train --data ~/data/CUB_200_2011 --out runs/cub --stage all --epochs 25
                                                        # starts from runs/cub/fc/best.pt
  bcnn-triton train --data ~/data/CUB_200_2011 --out runs/cub --resume
  bcnn-triton train --data ~/data/CUB_200_2011 --out runs/r50-isqrt --backbone resnet50 \\
      --head isqrt --reduce-dim 256                     # iSQRT-COV, 2048 -> 256 channels
  bcnn-triton train --data ~/data/CUB_200_2011 --out runs/dinov2-isqrt --head isqrt \\
      --backbone timm/vit_small_patch14_dinov2.lvd142m --reduce-dim 256 --image-size 448
                                                        # any timm model (pip install '.[timm]')
  torchrun --nproc_per_node 4 -m bcnn_triton train --data ~/data/CUB_200_2011 \\
      --out runs/cub --batch-size 64                    # 4 GPUs, 16 images each
  torchrun --nproc_per_node 4 --max-restarts 3 -m bcnn_triton train ... --out runs/cub \\
      --auto-resume                                     # restarted workers continue

--out holds, per stage: checkpoint-NNNN.pt (the last two epochs), best.pt (best validation
epoch), metrics.json, metrics.csv and curves.png. With several heads: --out/<head>/..."""

_DATA_FIELDS = frozenset(item.name for item in fields(DataConfig))
_TRAIN_FIELDS = frozenset(item.name for item in fields(TrainConfig))
_PER_STAGE = {"epochs": "--epochs", "lr": "--lr", "weight_decay": "--weight-decay"}


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(f"{value[stage]:g}" for stage in STAGES)
    if isinstance(value, tuple):
        return "both" if value == STAGES else " ".join(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _defaults(name: str) -> str:
    """ "default: <recipe>; demo: <demo>" for a config field (the demo part where it differs)."""
    recipe = default_of(name)
    text = f"default: {_show(recipe)}"
    if name in DEMO and DEMO[name] != recipe:
        text += f"; demo: {_show(DEMO[name])}"
    return text


def _minimum_sizes() -> str:
    by_size: dict[int, list[str]] = {}
    for backbone in BACKBONES:
        by_size.setdefault(min_image_size(backbone), []).append(backbone)
    return "; ".join(f"{size} for {', '.join(names)}" for size, names in sorted(by_size.items()))


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        dest="data_path",
        default="synthetic",
        metavar="PATH|synthetic",
        help="dataset folder, or 'synthetic' for generated images (default: synthetic)",
    )
    data.add_argument(
        "--dataset",
        dest="dataset_name",
        choices=("auto", *DATASETS),
        default="auto",
        help="layout of --data: cub (CUB-200-2011 native files), folder (PATH/<class>/<image>, "
        "or PATH/train + PATH/test), aircraft, cars, flowers (torchvision's layouts); "
        "default: detected from the files",
    )
    data.add_argument(
        "--image-size",
        type=integer,
        metavar="PX",
        help="train: resize + random crop; eval: resize + centre crop; at least "
        f"{_minimum_sizes()}; for timm/... the model's stride ({_defaults('image_size')}; "
        "timm/...: the model's pretrained input size)",
    )
    data.add_argument(
        "--val-fraction",
        type=unit_fraction,
        metavar="F",
        help="share of each class's training images held out for validation "
        f"({_defaults('val_fraction')})",
    )
    data.add_argument(
        "--test-fraction",
        type=unit_fraction,
        metavar="F",
        help="share held out as test split for a folder without train/ and test/ "
        f"({_defaults('test_fraction')})",
    )
    data.add_argument(
        "--bbox-crop", action="store_true", default=None, help="CUB: crop to the bounding box"
    )
    data.add_argument(
        "--download",
        action="store_true",
        default=None,
        help="download aircraft / flowers if missing (nothing is downloaded otherwise)",
    )
    data.add_argument(
        "--skip-bad-images",
        action="store_true",
        default=None,
        help="skip unreadable images with a warning (default: stop with an error naming them)",
    )


def _add_synthetic_flags(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("synthetic data (--data synthetic)")
    data.add_argument(
        "--num-classes",
        dest="synthetic_classes",
        type=positive_int,
        metavar="K",
        help="number of classes (also of colours and of orientations; >= 2) "
        f"({_defaults('synthetic_classes')})",
    )
    data.add_argument(
        "--train-size",
        dest="synthetic_train_size",
        type=positive_int,
        metavar="N",
        help=f"training images, validation included ({_defaults('synthetic_train_size')})",
    )
    data.add_argument(
        "--test-size",
        dest="synthetic_test_size",
        type=positive_int,
        metavar="N",
        help=f"test images ({_defaults('synthetic_test_size')})",
    )


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model")
    model.add_argument(
        "--backbone",
        type=_backbone,
        metavar="NAME",
        help=f"feature extractor: {', '.join(BACKBONES)}, or timm/<model name> for any timm "
        "model, e.g. timm/convnext_tiny.fb_in22k_ft_in1k or timm/vit_small_patch14_dinov2.lvd142m "
        f"({_defaults('backbone')})",
    )
    pooling = "; ".join(f"{name}: {spec.pooling}" for name, spec in HEAD_SPECS.items())
    model.add_argument(
        "--head",
        dest="head_names",
        nargs="+",
        choices=(*HEADS, "both"),
        metavar="HEAD",
        help=f"one or more heads, trained one after the other ({pooling}; both: bilinear gap) "
        f"({_defaults('heads')})",
    )
    model.add_argument(
        "--weights",
        dest="weights_name",
        metavar="NAME|PATH|none",
        help="backbone weights: a torchvision name (DEFAULT, IMAGENET1K_V1...), a state-dict "
        "file (.safetensors too for timm/...), or none (default: DEFAULT: torchvision's, or the "
        "pretrained weights of a timm model's tag; none for tiny, and on synthetic data)",
    )
    model.add_argument(
        "--reduce-dim",
        type=positive_int,
        metavar="C",
        help="1x1 conv to this many channels before pooling (for resnet50/101's 2048, a ViT's 768)",
    )


def _add_recipe_flags(parser: argparse.ArgumentParser) -> None:
    recipe = parser.add_argument_group("recipe")
    recipe.add_argument(
        "--stage",
        choices=("fc", "all", "both"),
        help="fc: classifier on the frozen backbone; all: fine-tune everything from the fc "
        f"stage's best.pt in --out (or --init); both: fc then all ({_defaults('stages')})",
    )
    recipe.add_argument(
        "--init",
        type=Path,
        metavar="PATH",
        help="stage all: start from this best.pt or checkpoint instead of OUT/fc/best.pt",
    )
    per_stage = "one value for every stage, or one per stage (fc all; two run both stages)"
    for name, value_type, metavar, what in (
        ("epochs", positive_int, "N", "epochs"),
        ("lr", positive_float, "LR", "learning rate"),
        ("weight_decay", non_negative_float, "WD", "weight decay"),
    ):
        recipe.add_argument(
            _PER_STAGE[name],
            type=value_type,
            nargs="+",
            metavar=metavar,
            help=f"{what}: {per_stage} ({_defaults(name)})",
        )
    recipe.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="N",
        help=f"global batch, split evenly over torchrun processes ({_defaults('batch_size')})",
    )
    recipe.add_argument(
        "--plateau-patience",
        type=non_negative_int,
        metavar="N",
        help="epochs without validation gain before the lr is divided by 10 "
        f"({_defaults('plateau_patience')})",
    )
    recipe.add_argument(
        "--seed",
        type=integer,
        metavar="N",
        help=f"seed of init, splits, order, crops ({_defaults('seed')})",
    )


def _add_runtime_flags(parser: argparse.ArgumentParser) -> None:
    runtime = parser.add_argument_group("runtime")
    runtime.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)"
    )
    runtime.add_argument(
        "--workers",
        type=non_negative_int,
        metavar="N",
        help=f"DataLoader worker processes ({_defaults('workers')})",
    )
    runtime.add_argument(
        "--amp",
        choices=AMP_MODES,
        help=f"autocast dtype; fp16 uses a GradScaler ({_defaults('amp')})",
    )
    runtime.add_argument(
        "--channels-last", action="store_true", default=None, help="NHWC memory format"
    )
    runtime.add_argument(
        "--sync-bn",
        action="store_true",
        default=None,
        help="under torchrun: BatchNorm statistics over all ranks",
    )
    runtime.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_output_flags(parser: argparse.ArgumentParser) -> None:
    output = parser.add_argument_group("output and resuming")
    output.add_argument(
        "--out",
        type=Path,
        metavar="PATH",
        help="run folder (default: runs/<date>-<time>; required under torchrun)",
    )
    resume = output.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume",
        dest="resume_required",
        action="store_true",
        help="continue the run in --out from its last complete checkpoint",
    )
    resume.add_argument(
        "--auto-resume",
        action="store_true",
        help="continue if --out holds checkpoints, else start; for torchrun --max-restarts",
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train`` and its flags."""
    parser = subparsers.add_parser(
        "train",
        help="train a B-CNN (no arguments: the synthetic demo, bilinear vs iSQRT-COV vs GAP)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for add_flags in (
        _add_data_flags,
        _add_synthetic_flags,
        _add_model_flags,
        _add_recipe_flags,
        _add_runtime_flags,
        _add_output_flags,
    ):
        add_flags(parser)
    parser.set_defaults(handler=run_train)


def _per_stage(flag: str, values: list, stages: tuple[str, ...]) -> dict:
    if len(values) == 1:
        return {stage: values[0] for stage in stages}
    if len(values) == len(stages):
        return dict(zip(stages, values, strict=True))
    raise UserInputError(
        f"{flag} takes one value, or one per stage ({' '.join(stages)}); got {len(values)}"
    )


def _backbone(text: str) -> str:
    """argparse type of --backbone: one of BACKBONES, or timm/<model name> (checked later)."""
    if text in BACKBONES or (is_timm_backbone(text) and text.strip("/") != "timm"):
        return text
    raise argparse.ArgumentTypeError(
        f"invalid choice: {text!r} (choose from {', '.join(BACKBONES)}, or timm/<model name>)"
    )


def _timm_image_size(options: dict[str, Any]) -> None:
    """A timm backbone's pretrained input size, where --image-size (or the demo) sets none."""
    backbone = options.get("backbone", default_of("backbone"))
    if is_timm_backbone(backbone) and "image_size" not in options:
        from bcnn_triton.models.timm_backbone import timm_preprocessing

        try:
            options["image_size"] = timm_preprocessing(backbone)["image_size"]
        except ValueError as error:
            raise UserInputError(f"--backbone {backbone}: {error}") from None


def _stages(given: dict[str, Any], options: dict[str, Any]) -> tuple[str, ...]:
    """The stages to run: --stage's; without it, both where a per-stage flag has one value per
    stage (``--epochs 1 1`` on the fc-only demo), else the recipe's or the demo's."""
    if "stages" not in given and any(
        len(given.get(name, ())) == len(STAGES) for name in _PER_STAGE
    ):
        options["stages"] = STAGES
    return options.get("stages", default_of("stages"))


def _given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The flags the user gave, named like the fields of TrainConfig / DataConfig (and heads)."""
    given = {
        name: value
        for name, value in vars(args).items()
        if value is not None and name in _DATA_FIELDS | _TRAIN_FIELDS
    }
    if args.head_names is not None:
        # In the order given, each once; "both" is bilinear and gap.
        expanded = (("bilinear", "gap") if head == "both" else (head,) for head in args.head_names)
        given["heads"] = tuple(dict.fromkeys(name for names in expanded for name in names))
    if args.stage is not None:
        given["stages"] = STAGES if args.stage == "both" else (args.stage,)
    if args.weights_name is not None:
        given["weights"] = None if args.weights_name.lower() == "none" else args.weights_name
    if args.no_progress:
        given["progress"] = False
    return given


def _default_out() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def _data_config(args: argparse.Namespace, options: dict[str, Any], synthetic: bool) -> DataConfig:
    if synthetic:
        dataset, root = "synthetic", None
    else:
        from bcnn_triton.data import detect_dataset

        root = args.data_path
        dataset = args.dataset_name
        if dataset == "auto":
            dataset = detect_dataset(root)
    data_options = {name: value for name, value in options.items() if name in _DATA_FIELDS}
    return DataConfig(dataset=dataset, root=root, **data_options)


def _resume_mode(
    args: argparse.Namespace, out: Path, heads: tuple[str, ...], stages: tuple[str, ...]
) -> str:
    if args.auto_resume:
        return "auto"
    if not args.resume_required:
        return "never"
    if len(heads) == 1:
        return "required"
    # Several heads run one after the other: an interrupted run has checkpoints for the heads
    # it reached. Continue those; start the heads it did not reach.
    from bcnn_triton.train import checkpoint_paths

    if not any(checkpoint_paths(out / head / stage) for head in heads for stage in stages):
        raise UserInputError(f"--resume: no checkpoint to resume from in {out}")
    return "auto"


def build_train_configs(args: argparse.Namespace, world_size: int = 1) -> list[TrainConfig]:
    """One checked TrainConfig per head, from parsed arguments (see the module docstring)."""
    synthetic = args.data_path == "synthetic" or args.dataset_name == "synthetic"
    given = _given_options(args)
    options = {**(DEMO if synthetic else {}), **given}
    _timm_image_size(options)
    stages = _stages(given, options)
    for name, flag in _PER_STAGE.items():
        if name in given:
            options[name] = _per_stage(flag, given[name], stages)
    if args.init is not None and "fc" in stages:
        raise UserInputError("--init gives stage all its starting weights; use it with --stage all")
    if args.out is None and world_size > 1:
        raise UserInputError(
            "under torchrun, pass --out: every process (and every restart) must use one folder"
        )
    if synthetic and options.get("synthetic_classes", default_of("synthetic_classes")) < 2:
        raise UserInputError("--num-classes must be at least 2 for the synthetic dataset")
    heads = options.pop("heads", default_of("heads"))
    out = options.pop("out", None) or _default_out()
    data = _data_config(args, options, synthetic)
    options["resume"] = _resume_mode(args, out, heads, stages)
    train_options = {name: value for name, value in options.items() if name in _TRAIN_FIELDS}
    configs = [
        TrainConfig(
            data=data, out=out / head if len(heads) > 1 else out, head=head, **train_options
        )
        for head in heads
    ]
    for config in configs:
        config.check()
    return configs


def _comparison_table(runs: list[tuple[TrainConfig, list, float]]) -> str:
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
            f"{config.head:<10} {HEAD_SPECS[config.head].pooling:<24} "
            f"{100 * final.best_val_acc:>8.1f}% {100 * final.test.top1:>10.1f}% {seconds:>7.0f}s"
        )
    out = first.out.parent if len(runs) > 1 else first.out
    lines.append(f"({runs[0][1][-1].test.count} test images; outputs in {out})")
    return "\n".join(lines)


def _how_to_continue(
    args: argparse.Namespace, configs: list[TrainConfig], distributed: bool
) -> str:
    """What to run after Ctrl-C: this command with --out and --resume, if anything was saved."""
    from bcnn_triton.train import checkpoint_paths

    out = configs[0].out.parent if len(configs) > 1 else configs[0].out
    saved = any(checkpoint_paths(c.out / stage) for c in configs for stage in c.stages)
    if not saved:
        return "no epoch had finished, so nothing was saved to resume; run the command again"
    if distributed:
        return f"continue with the same torchrun command, with --out {out} --resume"
    kept: list[str] = []
    words = iter(args.argv)
    for word in words:
        if word == "--out":
            next(words, None)
        elif word not in ("--resume", "--auto-resume") and not word.startswith("--out="):
            kept.append(word)
    return "continue with: " + shlex.join(["bcnn-triton", *kept, "--out", str(out), "--resume"])


def _train_heads(configs: list[TrainConfig], context) -> list[tuple[TrainConfig, list, float]]:
    """Train each head in turn; several heads share one run folder, held for all of them."""
    from contextlib import nullcontext

    from bcnn_triton.train import run_training
    from bcnn_triton.train.run_folder import hold_run_folder

    several = len(configs) > 1
    runs = []
    with hold_run_folder(configs[0].out.parent, context) if several else nullcontext():
        for config in configs:
            started = time.perf_counter()
            results = run_training(config, context)
            runs.append((config, results, time.perf_counter() - started))
    return runs


def run_train(args: argparse.Namespace) -> int:
    """Handler of ``bcnn-triton train``: run each head, then print the results."""
    from tqdm.auto import tqdm

    from bcnn_triton.train import init_distributed, shutdown_distributed

    context = init_distributed(args.device)
    configure_logging(context.rank, context.distributed)
    clean_exit = False
    try:
        configs = build_train_configs(args, context.world_size)
        try:
            runs = _train_heads(configs, context)
        except KeyboardInterrupt as interrupt:
            raise InterruptedRunError(
                _how_to_continue(args, configs, context.distributed),
                terminated=isinstance(interrupt, TerminatedError),
            ) from None
        if context.is_main:
            tqdm.write(_comparison_table(runs))
        clean_exit = True
    finally:
        shutdown_distributed(context, clean=clean_exit)
    return 0
