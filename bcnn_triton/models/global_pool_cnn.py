"""GlobalPoolCNN: the first-order baseline — backbone map → global average pool → linear."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from bcnn_triton.models.base import BackboneClassifier
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
        super().__init__(locals())

    def _build_pool(
        self, arguments: Mapping[str, Any], channels: int, second_channels: int | None
    ) -> int:
        return channels

    def _pool(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return x.mean(dim=(2, 3))
