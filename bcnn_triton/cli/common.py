"""What the subcommands share: argument types, logging through tqdm, interrupts and SIGTERM.

Nothing here imports torch (the parser is built from it).
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm.auto import tqdm

__all__ = [
    "InterruptedRunError",
    "TerminatedError",
    "TqdmLoggingHandler",
    "configure_logging",
    "integer",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "sigterm_as_interrupt",
    "unit_fraction",
]


class TerminatedError(KeyboardInterrupt):
    """SIGTERM (what schedulers send to stop a job), raised where Ctrl-C raises.

    A KeyboardInterrupt, so that every path that handles Ctrl-C handles it the same way: temp
    files removed, the run folder's lock dropped, DataLoader workers ending quietly.
    """


class InterruptedRunError(Exception):
    """Ctrl-C or SIGTERM during a run; the message says how to continue it.

    ``exit_status``: 130 after Ctrl-C, 143 after SIGTERM (128 + the signal's number, as a shell
    reports a process the signal ended).
    """

    def __init__(self, message: str, *, terminated: bool = False) -> None:
        super().__init__(message)
        self.what = "terminated (SIGTERM)" if terminated else "interrupted"
        self.exit_status = 128 + (signal.SIGTERM if terminated else signal.SIGINT)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises TerminatedError in the main thread, as Ctrl-C raises.

    A second SIGTERM ends the process at once: the handler restores the previous one first.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.getsignal(signal.SIGTERM)

    def terminate(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, previous)
        raise TerminatedError

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
