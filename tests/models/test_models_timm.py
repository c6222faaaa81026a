"""timm backbones under every head: the map (grid, channels, values), training, freezing, errors.

Random init only (no download). The references are timm's own: ``forward_features`` of an
unpruned model with the same weights (a ViT's patch tokens after its final norm), and its
``feature_info``.
"""

from __future__ import annotations

import sys

import pytest
import torch

from bcnn_triton.models import (
    BilinearCNN,
    GlobalPoolCNN,
    ISqrtCovCNN,
    feature_channels,
    model_from_config,
)
from bcnn_triton.models.timm_backbone import (
    TimmUnavailableError,
    convert_sync_batchnorm,
    timm_architecture,
)

timm = pytest.importorskip("timm")
save_file = pytest.importorskip("safetensors.torch").save_file

pytestmark = pytest.mark.usefixtures("offline_hub")

# (backbone, image side, channels, stride): a CNN with BatchNorm, a CNN with LayerNorm, a ViT
# with a class token (its 14×14 position grid resampled to 3×3).
BACKBONES = [
    ("timm/resnet18", 64, 512, 32),
    ("timm/convnext_atto", 64, 320, 32),
    ("timm/vit_tiny_patch16_224", 48, 192, 16),
]
IDS = ["resnet18", "convnext", "vit"]


@pytest.fixture
def offline_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def timm_reference(name: str, backbone) -> torch.nn.Module:
    """An unpruned timm model with the weights of our (pruned) ``backbone``, in eval mode."""
    options = {"dynamic_img_size": True} if backbone.patch_tokens else {}
    reference = timm.create_model(name, **options)
    missing, _ = reference.load_state_dict(backbone.model.state_dict(), strict=False)
    assert all(key.startswith(("head", "fc.")) for key in missing), missing
    return reference.eval()


@pytest.mark.parametrize(("backbone", "size", "channels", "stride"), BACKBONES, ids=IDS)
def test_map_is_the_last_normed_map_on_the_stride_grid(backbone, size, channels, stride):
    model = GlobalPoolCNN(backbone, num_classes=3).eval()
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ours = model.features(images)
        expected = timm_reference(backbone.removeprefix("timm/"), model.features)
        tokens = expected.forward_features(images)
    assert feature_channels(backbone) == channels == model.features.channels
    assert timm_architecture(backbone).reduction == stride
    assert ours.shape == (2, channels, size // stride, size // stride)
    if model.features.patch_tokens:
        grid = tokens[:, expected.num_prefix_tokens :]
        tokens = grid.reshape(2, size // stride, size // stride, channels).permute(0, 3, 1, 2)
    torch.testing.assert_close(ours, tokens)


def test_vit_map_is_a_view_of_the_tokens_without_the_class_token():
    model = GlobalPoolCNN("timm/vit_tiny_patch16_224", num_classes=3).eval()
    with torch.no_grad():
        grid = model.features(torch.randn(2, 3, 48, 32))
    # 3×2 patches + 1 class token = 7 tokens of 192 channels, channels last in memory.
    assert grid.shape == (2, 192, 3, 2)
    assert grid.stride() == (7 * 192, 1, 2 * 192, 192)


@pytest.mark.parametrize(("backbone", "size", "channels", "stride"), BACKBONES[::2], ids=IDS[::2])
@pytest.mark.parametrize(
    ("model_class", "options", "descriptor_size"),
    [
        (BilinearCNN, {"reduce_dim": 16}, 16 * 16),
        (BilinearCNN, {"triu": True}, None),
        (ISqrtCovCNN, {"reduce_dim": 16}, 16 * 17 // 2),
        (GlobalPoolCNN, {}, None),
    ],
    ids=["bilinear", "bilinear-triu", "isqrt", "gap"],
)
def test_every_head_trains_every_parameter(
    backbone, size, channels, stride, model_class, options, descriptor_size
):
    model = model_class(backbone, num_classes=3, **options).train()
    expected_size = descriptor_size or (
        channels * (channels + 1) // 2 if options.get("triu") else channels
    )
    assert model.fc.in_features == expected_size
    logits = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    logits.square().sum().backward()
    # No unused parameter: DDP runs without find_unused_parameters.
    unused = [name for name, p in model.named_parameters() if p.grad is None]
    assert unused == []


@pytest.mark.parametrize(
    ("backbone", "size"),
    [("timm/resnet18", 64), ("timm/vit_tiny_patch16_224", 32)],
    ids=["resnet18", "vit"],
)
def test_frozen_backbone_keeps_parameters_and_norm_statistics(backbone, size):
    model = BilinearCNN(backbone, num_classes=3, reduce_dim=8, freeze_backbone=True).train()
    norm_types = (torch.nn.BatchNorm2d, torch.nn.LayerNorm)
    norms = [m for m in model.features.modules() if isinstance(m, norm_types)]
    assert norms and all(not p.requires_grad for m in norms for p in m.parameters())
    before = {k: v.clone() for k, v in model.features.state_dict().items()}
    head_before = model.fc.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(4, 3, size, size)).logsumexp(1).sum().backward()
        optimizer.step()
    after = model.features.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the frozen backbone moved"
    assert not torch.equal(head_before, model.fc.weight)


def test_config_rebuilds_the_model_and_its_weights_load():
    model = ISqrtCovCNN("timm/vit_tiny_patch16_224", num_classes=4, reduce_dim=8).eval()
    assert model.config["backbone"] == "timm/vit_tiny_patch16_224"
    clone = model_from_config(model.config).eval()
    clone.load_state_dict(model.state_dict())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(clone(images), model(images))


def test_second_stream_from_timm_is_resized_to_the_first():
    model = BilinearCNN("tiny", 3, second_backbone="timm/resnet18", reduce_dim=8)
    assert model.second_reduction.conv.in_channels == 512
    # tiny: 8×8 map at 64 px; resnet18: 2×2, resized to 8×8.
    assert model.descriptor(torch.randn(2, 3, 64, 64)).shape == (2, 64)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_from_a_local_file(tmp_path, suffix):
    source = timm.create_model("resnet18")
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".pth":
        torch.save(source.state_dict(), path)
    else:
        save_file(source.state_dict(), path)
    model = GlobalPoolCNN("timm/resnet18", 3, weights=str(path))
    loaded = model.features.model
    assert torch.equal(loaded.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert torch.equal(loaded.bn1.running_var, source.bn1.running_var)
    assert model.config["weights"] is None


@pytest.mark.parametrize(
    ("backbone", "weights", "error", "match"),
    [
        ("timm/no_such_net", None, ValueError, r"backbone 'timm/no_such_net': timm has no model"),
        ("timm/resnet18.no_such_tag", None, ValueError, r"Invalid pretrained tag"),
        ("timm/resnet18", "IMAGENET1K_V1", ValueError, r"neither 'DEFAULT' nor an existing file"),
        ("timm/resnet18", "missing.safetensors", Exception, r"does not exist"),
        ("timm/resnet18", "resnet34", ValueError, r"does not fit backbone 'timm/resnet18'"),
        ("timm/resnet18", "junk", ValueError, r"does not fit .*cannot be read"),
    ],
    ids=["model", "tag", "torchvision-name", "missing-file", "other-model", "junk-file"],
)
def test_bad_backbones_and_weights_are_named(tmp_path, backbone, weights, error, match):
    files = {"resnet34": timm.create_model("resnet34").state_dict(), "junk": b"not a file"}
    if weights in files:
        path = tmp_path / f"{weights}.pth"
        if isinstance(files[weights], bytes):
            path.write_bytes(files[weights])
        else:
            torch.save(files[weights], path)
        weights = str(path)
    elif weights == "missing.safetensors":
        weights = str(tmp_path / weights)
    with pytest.raises(error, match=match):
        GlobalPoolCNN(backbone, 3, weights=weights)


def test_without_timm_one_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    timm_architecture.cache_clear()
    with pytest.raises(TimmUnavailableError, match=r"pip install 'bcnn-triton\[timm\]'"):
        BilinearCNN("timm/resnet18", 3)
    monkeypatch.undo()
    timm_architecture.cache_clear()


def test_compiles_to_one_graph():
    # aot_eager: Dynamo and AOTAutograd trace the whole model (where graph breaks would show)
    # without Inductor's C++ compile time on the CPU.
    torch.compiler.reset()
    model = BilinearCNN("timm/vit_tiny_patch16_224", 3, reduce_dim=8).eval()
    images = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(images), model(images))


def test_sync_batchnorm_keeps_the_activation_of_timm_norm_layers():
    model = GlobalPoolCNN("timm/mobilenetv3_small_050", 3)
    fused = type(model.features.model.bn1).__name__
    assert fused == "BatchNormAct2d"
    converted = convert_sync_batchnorm(model)
    assert type(converted.features.model.bn1).__name__ == "SyncBatchNormAct"
    assert converted.features.model.bn1.act is not None
    plain = convert_sync_batchnorm(GlobalPoolCNN("tiny", 3))
    assert isinstance(plain.features[0][1], torch.nn.SyncBatchNorm)
