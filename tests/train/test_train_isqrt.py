"""The iSQRT-COV head through training: both stages with a 1×1 reduction (so the square root's
backward runs in every step), checkpoints that eval and resume read back, and torchrun."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from bcnn_triton.cli import main
from bcnn_triton.models import ISqrtCovCNN
from bcnn_triton.train import load_checkpoint, load_model

# 32 px synthetic images, 48 train / 12 validation / 16 test; 8 channels after the reduction.
TINY = [
    "--image-size", "32", "--train-size", "60", "--test-size", "16", "--val-fraction", "0.2",
    "--batch-size", "8", "--no-progress",
]  # fmt: skip
ISQRT_TRAIN = ["--head", "isqrt", "--reduce-dim", "8", *TINY]


def metrics(directory) -> dict:
    return json.loads((directory / "metrics.json").read_text())


def test_both_stages_then_eval_and_resume(tmp_path, capsys):
    out = tmp_path / "isqrt"
    args = ["train", "--out", str(out), "--stage", "both", "--epochs", "1", "--lr", "0.5", "0.01"]
    assert main([*args, *ISQRT_TRAIN]) == 0
    model, _ = load_model(out / "all" / "best.pt")
    assert isinstance(model, ISqrtCovCNN) and model.config["reduce_dim"] == 8
    assert model.fc.in_features == 8 * 9 // 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # The reduction trained in stage fc: the pool's gradient reached it.
    fc_weights = load_checkpoint(out / "fc" / "checkpoint-0001.pt")["model"]
    initial = ISqrtCovCNN("tiny", 4, reduce_dim=8).state_dict()
    assert not torch.equal(fc_weights["reduction.conv.weight"], initial["reduction.conv.weight"])

    capsys.readouterr()
    assert main(["eval", str(out / "all" / "best.pt"), "--out", str(out / "eval")]) == 0
    evaluated = json.loads((out / "eval" / "metrics.json").read_text())
    assert evaluated["top1"] == metrics(out / "all")["test"]["top1"]

    # A larger --epochs with --resume extends the finished stage all.
    args = ["train", "--out", str(out), "--stage", "all", "--epochs", "2", "--lr", "0.01"]
    args.append("--resume")
    assert main([*args, *ISQRT_TRAIN]) == 0
    assert [row["epoch"] for row in metrics(out / "all")["epochs"]] == [1, 2]


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


@pytest.mark.slow
def test_torchrun_matches_one_process(tmp_path):
    # No reduction: BatchNorm in a trained reduction would see each rank's half batch.
    args = ["-m", "bcnn_triton", "train", "--stage", "fc", "--epochs", "2", "--lr", "0.5"]
    args += ["--head", "isqrt", *TINY]
    _run([sys.executable, *args, "--out", str(tmp_path / "single")])
    _run([*TORCHRUN, *args, "--out", str(tmp_path / "ddp")])
    single, ddp = metrics(tmp_path / "single" / "fc"), metrics(tmp_path / "ddp" / "fc")
    assert ddp["world_size"] == 2
    for a, b in zip(single["epochs"], ddp["epochs"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
        assert a["val_acc"] == b["val_acc"]
    weights_single = load_checkpoint(tmp_path / "single" / "fc" / "checkpoint-0002.pt")["model"]
    weights_ddp = load_checkpoint(tmp_path / "ddp" / "fc" / "checkpoint-0002.pt")["model"]
    for name, value in weights_single.items():
        torch.testing.assert_close(weights_ddp[name], value, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.slow
def test_torchrun_trains_the_reduction_through_the_square_root(tmp_path):
    args = ["-m", "bcnn_triton", "train", "--stage", "fc", "--epochs", "2", "--lr", "0.5"]
    _run([*TORCHRUN, *args, *ISQRT_TRAIN, "--out", str(tmp_path / "ddp")])
    run = metrics(tmp_path / "ddp" / "fc")
    assert run["world_size"] == 2 and run["test"]["count"] == 16
    assert all(math.isfinite(row["train_loss"]) for row in run["epochs"])
    weights = load_checkpoint(tmp_path / "ddp" / "fc" / "checkpoint-0002.pt")["model"]
    initial = ISqrtCovCNN("tiny", 4, reduce_dim=8).state_dict()
    assert not torch.equal(weights["reduction.conv.weight"], initial["reduction.conv.weight"])
