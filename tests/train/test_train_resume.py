"""Resuming: an interrupted-and-resumed run ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from bcnn_triton.errors import UserInputError
from bcnn_triton.train import load_checkpoint, run_training

# Enough images (25 steps an epoch) for the kill below to land while the run is still going.
LARGE_TRAIN = 400


def assert_same_tensors(a, b, path="state"):
    """Recursively: equal structure, bit-identical tensors, equal other leaves."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same_tensors(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tensors(x, y, f"{path}[{index}]")
    else:
        assert a == b, path


def without_timings(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def assert_same_run(directory_a, directory_b, epoch):
    name = f"checkpoint-{epoch:04d}.pt"
    a, b = load_checkpoint(directory_a / name), load_checkpoint(directory_b / name)
    for key in ("model", "optimizer", "scheduler", "rng"):
        assert_same_tensors(a[key], b[key], key)
    assert without_timings(a["history"]) == without_timings(b["history"])
    assert_same_tensors(
        load_checkpoint(directory_a / "best.pt")["model"],
        load_checkpoint(directory_b / "best.pt")["model"],
    )


@pytest.mark.slow
def test_stopped_then_resumed_equals_uninterrupted(tiny_config, cpu):
    run_training(tiny_config("straight", epochs={"fc": 3}), cpu)
    run_training(tiny_config("stopped", epochs={"fc": 2}), cpu)
    results = run_training(tiny_config("stopped", epochs={"fc": 3}, resume="required"), cpu)
    assert [row["epoch"] for row in results[0].history] == [1, 2, 3]
    assert_same_run(results[0].directory.parent.parent / "straight" / "fc", results[0].directory, 3)


@pytest.mark.slow
def test_corrupt_latest_checkpoint_resumes_from_the_previous(tiny_config, cpu, caplog):
    run_training(tiny_config("straight", epochs={"fc": 3}), cpu)
    stopped = tiny_config("stopped", epochs={"fc": 3})
    run_training(stopped, cpu)
    latest = stopped.out / "fc" / "checkpoint-0003.pt"
    latest.write_bytes(latest.read_bytes()[:1000])
    results = run_training(tiny_config("stopped", epochs={"fc": 3}, resume="required"), cpu)
    assert "checkpoint-0003.pt is truncated or corrupt" in caplog.text
    assert_same_run(stopped.out.parent / "straight" / "fc", results[0].directory, 3)


def test_resume_modes(tiny_config, cpu):
    with pytest.raises(UserInputError, match="--resume: no checkpoint to resume from"):
        run_training(tiny_config("fresh", resume="required"), cpu)
    run_training(tiny_config("fresh", resume="auto"), cpu)
    with pytest.raises(UserInputError, match=r"already holds checkpoints.*pass --resume"):
        run_training(tiny_config("fresh"), cpu)


def test_resume_refuses_another_model(tiny_config, cpu):
    run_training(tiny_config("run"), cpu)
    with pytest.raises(UserInputError, match=r"made for another model: head 'bilinear'.*'gap'"):
        run_training(tiny_config("run", head="gap", resume="required"), cpu)


@pytest.mark.slow
def test_killed_process_resumes_bit_identical(tmp_path, tiny_config, cpu):
    """SIGKILL a real training process mid-run, resume it in-process, compare to a clean run."""
    run_training(tiny_config("straight", train_size=LARGE_TRAIN, epochs={"fc": 3}), cpu)
    out = tmp_path / "killed"
    # The same run as tiny_config(train_size=LARGE_TRAIN), through the command line.
    command = [sys.executable, "-m", "bcnn_triton", "train", "--out", str(out)]
    command += ["--stage", "fc", "--head", "bilinear", "--epochs", "3", "--batch-size", "8"]
    command += ["--image-size", "32", "--train-size", str(LARGE_TRAIN), "--test-size", "16"]
    command += ["--val-fraction", "0.2", "--lr", "1", "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = out / "fc" / "checkpoint-0001.pt"
    deadline = time.monotonic() + 120
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert first.exists(), process.stderr.read().decode() if process.poll() is not None else ""
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (out / "fc" / "checkpoint-0003.pt").exists(), "the run ended before the kill"
    resumed = tiny_config("killed", train_size=LARGE_TRAIN, epochs={"fc": 3}, resume="required")
    results = run_training(resumed, cpu)
    assert_same_run(tmp_path / "straight" / "fc", results[0].directory, 3)
