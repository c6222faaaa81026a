"""torchrun with 2 CPU processes (gloo): same results as one process, exact evaluation counts,
a worker killed with SIGKILL is restarted by ``--max-restarts`` and resumes exactly, and a run
folder held by another run stops every rank."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bcnn_triton.train import load_checkpoint
from bcnn_triton.train.run_folder import RunFolderLock

pytestmark = pytest.mark.slow

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# 320 training images (80 for validation), 8 per global batch (4 per rank); 7 test images, an
# odd number that two ranks cannot split evenly. A moderate lr keeps training smooth, so that
# float noise between the two layouts stays noise instead of being amplified.
TRAIN_ARGS = ["--stage", "fc", "--head", "bilinear", "--epochs", "3", "--batch-size", "8"]
TRAIN_ARGS += ["--lr", "0.5"]
TRAIN_ARGS += ["--image-size", "32", "--train-size", "400", "--test-size", "7"]
TRAIN_ARGS += ["--val-fraction", "0.2", "--no-progress"]


def train_command(out: Path, *, distributed: bool, extra: tuple[str, ...] = ()) -> list[str]:
    launcher = TORCHRUN + list(extra) if distributed else [sys.executable]
    return [*launcher, "-m", "bcnn_triton", "train", "--out", str(out), *TRAIN_ARGS]


def run(command: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The same run in one process and under torchrun (2 processes)."""
    root = tmp_path_factory.mktemp("ddp")
    single, ddp = root / "single", root / "ddp"
    run(train_command(single, distributed=False))
    result = run(train_command(ddp, distributed=True))
    (root / "ddp.log").write_text(result.stderr)
    return {"single": single / "fc", "ddp": ddp / "fc", "log": root / "ddp.log"}


def metrics(directory: Path) -> dict:
    return json.loads((directory / "metrics.json").read_text())


def test_matches_a_single_process_run(runs):
    single, ddp = metrics(runs["single"]), metrics(runs["ddp"])
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    for a, b in zip(single["epochs"], ddp["epochs"], strict=True):
        assert a["train_acc"] == b["train_acc"] and a["val_acc"] == b["val_acc"]
        # Float noise: gradients summed over ranks in another order, one thread per rank.
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-3)
    assert single["test"]["top1"] == ddp["test"]["top1"]
    weights_single = load_checkpoint(runs["single"] / "checkpoint-0003.pt")["model"]
    weights_ddp = load_checkpoint(runs["ddp"] / "checkpoint-0003.pt")["model"]
    for name, value in weights_single.items():
        torch.testing.assert_close(weights_ddp[name], value, rtol=1e-3, atol=1e-5, msg=name)


def test_evaluation_counts_every_sample_once(runs):
    test = metrics(runs["ddp"])["test"]
    assert test["count"] == 7
    assert sum(map(sum, test["confusion"])) == 7
    assert sum(row["count"] for row in test["per_class"]) == 7


def test_only_rank_zero_reports(runs):
    log = runs["log"].read_text()
    assert log.count("head bilinear, backbone tiny") == 1
    assert log.count("stage fc: best val accuracy") == 1


def _children(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may contain spaces.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(entry.name))
    return sorted(children)


def test_killed_worker_is_restarted_and_resumes_exactly(runs, tmp_path):
    out = tmp_path / "killed"
    command = train_command(out, distributed=True, extra=("--max-restarts", "1"))
    process = subprocess.Popen(
        [*command, "--auto-resume"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    first = out / "fc" / "checkpoint-0001.pt"
    deadline = time.monotonic() + 240
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    workers = _children(process.pid)
    assert first.exists() and len(workers) == 2, f"workers {workers}"
    os.kill(workers[-1], signal.SIGKILL)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-6000:]
    assert "resuming from" in stderr, stderr[-3000:]
    assert [row["epoch"] for row in metrics(out / "fc")["epochs"]] == [1, 2, 3]
    resumed = load_checkpoint(out / "fc" / "checkpoint-0003.pt")["model"]
    uninterrupted = load_checkpoint(runs["ddp"] / "checkpoint-0003.pt")["model"]
    for name, value in uninterrupted.items():
        assert torch.equal(resumed[name], value), name


def test_a_held_folder_stops_every_rank_at_once(tmp_path):
    """Rank 0 finds the folder locked; every rank says so and exits, none waits forever."""
    out = tmp_path / "busy"
    out.mkdir()
    with RunFolderLock(out):
        result = subprocess.run(
            train_command(out, distributed=True), capture_output=True, text=True, timeout=300
        )
    assert result.returncode != 0
    busy = f"error: --out {out} is in use by another training run (pid {os.getpid()})"
    for rank in (0, 1):
        assert f"[rank {rank}] {busy}" in result.stderr, result.stderr[-3000:]
    assert not (out / "fc").exists()
