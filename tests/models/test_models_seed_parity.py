"""Parity with the seed article's models: BCNN_fc (VGG-16) and Net (ResNet-18).

Both are re-typed from the article with ``weights=None`` for ``pretrained=True``. BCNN_fc
hard-codes 448 px and a 28×28 map; it takes the map side as a parameter here so that most
checks run at a small size, and keeps its formula (``/ (side * side)``) otherwise. The weights
of the seed's models are copied into ours, and logits and gradients are compared in float32.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import resnet18

from bcnn_triton import BilinearCNN

# Relative to the largest entry of the seed's tensor: the two differ only in float32 rounding
# inside the pooling (the backbones run the same kernels on the same weights).
RELATIVE_TOLERANCE = 1e-5


class BCNN_fc(nn.Module):  # noqa: N801 - the seed's name
    def __init__(self, feature_side=28):
        super(BCNN_fc, self).__init__()  # noqa: UP008 - as in the seed
        self.feature_side = feature_side
        self.features = torchvision.models.vgg16(weights=None).features
        self.features = nn.Sequential(*list(self.features.children())[:-1])
        self.fc = nn.Linear(512 * 512, 200)
        # The seed's typo, kept: it sets a new attribute and freezes nothing, so the seed's
        # backbone trains and its gradients can be compared with ours.
        for param in self.features.parameters():
            param.requres_grad = False
        nn.init.kaiming_normal_(self.fc.weight.data)
        if self.fc.bias is not None:
            nn.init.constant_(self.fc.bias.data, val=0)

    def forward(self, x):
        N = x.size()[0]
        side = self.feature_side
        assert x.size() == (N, 3, 16 * side, 16 * side)
        x = self.features(x)
        assert x.size() == (N, 512, side, side)
        x = x.view(N, 512, side * side)
        x = torch.bmm(x, torch.transpose(x, 1, 2)) / (side * side)
        assert x.size() == (N, 512, 512)
        x = torch.sign(x) * torch.sqrt(torch.abs(x) + 1e-10)
        x = x.view(N, 512 * 512)
        x = torch.nn.functional.normalize(x)
        x = self.fc(x)
        assert x.size() == (N, 200)
        return x


class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()  # noqa: UP008 - as in the seed
        self.features = nn.Sequential(
            resnet18().conv1,
            resnet18().bn1,
            resnet18().relu,
            resnet18().maxpool,
            resnet18().layer1,
            resnet18().layer2,
            resnet18().layer3,
            resnet18().layer4,
        )
        self.classifiers = nn.Sequential(nn.Linear(512**2, 14))

    def forward(self, x):
        x = self.features(x)
        batch_size = x.size(0)
        feature_size = x.size(2) * x.size(3)
        x = x.view(batch_size, 512, feature_size)
        x = (torch.bmm(x, torch.transpose(x, 1, 2)) / feature_size).view(batch_size, -1)
        x = torch.nn.functional.normalize(torch.sign(x) * torch.sqrt(torch.abs(x) + 1e-10))
        x = self.classifiers(x)
        return x


def copy_by_position(source: nn.Module, target: nn.Module) -> None:
    """Load ``source``'s parameters and buffers into ``target``, matched by registration order."""
    target_keys = list(target.state_dict())
    source_values = list(source.state_dict().values())
    target.load_state_dict(dict(zip(target_keys, source_values, strict=True)))


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    scale = expected.abs().max().item()
    assert scale > 0, f"{name}: the seed's tensor is all zeros, nothing is compared"
    torch.testing.assert_close(
        actual, expected, rtol=0, atol=RELATIVE_TOLERANCE * scale, msg=lambda m: f"{name}: {m}"
    )


@pytest.fixture(scope="module")
def vgg_models():
    """The seed's BCNN_fc and our BilinearCNN("vgg16", 200) holding the same weights."""
    seed = BCNN_fc()
    ours = BilinearCNN("vgg16", num_classes=200)
    # Same torchvision indices (features[:-1]): the state-dict keys match one to one.
    ours.features.load_state_dict(seed.features.state_dict())
    ours.fc.load_state_dict(seed.fc.state_dict())
    return seed, ours


def logits_and_gradients(model, features, fc, images, labels):
    """Logits, and (name, gradient) of the images, the fc and each backbone parameter in order."""
    images = images.clone().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    logits = model(images)
    torch.nn.functional.cross_entropy(logits, labels).backward()
    gradients = [("images", images.grad), ("fc.weight", fc.weight.grad), ("fc.bias", fc.bias.grad)]
    gradients += [(f"features.{name}", p.grad) for name, p in features.named_parameters()]
    return logits.detach(), gradients


def assert_same_outputs(ours, seed) -> None:
    """Logits and every gradient of our model close to the seed's (parameters by position)."""
    (our_logits, our_grads), (seed_logits, seed_grads) = ours, seed
    assert_close_to_scale(our_logits, seed_logits, "logits")
    for (_, our_grad), (name, seed_grad) in zip(our_grads, seed_grads, strict=True):
        assert_close_to_scale(our_grad, seed_grad, f"gradient of the seed's {name}")


def test_vgg16_matches_seed_bcnn_fc_at_small_size(vgg_models):
    seed, ours = vgg_models
    # 64 px → a 4×4 map: the seed's formula with 4·4 in place of 28·28.
    seed.feature_side = 4
    images = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 200, (2,))
    assert_same_outputs(
        logits_and_gradients(ours, ours.features, ours.fc, images, labels),
        logits_and_gradients(seed, seed.features, seed.fc, images, labels),
    )


@pytest.mark.slow
def test_vgg16_matches_seed_bcnn_fc_at_448(vgg_models):
    seed, ours = vgg_models
    # The seed's own size and formula, untouched. Logits only: the gradients are compared at
    # 64 px above, and a backward pass here would triple the cost of this test.
    seed.feature_side = 28
    images = torch.randn(1, 3, 448, 448)
    with torch.no_grad():
        assert_close_to_scale(ours(images), seed(images), "logits")


@pytest.fixture(scope="module")
def resnet_models():
    """The seed's Net and our BilinearCNN("resnet18", 14); weights are copied by each test."""
    return Net(), BilinearCNN("resnet18", num_classes=14)


@pytest.mark.parametrize(
    "size, train_mode",
    [
        ((64, 64), True),  # BatchNorm on batch statistics
        ((67, 93), False),  # odd sizes (a 3×3 map), BatchNorm on running statistics
    ],
    ids=["64x64-train", "67x93-eval"],
)
def test_resnet18_matches_seed_net(resnet_models, size, train_mode):
    seed, ours = resnet_models
    # Net's layers come from eight different resnet18() calls; the order still matches ours.
    copy_by_position(seed.features, ours.features)
    ours.fc.load_state_dict(seed.classifiers[0].state_dict())
    seed.train(train_mode)
    ours.train(train_mode)
    images = torch.randn(2, 3, *size)
    labels = torch.randint(0, 14, (2,))
    assert_same_outputs(
        logits_and_gradients(ours, ours.features, ours.fc, images, labels),
        logits_and_gradients(seed, seed.features, seed.classifiers[0], images, labels),
    )
