"""timm backbones through both stages of the recipe: stage fc leaves the backbone exactly as
built (BatchNorm statistics included), stage all fine-tunes it, and the checkpoints record the
model's own preprocessing."""

from __future__ import annotations

import pytest
import torch

from bcnn_triton.models import create_model
from bcnn_triton.train import load_checkpoint, run_training


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
