"""Crash-safe file writes: a temp file in the target's folder, flushed, fsynced, then renamed.

``os.replace`` is atomic on POSIX within one filesystem, so a reader — or a run resumed after a
crash — sees either the old complete file or the new complete file, never a truncated one.

A write that fails (a full disk, a read-only filesystem...) raises an ``OSError`` naming the
target file, whatever library did the writing (the writer itself never sees the error, see
``_KeptErrorFile``). A process killed mid-write (SIGKILL) leaves its
temp file, ``.<name>.<8 random characters>.tmp``: :func:`remove_stale_temp_files` removes them
where no other process can be writing (the run folder's lock, see ``run_folder``).
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch

__all__ = ["atomic_torch_save", "atomic_write", "atomic_write_text", "remove_stale_temp_files"]

_TEMP_SUFFIX = ".tmp"
# tempfile.mkstemp's random part: 8 characters of this alphabet.
_TEMP_RANDOM = r"[a-z0-9_]{8}"


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


class _KeptErrorFile(io.RawIOBase):
    """The temp file as a writer sees it: a write or flush that fails is kept, not raised.

    Raised into torch's zip writer (torch.save, torch.export.save), an OSError leaves the
    archive half-done; its C++ destructor later retries the end of the archive, fails again,
    and aborts the whole process ("terminate called after throwing an instance of
    'c10::Error' ... unexpected pos", seen with torch.export.save on a full disk). Kept here,
    the error is raised by atomic_write once the writer has returned; later writes are dropped.
    """

    def __init__(self, handle: BinaryIO) -> None:
        super().__init__()
        self._handle = handle
        self.error: OSError | None = None

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._handle.seekable()

    def tell(self) -> int:
        return self._handle.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._handle.seek(offset, whence)

    def write(self, data: bytes) -> int:
        if self.error is None:
            try:
                self._handle.write(data)
            except OSError as error:
                self.error = error
        return memoryview(data).nbytes

    def flush(self) -> None:
        if self.error is None and not self._handle.closed:
            try:
                self._handle.flush()
            except OSError as error:
                self.error = error


def _os_error_behind(error: BaseException) -> OSError | None:
    """The OSError behind ``error``: itself, or one of its causes or contexts; else None.

    A writer may wrap the error of a file operation of its own in another exception.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(file)`` on a temp file beside ``path``, then atomically replace ``path``.

    On any error (or interrupt) the temp file is removed and ``path`` keeps its old content.

    Raises:
        OSError: the file cannot be written (no space, read-only, no permission...); its
            ``filename`` is ``path`` (not the temp file), its ``strerror`` the system's reason.
    """
    path = Path(path)
    try:
        _write_and_replace(path, write)
    except Exception as error:
        cause = _os_error_behind(error)
        if cause is None:
            raise
        raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from error
    _fsync_directory(path.parent)


def _write_and_replace(path: Path, write: Callable[[BinaryIO], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=_TEMP_SUFFIX
    )
    temp_path = Path(temp_name)
    try:
        # mkstemp creates the file private (0600); results are ordinary readable files.
        os.fchmod(descriptor, 0o644)
        with os.fdopen(descriptor, "wb") as handle:
            kept = _KeptErrorFile(handle)
            try:
                write(kept)
            except Exception as error:
                if kept.error is None:
                    raise
                raise kept.error from error
            if kept.error is not None:
                raise kept.error
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_path, path)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_torch_save(obj: object, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def remove_stale_temp_files(directory: str | Path, names: str) -> list[Path]:
    """Delete the temp files that :func:`atomic_write` left in ``directory`` when killed.

    Only temp files of targets whose name matches the regular expression ``names`` (e.g.
    ``r"best\\.pt"``) are touched; call it only where no other process writes (a locked run
    folder). Returns the files removed.
    """
    pattern = re.compile(rf"\.(?:{names})\.{_TEMP_RANDOM}{re.escape(_TEMP_SUFFIX)}")
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for path in sorted(directory.iterdir()):
        if pattern.fullmatch(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
