"""What the subcommands share: argument types, logging through tqdm, the interrupt report.

Nothing here imports torch (the parser is built from it).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from tqdm.auto import tqdm

__all__ = [
    "InterruptedRunError",
    "TqdmLoggingHandler",
    "configure_logging",
    "integer",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "unit_fraction",
]


class InterruptedRunError(Exception):
    """Ctrl-C during a run; the message says how to continue it (exit status 130)."""


class TqdmLoggingHandler(logging.Handler):
    """Writes log records with ``tqdm.write`` so they do not break a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def configure_logging(rank: int = 0, distributed: bool = False) -> None:
    """INFO from the package on rank 0, warnings and errors only on the other ranks."""
    logger = logging.getLogger("bcnn_triton")
    for handler in list(logger.handlers):
        if isinstance(handler, TqdmLoggingHandler):
            logger.removeHandler(handler)
    handler = TqdmLoggingHandler()
    prefix = f"[rank {rank}] " if distributed and rank else ""
    handler.setFormatter(logging.Formatter(prefix + "%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)


def integer(text: str) -> int:
    """argparse type: any integer (bounds that depend on other flags are checked later)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _int_at_least(text: str, minimum: int) -> int:
    value = integer(text)
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def unit_fraction(text: str) -> float:
    """argparse type: a number strictly between 0 and 1."""
    value = _number(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    value = _number(text)
    if not value > 0.0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a number >= 0."""
    value = _number(text)
    if value < 0.0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_model_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    """The positional CHECKPOINT of predict and export: one trained model to load."""
    parser.add_argument(
        "checkpoint",
        type=Path,
        help="best.pt, checkpoint-NNNN.pt, or a run folder (uses all/best.pt or fc/best.pt)",
    )
