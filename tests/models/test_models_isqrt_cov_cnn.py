"""ISqrtCovCNN: the descriptor, the 1×1 reduction, config round trip, head choice, freeze and
bad arguments."""

from __future__ import annotations

import json

import pytest
import torch
from reference import isqrt_cov_pool_reference

from bcnn_triton import ISqrtCovPool
from bcnn_triton.models import HEADS, ISqrtCovCNN, create_model, model_from_config


def test_descriptor_is_isqrt_of_the_reduced_map():
    model = ISqrtCovCNN("tiny", 5, reduce_dim=12, iterations=3).eval()
    images = torch.randn(2, 3, 40, 56)
    reduced = model.reduction(model.features(images))
    descriptor = model.descriptor(images)
    assert descriptor.shape == (2, 12 * 13 // 2)
    expected = isqrt_cov_pool_reference(reduced, iterations=3)
    torch.testing.assert_close(descriptor, expected.to(torch.float32), atol=1e-6, rtol=1e-5)
    assert model(images).shape == (2, 5)
    assert model.fc.in_features == 78


def test_without_reduction_the_backbone_channels_are_pooled_in_full():
    model = ISqrtCovCNN("tiny", 3, triu=False)
    assert model.reduction is None
    assert model.fc.in_features == 64 * 64
    assert isinstance(model.pool, ISqrtCovPool)
    assert "iterations=5" in repr(model.pool)


def test_gradients_reach_backbone_reduction_and_classifier():
    model = ISqrtCovCNN("tiny", 4, reduce_dim=8)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(3, 3, 32, 32)), torch.arange(3))
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name


def test_create_model_and_heads_know_isqrt():
    assert "isqrt" in HEADS
    assert type(create_model("isqrt", backbone="tiny", num_classes=3)) is ISqrtCovCNN


def test_config_round_trip_rebuilds_the_same_model():
    model = ISqrtCovCNN("tiny", 5, reduce_dim=8, iterations=4, eps=1e-8, backend="torch")
    images = torch.randn(2, 3, 48, 48)
    model.train()(images)  # BatchNorm statistics travel with the state dict
    model.eval()
    config = json.loads(json.dumps(model.config))
    assert config == {
        "head": "isqrt",
        "backbone": "tiny",
        "num_classes": 5,
        "weights": None,
        "reduce_dim": 8,
        "freeze_backbone": False,
        "iterations": 4,
        "triu": True,
        "eps": 1e-8,
        "backend": "torch",
    }
    clone = model_from_config(config)
    assert type(clone) is ISqrtCovCNN
    clone.load_state_dict(model.state_dict())
    assert torch.equal(clone.eval()(images), model(images))


def test_frozen_backbone_trains_only_the_head():
    model = ISqrtCovCNN("tiny", 4, reduce_dim=8, freeze_backbone=True).train()
    assert not any(m.training for m in model.features.modules())
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4))
    loss.backward()
    assert all(p.grad is None for p in model.backbone_parameters())
    assert all(p.grad is not None for p in model.head_parameters())
    head = {id(p) for p in model.head_parameters()}
    assert head == {id(p) for m in (model.reduction, model.fc) for p in m.parameters()}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(backbone="alexnet"), ValueError, "backbone"),
        (dict(num_classes=0), ValueError, "num_classes must be an integer >= 1; got 0"),
        (dict(reduce_dim=-3), ValueError, "reduce_dim"),
        (dict(iterations=0), ValueError, "iterations must be >= 1; got 0"),
        (dict(eps=-1.0), ValueError, "eps"),
        (dict(backend="cuda"), ValueError, "backend must be"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        ISqrtCovCNN(**{"backbone": "tiny", "num_classes": 3, **kwargs})
