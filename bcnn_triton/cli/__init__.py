"""The bcnn-triton command line: ``train``, ``eval``, ``bench``, ``predict``, ``export``, ``doctor``
(what runs on this machine, checked).

Errors in what the user gave (flags, missing folders, corrupt files, incompatible
checkpoints, an unwritable or busy ``--out``...) end as one line ``error: ...`` on stderr and
exit status 2; a diverged run, or a file that cannot be written during a run (a full disk...),
exits with status 1; Ctrl-C exits with status 130 and SIGTERM with 143, and say how to continue
the run.

The parser is built without importing torch (the names it offers come from
``bcnn_triton.config``), so ``--help`` and argument errors answer at once; each command's
handler imports what it needs. A command is a module with ``add_parser(subparsers)`` that sets
a ``handler``, listed in ``_COMMANDS``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from bcnn_triton import __version__
from bcnn_triton.cli import bench, doctor, evaluate, export, predict, train
from bcnn_triton.cli.common import InterruptedRunError, TerminatedError, sigterm_as_interrupt
from bcnn_triton.errors import TrainingError, UserInputError, os_error_text

__all__ = ["build_parser", "main"]

_COMMANDS = (train, evaluate, bench, predict, export, doctor)


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line, like every other error of the command line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``bcnn-triton`` argument parser with its subcommands."""
    parser = _Parser(
        prog="bcnn-triton",
        description="Bilinear CNNs for fine-grained recognition: train, evaluate, benchmark, "
        "predict, export; doctor checks what runs on this machine.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in _COMMANDS:
        command.add_parser(subparsers)
    return parser


def _rank_prefix() -> str:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    return f"[rank {os.environ.get('RANK', '0')}] " if world_size > 1 else ""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failed run, 2 bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        with sigterm_as_interrupt():
            return args.handler(args)
    except UserInputError as error:
        print(f"{_rank_prefix()}error: {error.command_line}", file=sys.stderr)
        return 2
    except TrainingError as error:
        print(f"{_rank_prefix()}error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"{_rank_prefix()}error: {os_error_text(error)}", file=sys.stderr)
        return 1
    except InterruptedRunError as interrupted:
        print(f"{_rank_prefix()}{interrupted.what}: {interrupted}", file=sys.stderr)
        return interrupted.exit_status
    except KeyboardInterrupt as interrupt:
        terminated = isinstance(interrupt, TerminatedError)
        print(f"{_rank_prefix()}{'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
