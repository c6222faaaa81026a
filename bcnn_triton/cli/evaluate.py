"""``bcnn-triton eval``: top-1, top-5, per-class accuracy and a confusion matrix of a checkpoint."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tqdm.auto import tqdm

from bcnn_triton.cli.common import configure_logging, non_negative_int, positive_int
from bcnn_triton.data import DATASETS, DataConfig, build_datasets, detect_dataset
from bcnn_triton.train import (
    AMP_DTYPES,
    BEST_NAME,
    CheckpointError,
    evaluate,
    init_distributed,
    load_model,
    plot_confusion_matrix,
    shutdown_distributed,
    write_json,
)

__all__ = ["add_eval_parser", "run_eval"]

logger = logging.getLogger(__name__)


def add_eval_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``eval`` and its flags."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint: top-1/top-5, per-class accuracy, confusion matrix",
        description="Evaluate a checkpoint (best.pt or checkpoint-NNNN.pt) on the data it was "
        "trained on (stored in the checkpoint) or on --data. Writes metrics.json (top-1, top-5, "
        "per-class accuracy, confusion matrix) and confusion.png into --out.",
    )
    parser.add_argument(
        "checkpoint",
        type=Path,
        help="a .pt file, or a run/stage folder (uses all/best.pt, fc/best.pt or best.pt)",
    )
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument("--data", help="dataset folder or 'synthetic' (default: from checkpoint)")
    parser.add_argument("--dataset", choices=DATASETS, help="layout of --data (default: detected)")
    parser.add_argument("--image-size", type=positive_int, help="default: from the checkpoint")
    parser.add_argument("--download", action="store_true", help="download aircraft/flowers")
    parser.add_argument("--skip-bad-images", action="store_true")
    parser.add_argument(
        "--out", type=Path, help="output folder (default: eval-<split> beside the checkpoint)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--workers", type=non_negative_int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--amp", choices=tuple(AMP_DTYPES), default="off")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=run_eval)


def _checkpoint_file(path: Path) -> Path:
    if path.is_dir():
        for candidate in (path / "all" / BEST_NAME, path / "fc" / BEST_NAME, path / BEST_NAME):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"no {BEST_NAME} in {path} (nor in {path}/all or {path}/fc)")
    return path


def _data_config(args: argparse.Namespace, stored: dict) -> DataConfig:
    try:
        config = DataConfig(**stored)
    except TypeError as error:
        raise CheckpointError(
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


def run_eval(args: argparse.Namespace) -> int:
    """Handler of ``bcnn-triton eval``."""
    context = init_distributed(args.device)
    configure_logging(context.rank, context.distributed)
    clean_exit = False
    try:
        path = _checkpoint_file(args.checkpoint)
        model, state = load_model(path)
        data = build_datasets(_data_config(args, state.get("data_config", {})))
        classes = data.classes
        trained_classes = int(model.config["num_classes"])
        if trained_classes != len(classes):
            raise CheckpointError(
                f"checkpoint {path} has {trained_classes} classes, the data has {len(classes)}"
            )
        if list(state.get("classes", classes)) != classes:
            logger.warning("the data's class names differ from the checkpoint's; using the data's")
        dataset = data.test if args.split == "test" else data.val
        model.to(context.device)
        result = evaluate(
            model,
            dataset,
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
        if context.is_main:
            out = args.out or path.parent / f"eval-{args.split}"
            out.mkdir(parents=True, exist_ok=True)
            summary = result.as_dict(classes)
            per_class = [
                row["accuracy"] for row in summary["per_class"] if row["accuracy"] is not None
            ]
            summary.update(
                checkpoint=str(path),
                split=args.split,
                mean_per_class_accuracy=sum(per_class) / len(per_class),
                model_config=model.config,
            )
            write_json(out / "metrics.json", summary)
            written = [out / "metrics.json"]
            if plot_confusion_matrix(result.confusion, classes, out / "confusion.png"):
                written.append(out / "confusion.png")
            top5 = "n/a (<= 5 classes)" if result.top5 is None else f"{100 * result.top5:.2f}%"
            tqdm.write(
                f"{path} on the {args.split} split ({result.count} images): "
                f"top-1 {100 * result.top1:.2f}%, top-5 {top5}, mean per-class accuracy "
                f"{100 * summary['mean_per_class_accuracy']:.2f}%, loss {result.loss:.4f}\n"
                f"written: {', '.join(map(str, written))}"
            )
        clean_exit = True
    finally:
        shutdown_distributed(context, clean=clean_exit)
    return 0
