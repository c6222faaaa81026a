"""What the subcommands share: argument types, logging through tqdm, error reporting."""

from __future__ import annotations

import argparse
import logging
import sys

from tqdm.auto import tqdm

__all__ = [
    "TqdmLoggingHandler",
    "configure_logging",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "unit_fraction",
]


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


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def unit_fraction(text: str) -> float:
    """argparse type: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0.0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value
