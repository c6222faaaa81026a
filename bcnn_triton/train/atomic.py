"""Crash-safe file writes: a temp file in the target's folder, flushed, fsynced, then renamed.

``os.replace`` is atomic on POSIX within one filesystem, so a reader — or a run resumed after a
crash — sees either the old complete file or the new complete file, never a truncated one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch

__all__ = ["atomic_torch_save", "atomic_write", "atomic_write_text"]


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; some filesystems do not allow opening a directory.
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(file)`` on a temp file beside ``path``, then atomically replace ``path``.

    On any error (or interrupt) the temp file is removed and ``path`` keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    temp_path = Path(temp_name)
    try:
        # mkstemp creates the file private (0600); results are ordinary readable files.
        os.fchmod(descriptor, 0o644)
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_path, path)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_torch_save(obj: object, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    atomic_write(path, lambda handle: torch.save(obj, handle))
