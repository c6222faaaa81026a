"""timm backbones through both stages of the recipe: stage fc leaves the backbone exactly as
built (BatchNorm statistics included), stage all fine-tunes it, and the checkpoints record the
model's own preprocessing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from bcnn_triton.models import create_model
from bcnn_triton.train import load_checkpoint, run_training

pytest.importorskip("timm")


@pytest.mark.parametrize(
    ("backbone", "head", "options", "preprocessing"),
    [
        ("timm/resnet18", "gap", {}, ([0.485, 0.456, 0.406], "bicubic")),
        ("timm/vit_tiny_patch16_224", "isqrt", {"reduce_dim": 8}, ([0.5, 0.5, 0.5], "bicubic")),
    ],
    ids=["resnet18-gap", "vit-isqrt"],
)
def test_fc_freezes_all_fine_tunes_and_checkpoints_record_preprocessing(
    tiny_config, cpu, monkeypatch, backbone, head, options, preprocessing
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = tiny_config(
        backbone=backbone,
        head=head,
        weights=None,
        stages=("fc", "all"),
        epochs={"fc": 1, "all": 1},
        **options,
    )
    fc, _ = run_training(config, cpu)
    # The run's initial model: seeded as run_training seeds it.
    torch.manual_seed(config.seed)
    initial = create_model(head, backbone=backbone, num_classes=4, **options).state_dict()
    trained_fc = load_checkpoint(fc.directory / "best.pt")
    trained_all = load_checkpoint(fc.directory.parent / "all" / "best.pt")
    backbone_keys = [key for key in initial if key.startswith("features.")]
    assert all(torch.equal(trained_fc["model"][key], initial[key]) for key in backbone_keys)
    assert not all(torch.equal(trained_all["model"][key], initial[key]) for key in backbone_keys)
    mean, interpolation = preprocessing
    for state in (trained_fc, trained_all):
        assert state["model_config"]["backbone"] == backbone
        assert state["preprocessing"]["mean"] == mean
        assert state["preprocessing"]["interpolation"] == interpolation
        assert state["preprocessing"]["image_size"] == 32


@pytest.mark.slow
def test_torchrun_fine_tunes_a_vit_without_unused_parameters(tmp_path):
    # Stage all under DDP (no find_unused_parameters) fails if a backbone parameter gets no
    # gradient, e.g. a classifier head left in the pruned timm model.
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    command += ["2", "-m", "bcnn_triton", "train", "--out", str(out), "--weights", "none"]
    command += ["--backbone", "timm/vit_tiny_patch16_224", "--head", "isqrt", "--reduce-dim", "8"]
    command += ["--epochs", "1", "1", "--image-size", "32", "--train-size", "40", "--test-size"]
    command += ["8", "--val-fraction", "0.2", "--batch-size", "8", "--no-progress"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    state = load_checkpoint(out / "all" / "best.pt")
    assert state["world_size"] == 2 and state["model_config"]["backbone"].startswith("timm/")
