"""BilinearCNN: backbone feature map(s) → bilinear pool → linear classifier."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from bcnn_triton.layers import BilinearPool
from bcnn_triton.models.base import BackboneClassifier
from bcnn_triton.models.weights import WeightsSpec
from bcnn_triton.ops import check_options

__all__ = ["BilinearCNN"]


class BilinearCNN(BackboneClassifier):
    """Bilinear CNN (Lin, RoyChowdhury, Maji, ICCV 2015) on torchvision or timm backbones.

    images (N, 3, H, W) → backbone map X (N, C, h, w) [→ optional 1×1 reduction to
    ``reduce_dim`` channels] → ``bilinear_pool(X)`` (N, D) → ``fc`` → logits (N, num_classes).
    D = C² (C = 512 for vgg16: 262,144), C(C+1)/2 with ``triu``, or C1·C2 with a second stream.
    Any H, W: the pool averages over the h·w locations of the map (the seed's ``/ (28*28)`` at
    448 px). ``BilinearCNN("vgg16", 200)`` is the seed's ``BCNN_fc``, and ``("resnet18", 14)``
    its ``Net``, with the same weights.

    Args:
        backbone: one of :data:`BACKBONES`, or ``"timm/<model name>"`` (any timm model, see
            :mod:`bcnn_triton.models.timm_backbone`).
        num_classes: classifier outputs, >= 1.
        weights: pretrained weights for the backbone: a torchvision weights enum member, its
            name (``"DEFAULT"``, ``"IMAGENET1K_V1"``, ``"VGG16_Weights.IMAGENET1K_V1"``), a path
            to a saved state dict of the torchvision model, or None (random init); for a timm
            backbone ``"DEFAULT"`` (its tag's pretrained weights), a file, or None.
        second_backbone: a second stream (two-stream B-CNN); its map is resized (bilinear,
            ``align_corners=False``) to the first one's h×w and pooled as the op's ``y``.
        second_weights: like ``weights``, for the second backbone.
        reduce_dim: if set, a 1×1 conv + BN + ReLU to this many channels on each stream
            (for the 2048-channel resnet50/101).
        freeze_backbone: start with the backbone frozen (see :meth:`set_backbone_frozen`).
        signed_sqrt, normalize, eps, triu, backend: options of
            :func:`bcnn_triton.bilinear_pool`; ``triu`` needs a single stream.

    Example:
        >>> model = BilinearCNN("tiny", num_classes=10)
        >>> model(torch.rand(2, 3, 67, 93)).shape
        torch.Size([2, 10])
        >>> model.descriptor(torch.rand(2, 3, 64, 64)).shape
        torch.Size([2, 4096])
    """

    head = "bilinear"

    def __init__(
        self,
        backbone: str = "vgg16",
        num_classes: int = 200,
        *,
        weights: WeightsSpec = None,
        second_backbone: str | None = None,
        second_weights: WeightsSpec = None,
        reduce_dim: int | None = None,
        freeze_backbone: bool = False,
        signed_sqrt: bool = True,
        normalize: bool = True,
        eps: float = 1e-10,
        triu: bool = False,
        backend: str | None = None,
    ) -> None:
        super().__init__(locals())

    def _check_head_options(self, arguments: Mapping[str, Any]) -> None:
        if arguments["triu"] and arguments["second_backbone"] is not None:
            raise ValueError(
                "triu=True needs a single stream (only the Gram of a map with itself is "
                f"symmetric); got triu=True with second_backbone={arguments['second_backbone']!r}"
            )
        check_options(arguments["eps"], arguments["backend"])

    def _build_pool(
        self, arguments: Mapping[str, Any], channels: int, second_channels: int | None
    ) -> int:
        options = ("signed_sqrt", "normalize", "eps", "triu", "backend")
        self.pool = BilinearPool(**{name: arguments[name] for name in options})
        return self.pool.output_size(channels, second_channels)

    def _pool(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return self.pool(x) if y is None else self.pool(x, y)
