"""ISqrtCovCNN: backbone map → iSQRT-COV pooling → linear classifier."""

from __future__ import annotations

import torch

from bcnn_triton.layers import ISqrtCovPool
from bcnn_triton.models.backbones import (
    build_backbone,
    check_backbone,
    feature_channels,
    reduction_block,
)
from bcnn_triton.models.base import BackboneClassifier, check_positive_int, linear_classifier
from bcnn_triton.models.weights import WeightsSpec
from bcnn_triton.ops import check_options
from bcnn_triton.ops.matrix_sqrt import check_iterations

__all__ = ["ISqrtCovCNN"]


class ISqrtCovCNN(BackboneClassifier):
    """iSQRT-COV network (Li, Xie, Wang, Gao, CVPR 2018) on torchvision backbones.

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
        super().__init__()
        self._record_config(locals())
        check_backbone(backbone)
        check_positive_int("num_classes", num_classes)
        check_positive_int("reduce_dim", reduce_dim, optional=True)
        check_iterations(iterations)
        check_options(eps, backend)

        self.features = build_backbone(backbone, weights)
        self.second_features = None
        self.reduction = (
            None if reduce_dim is None else reduction_block(feature_channels(backbone), reduce_dim)
        )
        self.pool = ISqrtCovPool(iterations=iterations, triu=triu, eps=eps, backend=backend)
        channels = reduce_dim or feature_channels(backbone)
        self.fc = linear_classifier(self.pool.output_size(channels), num_classes)

        self._set_min_input_size(backbone)
        self.set_backbone_frozen(freeze_backbone)

    def descriptor(self, images: torch.Tensor) -> torch.Tensor:
        """The iSQRT-COV descriptor before the classifier: (N, 3, H, W) → (N, D)."""
        self._check_images(images)
        x = self.features(images)
        if self.reduction is not None:
            x = self.reduction(x)
        return self.pool(x)
