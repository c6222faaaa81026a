"""ISqrtCovCNN: backbone map → iSQRT-COV pooling → linear classifier."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from bcnn_triton.layers import ISqrtCovPool
from bcnn_triton.models.base import BackboneClassifier
from bcnn_triton.models.weights import WeightsSpec
from bcnn_triton.ops import check_options
from bcnn_triton.ops.matrix_sqrt import check_iterations

__all__ = ["ISqrtCovCNN"]


class ISqrtCovCNN(BackboneClassifier):
    """iSQRT-COV network (Li, Xie, Wang, Gao, CVPR 2018) on torchvision or timm backbones.

    images (N, 3, H, W) → backbone map (N, C, h, w) [→ 1×1 conv + BN + ReLU to ``reduce_dim``
    channels] → :func:`bcnn_triton.isqrt_cov_pool` (N, C(C+1)/2) → ``fc`` → (N, num_classes).
    fast-MPN-COV reduces the 2048 channels of resnet50/101 to 256 (``reduce_dim=256``): a
    32,896-d descriptor. Arguments as in :class:`BilinearCNN`, plus the pool's options.

    Args:
        backbone, num_classes, weights, reduce_dim, freeze_backbone: as in
            :class:`BilinearCNN`.
        iterations, triu, eps, backend: options of :func:`bcnn_triton.isqrt_cov_pool`.

    Example:
        >>> model = ISqrtCovCNN("tiny", num_classes=10, reduce_dim=16)
        >>> model(torch.rand(2, 3, 64, 64)).shape
        torch.Size([2, 10])
        >>> model.descriptor(torch.rand(2, 3, 64, 64)).shape
        torch.Size([2, 136])
    """

    head = "isqrt"

    def __init__(
        self,
        backbone: str = "vgg16",
        num_classes: int = 200,
        *,
        weights: WeightsSpec = None,
        reduce_dim: int | None = None,
        freeze_backbone: bool = False,
        iterations: int = 5,
        triu: bool = True,
        eps: float = 1e-10,
        backend: str | None = None,
    ) -> None:
        super().__init__(locals())

    def _check_head_options(self, arguments: Mapping[str, Any]) -> None:
        check_iterations(arguments["iterations"])
        check_options(arguments["eps"], arguments["backend"])

    def _build_pool(
        self, arguments: Mapping[str, Any], channels: int, second_channels: int | None
    ) -> int:
        options = ("iterations", "triu", "eps", "backend")
        self.pool = ISqrtCovPool(**{name: arguments[name] for name in options})
        return self.pool.output_size(channels)

    def _pool(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return self.pool(x)
