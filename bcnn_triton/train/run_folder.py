"""One run per folder: checked writable first, locked for the run's life, stale temp files removed.

A training run holds ``OUT/.bcnn-triton.lock`` with ``fcntl.flock`` from before it reads or
trains anything until it returns. The kernel drops the lock when the process ends, however it
ends (an error, SIGKILL, a power cut), so a lock never outlives its run and nothing has to be
cleaned by hand. A second run into the same folder is refused at once, naming the holder's pid.
Under torchrun only rank 0 takes the lock, and the other ranks share its outcome.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from bcnn_triton.config import STAGES
from bcnn_triton.errors import UserInputError
from bcnn_triton.train.atomic import remove_stale_temp_files
from bcnn_triton.train.distributed import DistributedContext, on_main_rank

__all__ = [
    "LOCK_NAME",
    "RunFolderBusyError",
    "RunFolderLock",
    "check_writable_file",
    "check_writable_folder",
    "hold_run_folder",
]

logger = logging.getLogger(__name__)

LOCK_NAME = ".bcnn-triton.lock"
# What training writes into a run or stage folder (checkpoint.py, reports.py): the only names
# whose temp files are removed.
_RUN_FILES = r"checkpoint-\d+\.pt|best\.pt|metrics\.json|metrics\.csv|curves\.png"


class RunFolderBusyError(UserInputError):
    """Another process holds the run folder's lock."""


# Lock descriptors of this process: a forked child (a DataLoader worker) closes its copies, so
# that the lock goes when its holder goes, not when the last of its children notices.
_held: dict[int, RunFolderLock] = {}


def _close_inherited_locks() -> None:
    for descriptor, lock in list(_held.items()):
        os.close(descriptor)
        lock._descriptor = None
    _held.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


class RunFolderLock:
    """An exclusive ``flock`` on ``folder/.bcnn-triton.lock``, which records the holder's pid.

    Example::

        with RunFolderLock("runs/cub"):
            ...  # no other process (nor this one) can take RunFolderLock("runs/cub") here
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._descriptor: int | None = None

    def acquire(self) -> RunFolderLock:
        """Take the lock, or raise RunFolderBusyError at once (no waiting).

        Raises:
            RunFolderBusyError: another process holds it.
            UserInputError: the lock file cannot be created (an unwritable folder).
        """
        descriptor = self._locked_descriptor()
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self._descriptor = descriptor
        _held[descriptor] = self
        return self

    def _locked_descriptor(self) -> int:
        while True:
            try:
                descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as error:
                raise UserInputError(
                    f"--out {self.folder} is not writable: {error.strerror}"
                ) from None
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(descriptor)
                os.close(descriptor)
                raise RunFolderBusyError(
                    f"--out {self.folder} is in use by another training run ({holder}); wait "
                    "for it to end, or choose another --out"
                ) from None
            except OSError as error:
                # Some network filesystems offer no locks: run, but say what is not guarded.
                logger.warning(
                    "cannot lock %s (%s): another run into this folder would not be stopped",
                    self.path,
                    error.strerror,
                )
            if _same_file(descriptor, self.path):
                return descriptor
            # The holder removed the file (an empty run folder it had made) before letting go:
            # this lock is on a file nobody else will open. Take the new one.
            os.close(descriptor)

    def release(self) -> None:
        """Drop the lock (closing the file drops it); the file stays, it costs nothing."""
        if self._descriptor is not None:
            _held.pop(self._descriptor, None)
            os.close(self._descriptor)
            self._descriptor = None

    def __enter__(self) -> RunFolderLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _same_file(descriptor: int, path: Path) -> bool:
    try:
        on_disk = path.stat()
    except FileNotFoundError:
        return False
    opened = os.fstat(descriptor)
    return (opened.st_dev, opened.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _holder(descriptor: int) -> str:
    """ "pid N" (and "on HOST" from another machine) of the lock file's holder."""
    words = os.pread(descriptor, 200, 0).decode(errors="replace").split()
    if not words:
        return "pid unknown: it has just started"
    pid, host = words[0], " ".join(words[1:])
    return f"pid {pid}" if host in ("", socket.gethostname()) else f"pid {pid} on {host}"


def _first_file_above(path: Path) -> Path:
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            return parent
    return path


def check_writable_folder(folder: str | Path, flag: str = "--out") -> None:
    """Create ``folder`` (and its parents) if needed and check that a file can be made in it.

    Raises:
        UserInputError: ``folder`` is a file or below one, cannot be created, or is not
            writable (read-only filesystem, no permission), in one line starting with ``flag``.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserInputError(f"{flag} {folder} is a file, not a folder") from None
    except NotADirectoryError:
        above = _first_file_above(folder)
        raise UserInputError(f"{flag} {folder}: {above} is a file, not a folder") from None
    except OSError as error:
        raise UserInputError(f"{flag} {folder} cannot be created: {error.strerror}") from None
    try:
        # An unnamed file where the system offers them (O_TMPFILE): nothing to leave behind.
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UserInputError(f"{flag} {folder} is not writable: {error.strerror}") from None


def check_writable_file(path: str | Path, flag: str = "--out") -> None:
    """Check that ``path`` can be written (atomically: its folder must take a new file).

    Creates the folder if needed. Raises UserInputError (one line starting with ``flag``).
    """
    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"{flag} {path} is a folder; give a file name")
    check_writable_folder(path.parent, f"{flag} {path}: folder")


@contextmanager
def hold_run_folder(
    folder: str | Path, context: DistributedContext, stages: Sequence[str] = ()
) -> Iterator[None]:
    """Hold ``folder`` for a run: writable (with its ``stages`` folders), locked, cleaned.

    Rank 0 does the work; every rank raises the same UserInputError if it fails. Folders made
    here are removed again at the end if the run left nothing in them (a run that stopped on
    bad input before its first epoch).

    Raises:
        RunFolderBusyError: another run holds the folder.
        UserInputError: the folder cannot be created or written.
    """
    folder = Path(folder)
    held = on_main_rank(context, lambda: _take(folder, stages))
    try:
        yield
    finally:
        if held is not None:
            lock, created = held
            _remove_if_empty(created, lock)
            lock.release()


def _take(folder: Path, stages: Sequence[str]) -> tuple[RunFolderLock, list[Path]]:
    wanted = (folder, *(folder / stage for stage in stages))
    created = [path for path in wanted if not path.exists()]
    check_writable_folder(folder)
    lock = RunFolderLock(folder).acquire()
    try:
        for stage in stages:
            check_writable_folder(folder / stage)
        # Only now, under the lock: no other run can be writing these.
        removed = [
            path
            for directory in (folder, *(folder / stage for stage in STAGES))
            for path in remove_stale_temp_files(directory, _RUN_FILES)
        ]
    except BaseException:
        _remove_if_empty(created, lock)
        lock.release()
        raise
    if removed:
        logger.info(
            "removed %d temp file(s) left by an interrupted run: %s",
            len(removed),
            ", ".join(str(path) for path in removed),
        )
    return lock, created


def _remove_if_empty(created: list[Path], lock: RunFolderLock) -> None:
    """Remove the folders in ``created`` (deepest first) that hold nothing but the lock file."""
    for directory in reversed(created):
        try:
            if directory == lock.folder and [p.name for p in directory.iterdir()] == [LOCK_NAME]:
                # Still holding the lock: a run that opened the old file sees it gone and retries.
                lock.path.unlink()
            directory.rmdir()
        except OSError:
            pass  # not empty (the run wrote something), or already gone
