"""Faults for the tests: a full disk, a read-only folder, a private mount, temp files of a kill.

The tests run as root, and root writes through any permission bits, so "read-only" cannot be a
chmod. Instead either the system calls that create files fail as on a read-only filesystem, or
(where the machine allows it) a real read-only or small tmpfs is mounted in a private mount
namespace (``unshare -m``) for one subprocess.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT


def _below(path: object, root: Path) -> bool:
    try:
        return Path(os.fsdecode(path)).resolve().is_relative_to(root.resolve())
    except TypeError:  # a file descriptor
        return False


def read_only(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Creating or opening for writing anything at or below ``root`` fails with EROFS.

    Patches ``os.open`` and ``os.mkdir``, which every file creation of the package and of
    ``tempfile`` goes through.
    """
    real_open, real_mkdir = os.open, os.mkdir

    def refuse(path: object) -> OSError:
        return OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    def open_read_only(path, flags, *args, **kwargs):
        if flags & _WRITE_FLAGS and _below(path, root):
            raise refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def mkdir_read_only(path, *args, **kwargs):
        if _below(path, root):
            raise refuse(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_read_only)
    monkeypatch.setattr(os, "mkdir", mkdir_read_only)


def full_disk_when(monkeypatch: pytest.MonkeyPatch, armed: Callable[[], bool]) -> None:
    """While ``armed()``, files opened by atomic writes write to ``/dev/full``: the kernel's
    own ENOSPC, through the real writers (torch.save, json, matplotlib)."""
    real_fdopen = os.fdopen

    def fdopen(descriptor, mode="r", *args, **kwargs):
        if armed() and "w" in mode:
            os.close(descriptor)
            return open("/dev/full", mode, *args, **kwargs)
        return real_fdopen(descriptor, mode, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", fdopen)


def temp_files(directory: Path) -> list[str]:
    """Names of the temp files of atomic writes in ``directory``."""
    return sorted(path.name for path in directory.iterdir() if path.name.endswith(".tmp"))


def _can_mount() -> bool:
    if shutil.which("unshare") is None or not Path("/dev/full").exists():
        return False
    probe = "mount -t tmpfs -o size=64k none /mnt"
    result = subprocess.run(["unshare", "-m", "sh", "-c", probe], capture_output=True)
    return result.returncode == 0


needs_mount = pytest.mark.skipif(
    sys.platform != "linux" or not _can_mount(),
    reason="needs unshare -m and mount (root in a private mount namespace)",
)


def in_private_mount(
    mount_point: Path, options: str, script: str, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run the shell ``script`` with a tmpfs mounted (``-o options``) on ``mount_point``, which
    only that script sees; the mount vanishes with it."""
    mount_point.mkdir(parents=True, exist_ok=True)
    command = f"mount -t tmpfs -o {options} none {mount_point} && {script}"
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, timeout=timeout
    )


def leave_temp_file_by_sigkill(target: Path) -> Path:
    """SIGKILL a process halfway through an atomic write of ``target``; return its temp file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    code = (
        "import sys, time\n"
        "from bcnn_triton.train.atomic import atomic_write\n"
        "def write_slowly(handle):\n"
        "    handle.write(b'half of it')\n"
        "    handle.flush()\n"
        "    time.sleep(60)\n"
        "atomic_write(sys.argv[1], write_slowly)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code, str(target)])
    deadline = time.monotonic() + 60
    while not temp_files(target.parent) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    [name] = [name for name in temp_files(target.parent) if name.startswith(f".{target.name}.")]
    return target.parent / name
