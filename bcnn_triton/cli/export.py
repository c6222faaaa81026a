"""``bcnn-triton export``: a checkpoint to ONNX or to a torch.export program (.pt2)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bcnn_triton.cli.common import add_model_checkpoint_argument, configure_logging, positive_int
from bcnn_triton.config import EXPORT_FORMATS
from bcnn_triton.errors import UserInputError

__all__ = ["add_parser", "run_export"]

EPILOG = """\
examples:
  bcnn-triton export runs/cub/all/best.pt --out cub.onnx     # format from the extension
  bcnn-triton export runs/cub --format pt2                    # runs/cub/all/best.pt2

Both files take normalized images (N, 3, S, S) float32, any N, and give logits (N, classes);
they record the class names and the preprocessing (ONNX: metadata 'classes' and
'preprocessing'; pt2: extra file 'bcnn_triton.json'). The ONNX file runs in onnxruntime without
bcnn-triton; load the pt2 file with bcnn_triton.deploy.load_pt2, or with torch.export.load
after 'import bcnn_triton.ops' (which registers the operators it calls)."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``export`` and its flags."""
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX or torch.export (.pt2), dynamic batch size",
        description="Export a checkpoint of bcnn-triton train for serving: ONNX (standard "
        "operators only; needs pip install 'bcnn-triton[export]') or a torch.export program.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_checkpoint_argument(parser)
    parser.add_argument(
        "--format",
        choices=tuple(EXPORT_FORMATS),
        help="default: from the extension of --out (.onnx, .pt2), else onnx",
    )
    parser.add_argument(
        "--out", type=Path, help="output file (default: the checkpoint's name with .onnx/.pt2)"
    )
    parser.add_argument(
        "--image-size", type=positive_int, help="input size S (default: from the checkpoint)"
    )
    parser.set_defaults(handler=run_export)


def _format_and_path(args: argparse.Namespace, checkpoint: Path) -> tuple[str, Path]:
    by_suffix = {suffix: name for name, suffix in EXPORT_FORMATS.items()}
    out_format = None if args.out is None else by_suffix.get(args.out.suffix.lower())
    if args.format is not None and out_format is not None and args.format != out_format:
        raise UserInputError(
            f"--format {args.format} does not match the extension of --out {args.out}"
        )
    chosen = args.format or out_format or "onnx"
    return chosen, args.out or checkpoint.with_suffix(EXPORT_FORMATS[chosen])


def run_export(args: argparse.Namespace) -> int:
    """Handler of ``bcnn-triton export``."""
    from bcnn_triton.deploy import (
        compare_onnx_logits,
        export_model,
        find_checkpoint,
        load_trained_model,
    )
    from bcnn_triton.train.run_folder import check_writable_file

    configure_logging()
    checkpoint = find_checkpoint(args.checkpoint)
    chosen, out = _format_and_path(args, checkpoint)
    # Before the model is loaded and traced: an unwritable --out fails at once.
    check_writable_file(out, "--out" if args.out is not None else "output file")
    trained = load_trained_model(checkpoint, device="cpu", image_size=args.image_size)
    export_model(trained, out, chosen)
    size = trained.preprocessing.image_size
    print(
        f"written: {out} ({chosen}; input images (N, 3, {size}, {size}), output logits "
        f"(N, {trained.num_classes}); from {checkpoint})",
        file=sys.stderr,
    )
    if chosen == "onnx":
        difference = compare_onnx_logits(trained, out)
        if difference is not None:
            print(
                f"checked with onnxruntime: max |logits - PyTorch logits| = {difference:.2e}",
                file=sys.stderr,
            )
    return 0
