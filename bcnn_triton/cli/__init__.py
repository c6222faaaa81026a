"""The bcnn-triton command line: ``train``, ``eval``, ``bench``, ``predict`` and ``export``.

Errors in what the user gave (missing folders, corrupt files, incompatible checkpoints...) end
as one line ``error: ...`` on stderr and exit status 2; a diverged run exits with status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from bcnn_triton import __version__
from bcnn_triton.cli.bench import add_bench_parser
from bcnn_triton.cli.evaluate import add_eval_parser
from bcnn_triton.cli.export import add_export_parser
from bcnn_triton.cli.predict import add_predict_parser
from bcnn_triton.cli.train import add_train_parser
from bcnn_triton.errors import UserInputError
from bcnn_triton.train import TrainingError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``bcnn-triton`` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(
        prog="bcnn-triton",
        description="Bilinear CNNs for fine-grained recognition: train, evaluate, benchmark, "
        "predict, export.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train_parser(subparsers)
    add_eval_parser(subparsers)
    add_bench_parser(subparsers)
    add_predict_parser(subparsers)
    add_export_parser(subparsers)
    return parser


def _rank_prefix() -> str:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    return f"[rank {os.environ.get('RANK', '0')}] " if world_size > 1 else ""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failed run, 2 bad input)."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except UserInputError as error:
        print(f"{_rank_prefix()}error: {error}", file=sys.stderr)
        return 2
    except TrainingError as error:
        print(f"{_rank_prefix()}error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{_rank_prefix()}interrupted", file=sys.stderr)
        return 130
