"""``bcnn-triton train`` and its ``--out``: unwritable, in use, a full disk, SIGTERM."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
from cli.test_cli_errors import fails
from train.faults import full_disk_when, read_only, temp_files

from bcnn_triton.cli import main
from bcnn_triton.train import engine, load_checkpoint
from bcnn_triton.train.run_folder import RunFolderLock

# Epochs enough for a signal sent after the first to land while the run is still going.
LONG_RUN = ["--stage", "fc", "--head", "gap", "--epochs", "4", "--batch-size", "8"]
LONG_RUN += ["--image-size", "32", "--train-size", "120", "--test-size", "16"]
LONG_RUN += ["--val-fraction", "0.2", "--no-progress"]


@pytest.mark.parametrize("where", ["a file", "below a file", "read-only"])
def test_unwritable_out_is_one_line_before_training(
    tmp_path, capsys, monkeypatch, tiny_train_args, where
):
    blocker = tmp_path / "listing.txt"
    blocker.write_text("not a folder")
    out = {"a file": blocker, "below a file": blocker / "run"}.get(where, tmp_path / "ro")
    if where == "read-only":
        read_only(monkeypatch, out)
    # One line: the run's first log line ("head gap, backbone tiny, into ...") never came.
    stderr = fails(["train", "--out", str(out), "--head", "gap", *tiny_train_args], capsys)
    assert (
        stderr
        == {
            "a file": f"error: --out {out} is a file, not a folder\n",
            "below a file": f"error: --out {out}: {blocker} is a file, not a folder\n",
            "read-only": f"error: --out {out} cannot be created: Read-only file system\n",
        }[where]
    )


def test_out_in_use_is_one_line_naming_the_holder(tmp_path, capsys, tiny_train_args):
    out = tmp_path / "demo"
    out.mkdir()
    busy = (
        f"error: --out {out} is in use by another training run (pid {os.getpid()}); wait for it "
        "to end, or choose another --out\n"
    )
    with RunFolderLock(out):
        assert fails(["train", "--out", str(out), "--head", "gap", *tiny_train_args], capsys) == (
            busy
        )
        # The demo's several heads share the folder: it is held for all of them.
        assert fails(["train", "--out", str(out), *tiny_train_args], capsys) == busy
    assert main(["train", "--out", str(out), "--head", "gap", *tiny_train_args]) == 0


def test_full_disk_is_one_line_and_status_1(tmp_path, capsys, monkeypatch, tiny_train_args):
    out = tmp_path / "run"
    armed = {"on": False}
    train_epoch = engine._StageRun.train_epoch

    def train_then_fill_the_disk(run, epoch):
        row = train_epoch(run, epoch)
        armed["on"] = epoch == 1
        return row

    monkeypatch.setattr(engine._StageRun, "train_epoch", train_then_fill_the_disk)
    full_disk_when(monkeypatch, lambda: armed["on"])
    capsys.readouterr()
    args = ["train", "--out", str(out), "--head", "gap", *tiny_train_args, "--epochs", "2"]
    assert main(args) == 1
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    first = out / "fc" / "checkpoint-0001.pt"
    assert stderr.splitlines()[-1] == (
        f"error: stage fc, epoch 2: cannot write {out / 'fc' / 'checkpoint-0002.pt'}: No space "
        f"left on device; the last complete checkpoint, {first}, is intact: continue with "
        "--resume once the file can be written"
    )
    assert load_checkpoint(first)["epoch"] == 1 and temp_files(out / "fc") == []


def wait_for(path, process, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists(), process.stderr.read() if process.poll() is not None else "timeout"


@pytest.mark.slow
def test_second_run_refused_then_sigterm_says_how_to_continue(tmp_path, capsys):
    """Two real processes on one folder; SIGTERM ends the first like Ctrl-C, with status 143."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "bcnn_triton", "train", "--out", str(out), *LONG_RUN]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(out / "fc" / "checkpoint-0001.pt", first)
    assert fails(["train", "--out", str(out), *LONG_RUN], capsys) == (
        f"error: --out {out} is in use by another training run (pid {first.pid}); wait for it "
        "to end, or choose another --out\n"
    )
    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 143, stderr
    assert not (out / "fc" / "checkpoint-0004.pt").exists(), "the run ended before SIGTERM"
    last = stderr.strip().splitlines()[-1]
    prefix = "terminated (SIGTERM): continue with: "
    assert last.startswith(prefix) and last.endswith(f"--out {out} --resume"), stderr
    assert temp_files(out / "fc") == []

    assert shlex.split(last[len(prefix) :])[:2] == ["bcnn-triton", "train"]
    with RunFolderLock(out):  # the lock went with the process
        pass
