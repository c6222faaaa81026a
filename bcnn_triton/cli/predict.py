"""``bcnn-triton predict``: top-k class names for image files, folders and globs."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bcnn_triton.cli.common import (
    add_model_checkpoint_argument,
    configure_logging,
    non_negative_int,
    positive_int,
)
from bcnn_triton.config import AMP_MODES

if TYPE_CHECKING:
    from bcnn_triton.deploy import Prediction

__all__ = ["add_parser", "format_table", "run_predict"]

logger = logging.getLogger(__name__)

EPILOG = """\
examples:
  bcnn-triton predict runs/cub/all/best.pt photos/           # every image under photos/
  bcnn-triton predict runs/cub photos/*.jpg --top-k 3         # a run folder: all/ or fc/ best.pt
  bcnn-triton predict best.pt 'photos/**/*.png' --output predictions.csv

exit status: 0 all images predicted, 1 some images could not be read (the others are
predicted and written), 2 bad input (checkpoint, paths, flags)."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``predict`` and its flags."""
    parser = subparsers.add_parser(
        "predict",
        help="classify images with a trained model: top-k class names and probabilities",
        description="Classify image files with a checkpoint of bcnn-triton train. Images are "
        "prepared as in training (resize, centre crop, normalization, all read from the "
        "checkpoint). Prints a table; --output writes CSV or JSON, one row per image.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_checkpoint_argument(parser)
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, folders (searched recursively) and globs ('**' spans folders)",
    )
    parser.add_argument("--top-k", type=positive_int, default=5, help="classes per image (5)")
    parser.add_argument(
        "--output", type=Path, help="write predictions to FILE.csv or FILE.json (by extension)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument(
        "--workers", type=non_negative_int, default=0, help="processes decoding images (0)"
    )
    parser.add_argument("--amp", choices=AMP_MODES, default="off")
    parser.add_argument(
        "--channels-last", action="store_true", help="channels_last images (faster convolutions)"
    )
    parser.add_argument(
        "--image-size", type=positive_int, help="input size (default: from the checkpoint)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run_predict)


def _percent(probability: float) -> str:
    return f"{100 * probability:.1f}%"


def format_table(predictions: Sequence[Prediction]) -> str:
    """One line per image: path, most probable class and its probability, then the others."""
    header = ("image", "class", "prob", "next")
    rows = [
        (
            p.path,
            p.classes[0],
            _percent(p.probabilities[0]),
            ", ".join(
                f"{name} {_percent(prob)}"
                for name, prob in zip(p.classes[1:], p.probabilities[1:], strict=True)
            ),
        )
        for p in predictions
    ]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(3)]
    lines = [
        f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}".rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def run_predict(args: argparse.Namespace) -> int:
    """Handler of ``bcnn-triton predict``."""
    from bcnn_triton.deploy import Predictor, output_format, write_predictions
    from bcnn_triton.train.run_folder import check_writable_file

    configure_logging()
    if args.output is not None:
        # A bad extension or an unwritable place fails before any work.
        output_format(args.output)
        check_writable_file(args.output, "--output")
    predictor = Predictor(
        args.checkpoint,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        amp=args.amp,
        channels_last=args.channels_last,
        top_k=args.top_k,
        image_size=args.image_size,
        progress=not args.no_progress,
    )
    result = predictor.predict(args.inputs)
    if result.predictions:
        print(format_table(result.predictions))
    for bad in result.unreadable:
        logger.warning("cannot read image %s (%s); skipped", bad.path, bad.reason)
    if args.output is not None:
        write_predictions(result.predictions, args.output, predictor.top_k)
    summary = f"{len(result.predictions)} images predicted with {predictor.trained.source}"
    if result.unreadable:
        summary += f"; {len(result.unreadable)} could not be read"
    if args.output is not None:
        summary += f"; written: {args.output}"
    print(summary, file=sys.stderr)
    return 1 if result.unreadable else 0
