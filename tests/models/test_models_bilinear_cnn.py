"""BilinearCNN and GlobalPoolCNN: backbones, input sizes, two streams, options, config round
trip, parameter groups, the backbone freeze, and bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from reference import bilinear_pool_reference
from torch import nn

from bcnn_triton.models import (
    BACKBONES,
    HEADS,
    BilinearCNN,
    GlobalPoolCNN,
    create_model,
    feature_channels,
    model_from_config,
)

# Total stride of each backbone's feature map.
STRIDES = {
    "vgg16": 16,
    "vgg19": 16,
    "resnet18": 32,
    "resnet34": 32,
    "resnet50": 32,
    "resnet101": 32,
    "tiny": 8,
}


def assert_matches_reference(actual, reference):
    torch.testing.assert_close(actual, reference.to(actual.dtype), rtol=1e-5, atol=1e-6)


def cross_entropy_backward(model, images, num_classes):
    labels = torch.arange(images.shape[0]) % num_classes
    torch.nn.functional.cross_entropy(model(images), labels).backward()


def test_backbones_and_channels_are_listed():
    assert BACKBONES == ("vgg16", "vgg19", "resnet18", "resnet34", "resnet50", "resnet101", "tiny")
    assert [feature_channels(name) for name in BACKBONES] == [512, 512, 512, 512, 2048, 2048, 64]
    assert HEADS == ("bilinear", "isqrt", "gap")


@pytest.mark.parametrize("backbone", BACKBONES)
def test_each_backbone_gives_a_non_negative_map_and_its_descriptor(backbone):
    model = BilinearCNN(backbone, num_classes=3)
    images = torch.randn(2, 3, 64, 64)
    feature_map = model.features(images)
    side = 64 // STRIDES[backbone]
    assert feature_map.shape == (2, feature_channels(backbone), side, side)
    # Ends in a ReLU like relu5_3: the Gram entries are non-negative.
    assert feature_map.min() >= 0
    assert model.fc.in_features == feature_channels(backbone) ** 2
    assert model(images).shape == (2, 3)


def test_tiny_backbone_is_small():
    model = BilinearCNN("tiny", num_classes=10)
    backbone_size = sum(p.numel() for p in model.backbone_parameters())
    assert backbone_size < 100_000
    assert model(torch.rand(8, 3, 64, 64)).shape == (8, 10)


@pytest.mark.parametrize("backbone", ["tiny", "resnet18"])
@pytest.mark.parametrize(
    "size",
    [
        (67, 93),  # odd, unequal sides
        (32, 200),  # elongated
        (9, 9),  # a 2×2 tiny map; a 1×1 resnet map, a single location
    ],
    ids=["67x93", "32x200", "9x9"],
)
def test_any_input_size_pools_over_the_map_locations(backbone, size):
    # Unnormalised, so that the 1/L scale of the Gram (L from the map) shows in the descriptor.
    model = BilinearCNN(backbone, num_classes=5, normalize=False).eval()
    images = torch.randn(2, 3, *size)
    feature_map = model.features(images)
    assert feature_map.shape[-2:] == tuple(math.ceil(s / STRIDES[backbone]) for s in size)
    expected = bilinear_pool_reference(feature_map, normalize=False)
    assert_matches_reference(model.descriptor(images), expected)
    logits = model(images)
    assert logits.shape == (2, 5)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(signed_sqrt=False),
        dict(normalize=False),
        dict(eps=1e-3),
        dict(signed_sqrt=False, normalize=False, backend="torch"),
    ],
    ids=["default", "no-sqrt", "no-norm", "eps", "gram-only-torch"],
)
def test_op_options_pass_through(options):
    model = BilinearCNN("tiny", num_classes=4, **options).eval()
    for name, value in options.items():
        assert getattr(model.pool, name) == value
    images = torch.randn(2, 3, 40, 48)
    reference_options = {k: v for k, v in options.items() if k != "backend"}
    expected = bilinear_pool_reference(model.features(images), **reference_options)
    assert_matches_reference(model.descriptor(images), expected)


def test_triu_keeps_the_weighted_upper_triangle():
    full = BilinearCNN("tiny", num_classes=4).eval()
    upper = BilinearCNN("tiny", num_classes=4, triu=True).eval()
    upper.features.load_state_dict(full.features.state_dict())
    channels = feature_channels("tiny")
    assert upper.fc.in_features == channels * (channels + 1) // 2
    images = torch.randn(2, 3, 32, 32)
    descriptor = upper.descriptor(images)
    assert descriptor.shape == (2, channels * (channels + 1) // 2)
    rows, cols = torch.triu_indices(channels, channels)
    weights = torch.where(rows == cols, 1.0, math.sqrt(2.0))
    expected = full.descriptor(images).view(2, channels, channels)[:, rows, cols] * weights
    torch.testing.assert_close(descriptor, expected, rtol=1e-5, atol=1e-6)
    assert upper(images).shape == (2, 4)


@pytest.mark.interpreter
def test_triton_backend_passes_through_on_the_interpreter():
    torch_model = BilinearCNN("tiny", num_classes=3, backend="torch").eval()
    triton_model = BilinearCNN("tiny", num_classes=3, backend="triton").eval()
    triton_model.load_state_dict(torch_model.state_dict())
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(triton_model(images), torch_model(images), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def vgg_resnet_model():
    """A two-stream B-CNN: vgg16 (stride 16) and resnet18 (stride 32), so the maps differ."""
    return BilinearCNN("vgg16", num_classes=7, second_backbone="resnet18")


def test_two_stream_resizes_the_second_map_and_pools_both(vgg_resnet_model):
    model = vgg_resnet_model.eval()
    images = torch.randn(2, 3, 67, 93)
    first = model.features(images)
    second = model.second_features(images)
    assert first.shape == (2, 512, 4, 5)
    assert second.shape == (2, 512, 3, 3)
    resized = torch.nn.functional.interpolate(
        second, size=(4, 5), mode="bilinear", align_corners=False
    )
    descriptor = model.descriptor(images)
    assert descriptor.shape == (2, 512 * 512)
    assert model.fc.in_features == 512 * 512
    assert_matches_reference(descriptor, bilinear_pool_reference(first, resized))


def test_two_stream_gradients_reach_both_backbones(vgg_resnet_model):
    model = vgg_resnet_model.train()
    model.zero_grad(set_to_none=True)
    images = torch.randn(2, 3, 64, 64)
    cross_entropy_backward(model, images, 7)
    for stream in (model.features, model.second_features):
        gradients = [p.grad for p in stream.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in gradients)
        assert any(g.abs().sum() > 0 for g in gradients)


def test_two_stream_with_reduction_on_each_stream():
    model = BilinearCNN("tiny", num_classes=3, second_backbone="resnet18", reduce_dim=16)
    assert model.reduction.conv.in_channels == 64
    assert model.second_reduction.conv.in_channels == 512
    assert model.fc.in_features == 16 * 16
    assert model.descriptor(torch.randn(2, 3, 64, 64)).shape == (2, 256)


def test_reduce_dim_shrinks_a_2048_channel_map():
    model = BilinearCNN("resnet50", num_classes=3, reduce_dim=32)
    assert model.second_reduction is None
    assert model.fc.in_features == 32 * 32
    assert model.descriptor(torch.randn(2, 3, 64, 64)).shape == (2, 1024)


@pytest.mark.parametrize(
    "model_class, fan_in",
    [(BilinearCNN, 64 * 64), (GlobalPoolCNN, 64)],
    ids=["bilinear", "gap"],
)
def test_classifier_has_kaiming_normal_weight_and_zero_bias(model_class, fan_in):
    fc = model_class("tiny", num_classes=200).fc
    assert fc.in_features == fan_in
    weight = fc.weight.detach()
    expected_std = math.sqrt(2.0 / fan_in)
    assert weight.std().item() == pytest.approx(expected_std, rel=0.03)
    assert abs(weight.mean().item()) < 4 * expected_std / math.sqrt(weight.numel())
    assert torch.equal(fc.bias, torch.zeros(200))


def test_global_pool_cnn_averages_the_map():
    model = GlobalPoolCNN("tiny", num_classes=6).eval()
    images = torch.randn(3, 3, 45, 61)
    expected = model.features(images).mean(dim=(2, 3))
    torch.testing.assert_close(model.descriptor(images), expected)
    assert model.fc.in_features == 64
    assert model(images).shape == (3, 6)
    assert model.second_features is None


def test_global_pool_cnn_with_reduction():
    model = GlobalPoolCNN("resnet50", num_classes=6, reduce_dim=24)
    assert model.fc.in_features == 24
    assert model.descriptor(torch.randn(2, 3, 64, 64)).shape == (2, 24)


def test_create_model_picks_the_head():
    assert type(create_model(backbone="tiny", num_classes=3)) is BilinearCNN
    assert type(create_model("bilinear", backbone="tiny", num_classes=3)) is BilinearCNN
    assert type(create_model("gap", backbone="tiny", num_classes=3)) is GlobalPoolCNN


ROUND_TRIP_MODELS = {
    "tiny": lambda: BilinearCNN("tiny", 5),
    "tiny-triu-options": lambda: BilinearCNN(
        "tiny", 5, triu=True, signed_sqrt=False, eps=1e-6, backend="torch"
    ),
    "two-stream-reduced-frozen": lambda: BilinearCNN(
        "tiny", 5, second_backbone="resnet18", reduce_dim=16, freeze_backbone=True
    ),
    "gap-reduced": lambda: GlobalPoolCNN("resnet18", 4, reduce_dim=8),
}


@pytest.mark.parametrize("make_model", ROUND_TRIP_MODELS.values(), ids=ROUND_TRIP_MODELS.keys())
def test_config_round_trip_rebuilds_the_same_model(make_model):
    model = make_model()
    images = torch.randn(2, 3, 48, 48)
    # A training step's BatchNorm statistics must travel with the state dict too.
    model.train()(images)
    model.eval()
    config = json.loads(json.dumps(model.config))
    assert config["weights"] is None
    clone = model_from_config(config)
    assert type(clone) is type(model)
    clone.load_state_dict(model.state_dict())
    clone.eval()
    assert clone.config == model.config
    assert clone.backbone_frozen == model.backbone_frozen
    assert torch.equal(clone(images), model(images))


def test_config_names_every_constructor_argument():
    config = BilinearCNN("tiny", 5, reduce_dim=8).config
    assert config == {
        "head": "bilinear",
        "backbone": "tiny",
        "num_classes": 5,
        "weights": None,
        "second_backbone": None,
        "second_weights": None,
        "reduce_dim": 8,
        "freeze_backbone": False,
        "signed_sqrt": True,
        "normalize": True,
        "eps": 1e-10,
        "triu": False,
        "backend": None,
    }
    assert GlobalPoolCNN("tiny", 5).config == {
        "head": "gap",
        "backbone": "tiny",
        "num_classes": 5,
        "weights": None,
        "reduce_dim": None,
        "freeze_backbone": False,
    }


def test_parameter_groups_split_backbone_and_head():
    model = BilinearCNN("tiny", 3, second_backbone="resnet18", reduce_dim=8)
    backbone = {id(p) for p in model.backbone_parameters()}
    head = {id(p) for p in model.head_parameters()}
    expected_backbone = {
        id(p) for m in (model.features, model.second_features) for p in m.parameters()
    }
    expected_head = {
        id(p) for m in (model.reduction, model.second_reduction, model.fc) for p in m.parameters()
    }
    assert backbone == expected_backbone
    assert head == expected_head
    assert backbone | head == {id(p) for p in model.parameters()}


FREEZE_MODELS = {
    "bilinear-two-stream": lambda frozen: BilinearCNN(
        "tiny", 4, second_backbone="resnet18", reduce_dim=8, freeze_backbone=frozen
    ),
    "gap": lambda frozen: GlobalPoolCNN("tiny", 4, reduce_dim=8, freeze_backbone=frozen),
}


def backbone_modules(model):
    return [m for m in (model.features, model.second_features) if m is not None]


def norm_statistics(modules):
    """Copies of every BatchNorm buffer (running mean, var, batch count) of ``modules``."""
    return [b.clone() for module in modules for b in module.buffers()]


def statistics_changed(before, modules):
    after = norm_statistics(modules)
    return [not torch.equal(a, b) for a, b in zip(before, after, strict=True)]


@pytest.mark.parametrize("make_model", FREEZE_MODELS.values(), ids=FREEZE_MODELS.keys())
def test_frozen_backbone_gets_no_gradient_and_keeps_its_statistics(make_model):
    model = make_model(True)
    assert model.backbone_frozen
    assert not any(p.requires_grad for p in model.backbone_parameters())
    assert all(p.requires_grad for p in model.head_parameters())
    model.eval()
    model.train()
    backbones = backbone_modules(model)
    assert not any(m.training for backbone in backbones for m in backbone.modules())
    assert model.reduction.training and model.fc.training
    backbone_before = norm_statistics(backbones)
    head_before = norm_statistics([model.reduction])
    images = torch.randn(4, 3, 48, 48)
    cross_entropy_backward(model, images, 4)
    assert not any(statistics_changed(backbone_before, backbones))
    assert all(p.grad is None for p in model.backbone_parameters())
    # The head is newly initialised: it trains, BatchNorm statistics included.
    assert all(p.grad is not None for p in model.head_parameters())
    assert all(statistics_changed(head_before, [model.reduction]))


@pytest.mark.parametrize("make_model", FREEZE_MODELS.values(), ids=FREEZE_MODELS.keys())
def test_unfreezing_restores_backbone_training(make_model):
    model = make_model(True).train()
    model.set_backbone_frozen(False)
    assert not model.backbone_frozen
    assert all(p.requires_grad for p in model.backbone_parameters())
    backbones = backbone_modules(model)
    assert all(m.training for backbone in backbones for m in backbone.modules())
    before = norm_statistics(backbones)
    cross_entropy_backward(model, torch.randn(4, 3, 48, 48), 4)
    assert all(statistics_changed(before, backbones))
    assert all(p.grad is not None for p in model.backbone_parameters())


def test_freezing_follows_the_model_mode():
    model = BilinearCNN("tiny", 4).eval()
    model.set_backbone_frozen(True)
    model.set_backbone_frozen(False)
    # Unfrozen in eval mode: the backbone stays in eval mode until model.train().
    assert not model.features.training
    model.train()
    assert model.features.training
    model.set_backbone_frozen(True)
    assert not model.features.training
    assert model.train() is model
    assert not model.features.training and model.fc.training


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(backbone="vgg17"), ValueError, r"backbone must be one of vgg16, .*tiny; got 'vgg17'"),
        (
            dict(second_backbone="alexnet"),
            ValueError,
            r"second_backbone must be one of .*'alexnet'",
        ),
        (dict(num_classes=0), ValueError, r"num_classes must be an integer >= 1; got 0"),
        (dict(num_classes=-3), ValueError, r"num_classes .* got -3"),
        (dict(num_classes=2.5), ValueError, r"num_classes .* got 2\.5"),
        (dict(num_classes=True), ValueError, r"num_classes .* got True"),
        (dict(reduce_dim=0), ValueError, r"reduce_dim must be None or an integer >= 1; got 0"),
        (dict(second_weights="DEFAULT"), ValueError, r"second_weights needs a second_backbone"),
        (
            dict(second_backbone="resnet18", triu=True),
            ValueError,
            r"triu=True .* second_backbone='resnet18'",
        ),
        (dict(eps=-1.0), ValueError, r"eps must be finite and >= 0; got -1"),
        (
            dict(backend="cuda"),
            ValueError,
            r"backend must be None, 'auto', 'torch' or 'triton'; got 'cuda'",
        ),
    ],
    ids=[
        "backbone",
        "second-backbone",
        "classes-0",
        "classes-negative",
        "classes-float",
        "classes-bool",
        "reduce-dim-0",
        "second-weights-alone",
        "triu-two-streams",
        "eps",
        "backend",
    ],
)
def test_bad_bilinear_arguments_are_named(kwargs, error, match):
    arguments = {"backbone": "tiny", "num_classes": 3, **kwargs}
    with pytest.raises(error, match=match):
        BilinearCNN(**arguments)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(backbone="resnet152"), r"backbone must be one of .*; got 'resnet152'"),
        (dict(num_classes=0), r"num_classes must be an integer >= 1; got 0"),
        (dict(reduce_dim=-1), r"reduce_dim must be None or an integer >= 1; got -1"),
    ],
    ids=["backbone", "classes", "reduce-dim"],
)
def test_bad_global_pool_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GlobalPoolCNN(**{"backbone": "tiny", "num_classes": 3, **kwargs})


def test_bad_head_and_config():
    with pytest.raises(ValueError, match=r"head must be one of bilinear, isqrt, gap; got 'max'"):
        create_model("max", backbone="tiny")
    with pytest.raises(ValueError, match=r"head must be one of .*; got 'max'"):
        model_from_config({"head": "max", "backbone": "tiny"})
    with pytest.raises(TypeError, match=r"config must be a dict; got list"):
        model_from_config(["tiny"])


@pytest.mark.parametrize("model_class", [BilinearCNN, GlobalPoolCNN], ids=["bilinear", "gap"])
@pytest.mark.parametrize(
    "images, error, match",
    [
        (torch.rand(3, 32, 32), ValueError, r"\(N, 3, H, W\); got shape \(3, 32, 32\)"),
        (torch.rand(2, 1, 32, 32), ValueError, r"\(N, 3, H, W\); got shape \(2, 1, 32, 32\)"),
        (
            torch.zeros(2, 3, 32, 32, dtype=torch.uint8),
            TypeError,
            r"floating-point .*got torch.uint8",
        ),
        ([[0.0]], TypeError, r"images must be a torch.Tensor; got list"),
    ],
    ids=["rank-3", "one-channel", "uint8", "list"],
)
def test_bad_images_are_named(model_class, images, error, match):
    model = model_class("tiny", num_classes=3)
    with pytest.raises(error, match=match):
        model(images)


def test_images_too_small_for_vgg(vgg_resnet_model):
    with pytest.raises(ValueError, match=r"at least 16×16 .* got H×W = 8×40"):
        vgg_resnet_model(torch.rand(1, 3, 8, 40))


def test_models_are_modules_exported_at_the_top():
    import bcnn_triton

    assert bcnn_triton.BilinearCNN is BilinearCNN
    assert "BilinearCNN" in bcnn_triton.__all__
    assert isinstance(BilinearCNN("tiny", 2), nn.Module)


@pytest.mark.parametrize("head", HEADS)
def test_every_registered_head_builds_and_names_itself(head):
    model = create_model(head, backbone="tiny", num_classes=3, reduce_dim=8)
    assert model.config["head"] == head
    assert model_from_config(model.config).config == model.config
    assert model(torch.rand(2, 3, 16, 16)).shape == (2, 3)
