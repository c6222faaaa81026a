"""Backbone weights: local state-dict files, torchvision's cache, and the offline error.

No test touches the network: TORCH_HOME points to an empty folder and torch.hub's download
function is replaced by one that fails as it does offline (URLError) and records its URL.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models import ResNet18_Weights, ResNet50_Weights, VGG16_Weights

from bcnn_triton.models import BilinearCNN, GlobalPoolCNN, WeightsUnavailableError


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub folder and a download that fails; returns (hub dir, URLs tried)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    attempted = []

    def download_fails(url, destination, *args, **kwargs):
        attempted.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", download_fails)
    return Path(torch.hub.get_dir()), attempted


@pytest.fixture
def resnet18_file(tmp_path):
    """A random torchvision resnet18 saved as a state dict, as its pretrained file would be."""
    path = tmp_path / "resnet18-random.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def assert_same_tensors(module, state, prefix):
    for name, tensor in module.state_dict().items():
        assert torch.equal(tensor, state[prefix + name]), name


@pytest.mark.parametrize("as_string", [False, True], ids=["Path", "str"])
def test_local_file_loads_into_the_backbone(resnet18_file, as_string):
    state = torch.load(resnet18_file, weights_only=True)
    weights = str(resnet18_file) if as_string else resnet18_file
    model = BilinearCNN("resnet18", num_classes=3, weights=weights)
    assert_same_tensors(model.features.conv1, state, "conv1.")
    assert_same_tensors(model.features.layer4, state, "layer4.")
    # The checkpoint carries the weights; the config only rebuilds the architecture.
    assert model.config["weights"] is None


def test_local_file_for_the_second_stream_and_the_baseline(resnet18_file):
    state = torch.load(resnet18_file, weights_only=True)
    model = BilinearCNN("tiny", 3, second_backbone="resnet18", second_weights=resnet18_file)
    assert_same_tensors(model.second_features.layer1, state, "layer1.")
    assert model.config["second_weights"] is None
    baseline = GlobalPoolCNN("resnet18", 3, weights=resnet18_file)
    assert_same_tensors(baseline.features.bn1, state, "bn1.")


def test_tiny_backbone_loads_its_own_state_dict(tmp_path):
    trained = BilinearCNN("tiny", num_classes=3)
    path = tmp_path / "tiny.pt"
    torch.save(trained.features.state_dict(), path)
    model = BilinearCNN("tiny", num_classes=3, weights=path)
    assert_same_tensors(model.features, trained.features.state_dict(), "")


def test_file_of_another_model_is_refused(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(ValueError, match=r"do not fit backbone 'resnet18'.*torchvision's resnet18"):
        BilinearCNN("resnet18", num_classes=3, weights=path)


def test_unreadable_file_is_refused(tmp_path):
    path = tmp_path / "corrupt.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"corrupt\.pth.*cannot be read as a state dict"):
        BilinearCNN("resnet18", num_classes=3, weights=path)


def test_missing_file_is_unavailable(tmp_path):
    missing = tmp_path / "vgg16-397923af.pth"
    with pytest.raises(WeightsUnavailableError, match=r"vgg16-397923af\.pth.*does not exist"):
        BilinearCNN("vgg16", weights=missing)
    with pytest.raises(WeightsUnavailableError, match=r"does not exist"):
        BilinearCNN("vgg16", weights=str(missing))


@pytest.mark.parametrize(
    "weights",
    [VGG16_Weights.IMAGENET1K_V1, "VGG16_Weights.IMAGENET1K_V1", "IMAGENET1K_V1", "DEFAULT"],
    ids=["enum", "full-name", "member-name", "default"],
)
def test_offline_download_gives_one_clear_error(offline_hub, weights):
    hub_dir, attempted = offline_hub
    with pytest.raises(WeightsUnavailableError) as raised:
        BilinearCNN("vgg16", num_classes=200, weights=weights)
    message = str(raised.value)
    assert isinstance(raised.value, RuntimeError)
    assert attempted == [VGG16_Weights.IMAGENET1K_V1.url]
    assert "VGG16_Weights.IMAGENET1K_V1" in message
    assert "offline" in message
    assert 'weights="/path/to/vgg16-397923af.pth"' in message
    assert "$TORCH_HOME/hub/checkpoints" in message
    assert str(hub_dir / "checkpoints") in message
    assert isinstance(raised.value.__cause__, urllib.error.URLError)


def test_offline_error_names_the_second_stream_weights(offline_hub):
    with pytest.raises(
        WeightsUnavailableError, match=r"ResNet50_Weights\.IMAGENET1K_V2.*'resnet50'"
    ):
        BilinearCNN("tiny", 3, second_backbone="resnet50", second_weights="DEFAULT")


def test_cached_weights_load_without_a_download(offline_hub):
    hub_dir, attempted = offline_hub
    cached = hub_dir / "checkpoints" / ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, cached)
    model = BilinearCNN("resnet18", num_classes=3, weights="DEFAULT")
    assert attempted == []
    assert_same_tensors(model.features.layer2, state, "layer2.")


@pytest.mark.parametrize(
    "backbone, weights, error, match",
    [
        ("vgg16", "IMAGENET1K_V9", ValueError, r"neither a weight name .* nor an existing file"),
        ("vgg16", "IMAGENET1K_V9", ValueError, r"VGG16_Weights\.\{IMAGENET1K_V1, .*DEFAULT\}"),
        ("resnet18", ResNet50_Weights.DEFAULT, ValueError, r"not weights of backbone 'resnet18'"),
        ("resnet18", "ResNet50_Weights.IMAGENET1K_V1", ValueError, r"neither a weight name"),
        ("tiny", "DEFAULT", ValueError, r"'tiny' has no torchvision weights"),
        ("tiny", 42, TypeError, r"weights must be None, .* got int"),
    ],
    ids=["unknown-name", "lists-names", "other-enum", "other-enum-name", "tiny-name", "int"],
)
def test_bad_weights_are_named(offline_hub, backbone, weights, error, match):
    _, attempted = offline_hub
    with pytest.raises(error, match=match):
        BilinearCNN(backbone, num_classes=3, weights=weights)
    assert attempted == []
