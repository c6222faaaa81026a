"""GlobalPoolCNN: the first-order baseline — backbone map → global average pool → linear."""

from __future__ import annotations

import torch

from bcnn_triton.models.backbones import (
    build_backbone,
    check_backbone,
    feature_channels,
    reduction_block,
)
from bcnn_triton.models.base import BackboneClassifier, check_positive_int, linear_classifier
from bcnn_triton.models.weights import WeightsSpec

__all__ = ["GlobalPoolCNN"]


class GlobalPoolCNN(BackboneClassifier):
    """The usual CNN classifier on the same backbones, to compare B-CNN pooling against.

    images (N, 3, H, W) → backbone map (N, C, h, w) [→ optional 1×1 reduction to
    ``reduce_dim`` channels] → mean over the h·w locations (N, C) → ``fc`` → (N, num_classes).
    It sees only first-order statistics of the map (per-channel means), where the bilinear
    pool sees the correlations between channels. Arguments as in :class:`BilinearCNN`.

    Example:
        >>> model = GlobalPoolCNN("tiny", num_classes=10)
        >>> model(torch.rand(2, 3, 64, 64)).shape
        torch.Size([2, 10])
        >>> model.descriptor(torch.rand(2, 3, 64, 64)).shape
        torch.Size([2, 64])
    """

    head = "gap"

    def __init__(
        self,
        backbone: str = "vgg16",
        num_classes: int = 200,
        *,
        weights: WeightsSpec = None,
        reduce_dim: int | None = None,
        freeze_backbone: bool = False,
    ) -> None:
        super().__init__()
        self._record_config(locals())
        check_backbone(backbone)
        check_positive_int("num_classes", num_classes)
        check_positive_int("reduce_dim", reduce_dim, optional=True)

        self.features = build_backbone(backbone, weights)
        self.second_features = None
        self.reduction = (
            None if reduce_dim is None else reduction_block(feature_channels(backbone), reduce_dim)
        )
        self.fc = linear_classifier(reduce_dim or feature_channels(backbone), num_classes)

        self._set_min_input_size(backbone)
        self.set_backbone_frozen(freeze_backbone)

    def descriptor(self, images: torch.Tensor) -> torch.Tensor:
        """Globally averaged feature map before the classifier: (N, 3, H, W) → (N, C)."""
        self._check_images(images)
        x = self.features(images)
        if self.reduction is not None:
            x = self.reduction(x)
        return x.mean(dim=(2, 3))
