"""ISqrtCovPool: the iSQRT-COV op as an nn.Module."""

from __future__ import annotations

import torch
from torch import nn

from bcnn_triton.ops import check_options, isqrt_cov_pool, isqrt_descriptor_size
from bcnn_triton.ops.matrix_sqrt import check_iterations

__all__ = ["ISqrtCovPool"]


class ISqrtCovPool(nn.Module):
    """iSQRT-COV pooling layer: ``forward(x)`` returns ``isqrt_cov_pool(x, **options)``.

    Shapes: x (N, C, H, W) or (N, C, L); result (N, C(C+1)/2) with ``triu`` (the default), else
    (N, C²). No parameters.

    Example:
        >>> pool = ISqrtCovPool(iterations=3)
        >>> pool(torch.rand(4, 16, 14, 14)).shape
        torch.Size([4, 136])
    """

    def __init__(
        self,
        *,
        iterations: int = 5,
        center: bool = True,
        triu: bool = True,
        eps: float = 1e-10,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        check_iterations(iterations)
        check_options(eps, backend)
        self.iterations = int(iterations)
        self.center = center
        self.triu = triu
        self.eps = eps
        self.backend = backend

    def output_size(self, channels: int) -> int:
        """Descriptor length for C channels."""
        return isqrt_descriptor_size(channels, self.triu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return isqrt_cov_pool(
            x,
            iterations=self.iterations,
            center=self.center,
            triu=self.triu,
            eps=self.eps,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"iterations={self.iterations}, center={self.center}, triu={self.triu}, "
            f"eps={self.eps:g}, backend={self.backend!r}"
        )
