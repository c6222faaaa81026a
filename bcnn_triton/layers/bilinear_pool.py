"""BilinearPool: the bilinear-pool op as an nn.Module."""

from __future__ import annotations

import torch
from torch import nn

from bcnn_triton.ops import bilinear_pool, check_options, descriptor_size

__all__ = ["BilinearPool"]


class BilinearPool(nn.Module):
    """B-CNN pooling layer: ``forward(x, y=None)`` returns ``bilinear_pool(x, y, **options)``
    (``center=True``: covariance pooling).

    Shapes: x (N, Cx, H, W) or (N, Cx, L); y (N, Cy, ·) with the same N and L, or None;
    result (N, Cx·Cy), or (N, C(C+1)/2) with ``triu``. No parameters.

    Example:
        >>> pool = BilinearPool(triu=True)
        >>> pool(torch.rand(4, 16, 14, 14)).shape
        torch.Size([4, 136])
    """

    def __init__(
        self,
        *,
        signed_sqrt: bool = True,
        normalize: bool = True,
        eps: float = 1e-10,
        triu: bool = False,
        center: bool = False,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        check_options(eps, backend)
        self.signed_sqrt = signed_sqrt
        self.normalize = normalize
        self.eps = eps
        self.triu = triu
        self.center = center
        self.backend = backend

    def output_size(self, channels_x: int, channels_y: int | None = None) -> int:
        """Descriptor length for Cx (and Cy) channels."""
        channels_y = channels_x if channels_y is None else channels_y
        return descriptor_size(channels_x, channels_y, self.triu)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return bilinear_pool(
            x,
            y,
            signed_sqrt=self.signed_sqrt,
            normalize=self.normalize,
            eps=self.eps,
            triu=self.triu,
            center=self.center,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"signed_sqrt={self.signed_sqrt}, normalize={self.normalize}, eps={self.eps:g}, "
            f"triu={self.triu}, center={self.center}, backend={self.backend!r}"
        )
