"""The run folder: one run at a time (a lock that dies with its holder), writable before any
work, cleared of a killed run's temp files, and not left behind empty by a run that stopped."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys

import pytest
from torch.utils.data import DataLoader
from train.faults import (
    in_private_mount,
    leave_temp_file_by_sigkill,
    needs_mount,
    read_only,
    temp_files,
)

from bcnn_triton.errors import UserInputError
from bcnn_triton.train import run_training
from bcnn_triton.train.run_folder import (
    LOCK_NAME,
    RunFolderBusyError,
    RunFolderLock,
    check_writable_file,
    check_writable_folder,
)


def busy_message(folder, pid) -> str:
    return (
        f"--out {folder} is in use by another training run (pid {pid}); wait for it to end, or "
        "choose another --out"
    )


def test_a_held_folder_is_refused_until_released(tiny_config, cpu):
    config = tiny_config("run", epochs={"fc": 1})
    config.out.mkdir()
    with RunFolderLock(config.out):
        with pytest.raises(RunFolderBusyError) as refused:
            run_training(config, cpu)
        assert str(refused.value) == busy_message(config.out, os.getpid())
        assert sorted(path.name for path in config.out.iterdir()) == [LOCK_NAME]
    [result] = run_training(config, cpu)
    assert result.best_epoch == 1
    with RunFolderLock(config.out):  # the finished run let it go
        pass


def test_the_lock_dies_with_its_holder(tmp_path):
    """Two processes: a holder that is SIGKILLed, and this one, refused, then let in."""
    code = (
        "import sys, time\n"
        "from bcnn_triton.train.run_folder import RunFolderLock\n"
        "RunFolderLock(sys.argv[1]).acquire()\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(RunFolderBusyError) as refused:
            RunFolderLock(tmp_path).acquire()
        assert str(refused.value) == busy_message(tmp_path, holder.pid)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    with RunFolderLock(tmp_path):
        pass


def test_forked_data_loader_workers_do_not_keep_the_lock(tmp_path):
    lock = RunFolderLock(tmp_path).acquire()
    batches = iter(DataLoader(range(8), batch_size=2, num_workers=1))
    next(batches)  # the worker, forked while the lock was held, is running
    lock.release()
    with RunFolderLock(tmp_path):  # busy if the worker had kept its copy of the lock
        pass
    del batches


@pytest.mark.parametrize("where", ["a file", "below a file", "read-only"])
def test_an_unwritable_out_is_refused_before_anything_runs(
    tiny_config, cpu, tmp_path, monkeypatch, where
):
    blocker = tmp_path / "listing.txt"
    blocker.write_text("not a folder")
    out = {"a file": blocker, "below a file": blocker / "runs" / "a"}.get(where, tmp_path / "ro")
    expected = {
        "a file": f"--out {out} is a file, not a folder",
        "below a file": f"--out {out}: {blocker} is a file, not a folder",
        "read-only": f"--out {out} cannot be created: Read-only file system",
    }[where]
    if where == "read-only":
        read_only(monkeypatch, out)

    def data_must_not_be_built(config):
        raise AssertionError("the data was built before --out was checked")

    monkeypatch.setattr("bcnn_triton.train.run.build_datasets", data_must_not_be_built)
    with pytest.raises(UserInputError) as refused:
        run_training(tiny_config(out=out), cpu)
    assert str(refused.value) == expected
    assert blocker.read_text() == "not a folder"


def test_writable_checks_of_a_folder_and_a_file(tmp_path, monkeypatch):
    check_writable_folder(tmp_path / "new" / "deeper")
    assert (tmp_path / "new" / "deeper").is_dir()
    with pytest.raises(UserInputError, match=r"^--out .* is a folder; give a file name$"):
        check_writable_file(tmp_path / "new")
    read_only(monkeypatch, tmp_path / "new")
    with pytest.raises(UserInputError) as refused:
        check_writable_file(tmp_path / "new" / "model.onnx")
    folder = tmp_path / "new"
    assert str(refused.value) == (
        f"--out {folder / 'model.onnx'}: folder {folder} is not writable: Read-only file system"
    )


@needs_mount
@pytest.mark.slow
def test_a_real_read_only_filesystem(tmp_path):
    mount = tmp_path / "ro"
    train = f"{sys.executable} -m bcnn_triton train --no-progress --head gap --out"
    result = in_private_mount(mount, "ro", f"{train} {mount}/run; echo status $?")
    assert result.stdout.strip() == "status 2"
    assert result.stderr.strip().splitlines() == [
        f"error: --out {mount}/run cannot be created: Read-only file system"
    ]


def test_temp_files_of_a_killed_run_are_removed_on_resume(tiny_config, cpu, caplog):
    config = tiny_config("run", epochs={"fc": 1})
    run_training(config, cpu)
    stage = config.out / "fc"
    killed_write = leave_temp_file_by_sigkill(stage / "checkpoint-0002.pt")
    assert killed_write.read_bytes() == b"half of it"
    ours = [stage / ".metrics.json.k9_x2abc.tmp", config.out / ".best.pt.0123abcd.tmp"]
    not_ours = [stage / ".notes.txt.0123abcd.tmp", stage / "best.pt.tmp", stage / "x.tmp"]
    for path in ours + not_ours:
        path.write_bytes(b"left over")
    resumed = tiny_config("run", epochs={"fc": 2}, resume="required")
    with RunFolderLock(config.out), pytest.raises(RunFolderBusyError):
        run_training(resumed, cpu)  # refused: the files could be another run's
    assert killed_write.exists() and all(path.exists() for path in ours)

    with caplog.at_level(logging.INFO, logger="bcnn_triton"):
        [result] = run_training(resumed, cpu)
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert not killed_write.exists() and not any(path.exists() for path in ours)
    assert all(path.read_bytes() == b"left over" for path in not_ours)
    assert "removed 3 temp file(s) left by an interrupted run" in caplog.text
    assert temp_files(stage) == sorted(path.name for path in not_ours)


def test_a_run_that_stops_on_bad_input_leaves_no_folder(tiny_config, cpu, tmp_path):
    data = dataclasses.replace(tiny_config().data, synthetic_classes=50, synthetic_train_size=40)
    config = tiny_config("runs/new", data=data, stages=("fc", "all"))
    with pytest.raises(UserInputError, match="the validation split is empty"):
        run_training(config, cpu)
    assert not config.out.exists() and (tmp_path / "runs").is_dir()
    kept = tmp_path / "kept"
    (kept / "fc").mkdir(parents=True)
    (kept / "notes.txt").write_text("mine")
    with pytest.raises(UserInputError, match="the validation split is empty"):
        run_training(tiny_config("kept", data=data), cpu)
    assert sorted(path.name for path in kept.iterdir()) == [LOCK_NAME, "fc", "notes.txt"]
