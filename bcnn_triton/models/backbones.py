"""Feature extractors for the B-CNN: torchvision backbones cut at their last conv block, a tiny
random-init network for CPU demos and tests, and any timm model (``"timm/<model name>"``, see
:mod:`bcnn_triton.models.timm_backbone`).
"""

from __future__ import annotations

from collections import OrderedDict

import torchvision
from torch import nn

from bcnn_triton.config import BACKBONE_SPECS, BACKBONES, is_timm_backbone
from bcnn_triton.models.timm_backbone import (
    build_timm_backbone,
    check_timm_backbone,
    timm_architecture,
    timm_min_input_size,
)
from bcnn_triton.models.weights import WeightsSpec, load_weights, resolve_weights

__all__ = [
    "BACKBONES",
    "build_backbone",
    "check_backbone",
    "feature_channels",
    "min_input_size",
    "reduction_block",
]


# (output channels, stride) of each conv-BN-ReLU block of the tiny backbone: total stride 8,
# like the 1/8 to 1/16 maps of the real backbones at a fraction of their cost.
_TINY_BLOCKS = ((16, 2), (32, 2), (64, 2), (64, 1))


def check_backbone(name: object, argument: str = "backbone") -> str:
    """``name`` if it is a known backbone, else ValueError naming ``argument`` and BACKBONES.

    A ``"timm/<model name>"`` is known if timm has that model (TimmUnavailableError without
    timm).
    """
    if is_timm_backbone(name):
        return check_timm_backbone(name, argument)
    if name not in BACKBONE_SPECS:
        raise ValueError(
            f"{argument} must be one of {', '.join(BACKBONES)}; got {name!r} (or timm/<model "
            "name> for a timm model)"
        )
    return name


def feature_channels(backbone: str) -> int:
    """Channels C of the backbone's feature map (before any reduction), read from the model
    for timm backbones.

    Example:
        >>> feature_channels("resnet50"), feature_channels("timm/convnext_atto")
        (2048, 320)
    """
    if is_timm_backbone(check_backbone(backbone)):
        return timm_architecture(backbone).channels
    return BACKBONE_SPECS[backbone].channels


def min_input_size(backbone: str) -> int:
    """Smallest image height and width the backbone maps to a non-empty feature map."""
    if is_timm_backbone(check_backbone(backbone)):
        return timm_min_input_size(backbone)
    return BACKBONE_SPECS[backbone].min_input_size


def build_backbone(name: str, weights: WeightsSpec = None) -> nn.Module:
    """The feature extractor of backbone ``name``: images (N, 3, H, W) → (N, C, H', W').

    ``vgg16``/``vgg19``: ``features`` without the last max-pool (relu5_3 / relu5_4, stride 16).
    ``resnet*``: conv1 through layer4 (stride 32). ``tiny``: four conv-BN-ReLU blocks (stride 8).
    All end in a ReLU, so the map is non-negative. ``weights`` is loaded strictly into the whole
    torchvision model (a state dict of the torchvision model; of this module for ``tiny``).
    ``timm/<model name>``: see :func:`~bcnn_triton.models.timm_backbone.build_timm_backbone`.

    Example:
        >>> build_backbone("tiny")(torch.rand(2, 3, 64, 64)).shape
        torch.Size([2, 64, 8, 8])
    """
    if is_timm_backbone(check_backbone(name)):
        return build_timm_backbone(name, weights)
    resolved = resolve_weights(name, weights)
    # Weights first: a missing download fails before seconds are spent on a random init.
    state = None if resolved is None else load_weights(name, resolved)
    model = _tiny_features() if name == "tiny" else torchvision.models.get_model(name)
    if state is not None:
        _load_strict(model, state, name, resolved)
    if name == "tiny":
        return model
    if name.startswith("vgg"):
        # Keeps torchvision's indices, so features.state_dict() keys match the seed's model.
        return nn.Sequential(*list(model.features.children())[:-1])
    return nn.Sequential(
        OrderedDict(
            (part, getattr(model, part))
            for part in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        )
    )


def reduction_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """1×1 conv (no bias) + BatchNorm + ReLU: (N, in_channels, H, W) → (N, out_channels, H, W).

    Shrinks a 2048-channel map before pooling (a 2048² descriptor would need a classifier with
    4M inputs per class); the ReLU keeps the map non-negative like the backbone's own output.

    Example:
        >>> reduction_block(2048, 256)(torch.rand(2, 2048, 7, 7)).shape
        torch.Size([2, 256, 7, 7])
    """
    block = nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
            bn=nn.BatchNorm2d(out_channels),
            relu=nn.ReLU(inplace=True),
        )
    )
    nn.init.kaiming_normal_(block.conv.weight, mode="fan_out", nonlinearity="relu")
    return block


def _tiny_features() -> nn.Sequential:
    blocks = []
    in_channels = 3
    for out_channels, stride in _TINY_BLOCKS:
        conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        blocks.append(nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)))
        in_channels = out_channels
    return nn.Sequential(*blocks)


def _load_strict(module: nn.Module, state: dict, backbone: str, source: object) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        what = "this backbone's features" if backbone == "tiny" else f"torchvision's {backbone}"
        raise ValueError(
            f"weights {str(source)!r} do not fit backbone {backbone!r} (expected a state dict "
            f"of {what}): {err}"
        ) from err
