"""``bcnn-triton eval``: top-1, top-5, per-class accuracy and a confusion matrix of a checkpoint."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from bcnn_triton.cli.common import configure_logging, non_negative_int, positive_int
from bcnn_triton.config import AMP_MODES, DATASETS, DataConfig
from bcnn_triton.errors import UserInputError

__all__ = ["add_parser", "run_eval"]

logger = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``eval`` and its flags."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint: top-1/top-5, per-class accuracy, confusion matrix",
        description="Evaluate a checkpoint (best.pt or checkpoint-NNNN.pt) on the data it was "
        "trained on (stored in the checkpoint) or on --data. Writes metrics.json (top-1, top-5, "
        "per-class accuracy, confusion matrix) and confusion.png into --out. A run folder of "
        "several heads (the demo's bilinear/, isqrt/ and gap/) evaluates each head, one line each.",
    )
    parser.add_argument(
        "checkpoint",
        type=Path,
        help="a .pt file, or a run/stage folder (uses all/best.pt, fc/best.pt or best.pt; in a "
        "folder of several heads, those of each head)",
    )
    parser.add_argument(
        "--head",
        metavar="NAME",
        help="in a folder of several heads, evaluate only this one (its subfolder's name)",
    )
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument("--data", help="dataset folder or 'synthetic' (default: from checkpoint)")
    parser.add_argument("--dataset", choices=DATASETS, help="layout of --data (default: detected)")
    parser.add_argument("--image-size", type=positive_int, help="default: from the checkpoint")
    parser.add_argument("--download", action="store_true", help="download aircraft/flowers")
    parser.add_argument("--skip-bad-images", action="store_true")
    parser.add_argument(
        "--out",
        type=Path,
        help="output folder (default: eval-<split> beside the checkpoint; with several heads, "
        "OUT/<head>)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--workers", type=non_negative_int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--amp", choices=AMP_MODES, default="off")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=run_eval)


def _checkpoints(path: Path, head: str | None) -> dict[str | None, Path]:
    """The checkpoints ``path`` names, by head folder (None for a file or a one-head run)."""
    from bcnn_triton.deploy import best_checkpoint_in

    if not path.is_dir():
        if head is not None:
            raise UserInputError(f"--head picks a head in a run folder; {path} is not a folder")
        return {None: path}
    best = best_checkpoint_in(path)
    if best is not None:
        if head is not None:
            raise UserInputError(
                f"--head picks a head in a folder of several heads; {path} is a run of one ({best})"
            )
        return {None: best}
    found = {
        folder.name: best_checkpoint_in(folder)
        for folder in sorted(path.iterdir())
        if folder.is_dir() and best_checkpoint_in(folder) is not None
    }
    if not found:
        raise UserInputError(
            f"no best.pt in {path} (nor in {path}/all, {path}/fc, or a head folder such as "
            f"{path}/bilinear)"
        )
    if head is None:
        return found
    if head not in found:
        raise UserInputError(f"--head {head}: {path} holds the heads {', '.join(found)}")
    return {head: found[head]}


def _data_config(args: argparse.Namespace, stored: dict) -> DataConfig:
    from bcnn_triton.data import detect_dataset

    try:
        config = DataConfig(**stored)
    except TypeError as error:
        raise UserInputError(
            f"the checkpoint's data description is not understood: {error}"
        ) from None
    if args.data is not None:
        if args.data == "synthetic":
            config.dataset, config.root = "synthetic", None
        else:
            config.root = args.data
            config.dataset = args.dataset or detect_dataset(args.data)
    elif args.dataset is not None:
        config.dataset = args.dataset
    if args.image_size is not None:
        config.image_size = args.image_size
    config.download = args.download
    return config


def _evaluate_checkpoint(path: Path, out: Path, args: argparse.Namespace, context) -> list[str]:
    """Evaluate one checkpoint; rank 0 writes metrics.json and confusion.png into ``out``.

    Returns the result line and the files written (empty on other ranks).
    """
    from bcnn_triton.data import build_datasets
    from bcnn_triton.train import evaluate, load_model, plot_confusion_matrix, write_json

    model, state = load_model(path)
    data = build_datasets(_data_config(args, state.get("data_config", {})))
    classes = data.classes
    trained_classes = int(model.config["num_classes"])
    if trained_classes != len(classes):
        raise UserInputError(
            f"checkpoint {path} has {trained_classes} classes, the data has {len(classes)}"
        )
    if list(state.get("classes", classes)) != classes:
        logger.warning("the data's class names differ from the checkpoint's; using the data's")
    model.to(context.device)
    result = evaluate(
        model,
        data.test if args.split == "test" else data.val,
        num_classes=len(classes),
        context=context,
        batch_size=args.batch_size,
        workers=args.workers,
        amp=args.amp,
        channels_last=args.channels_last,
        skip_bad_images=args.skip_bad_images,
        description=f"eval {args.split}",
        progress=not args.no_progress,
    )
    if not context.is_main:
        return []
    out.mkdir(parents=True, exist_ok=True)
    summary = result.as_dict(classes)
    per_class = [row["accuracy"] for row in summary["per_class"] if row["accuracy"] is not None]
    summary.update(
        checkpoint=str(path),
        split=args.split,
        mean_per_class_accuracy=sum(per_class) / len(per_class),
        model_config=model.config,
    )
    write_json(out / "metrics.json", summary)
    written = [str(out / "metrics.json")]
    if plot_confusion_matrix(result.confusion, classes, out / "confusion.png"):
        written.append(str(out / "confusion.png"))
    top5 = "n/a (<= 5 classes)" if result.top5 is None else f"{100 * result.top5:.2f}%"
    line = (
        f"{path} on the {args.split} split ({result.count} images): "
        f"top-1 {100 * result.top1:.2f}%, top-5 {top5}, mean per-class accuracy "
        f"{100 * summary['mean_per_class_accuracy']:.2f}%, loss {result.loss:.4f}"
    )
    return [line, *written]


def run_eval(args: argparse.Namespace) -> int:
    """Handler of ``bcnn-triton eval``: one result line per checkpoint, then the files written."""
    from tqdm.auto import tqdm

    from bcnn_triton.train import init_distributed, shutdown_distributed

    context = init_distributed(args.device)
    configure_logging(context.rank, context.distributed)
    clean_exit = False
    try:
        checkpoints = _checkpoints(args.checkpoint, args.head)
        lines, written = [], []
        for head, path in checkpoints.items():
            default_out = path.parent / f"eval-{args.split}"
            out = default_out if args.out is None else args.out / head if head else args.out
            line, *files = _evaluate_checkpoint(path, out, args, context) or [None]
            lines.append(line)
            written.extend(files)
        if context.is_main:
            tqdm.write("\n".join([*lines, f"written: {', '.join(written)}"]))
        clean_exit = True
    finally:
        shutdown_distributed(context, clean=clean_exit)
    return 0
