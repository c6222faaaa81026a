"""iSQRT-COV pooling: centred covariance, then the Newton–Schulz matrix square root.

Composed from two registered ops — ``bilinear_pool(..., center=True)`` for the covariance and
``matrix_sqrt_newton_schulz`` — each with its own lean backward: autograd keeps the feature map
(the covariance op's input) and, for the square root, one C×C matrix per sample (the normalized
covariance Â, or its eigenvectors on the CPU path), C values and the trace; nothing else.
"""

from __future__ import annotations

import torch

from bcnn_triton.ops.bilinear_pool import bilinear_pool
from bcnn_triton.ops.matrix_sqrt import check_iterations, matrix_sqrt_newton_schulz, triu_size

__all__ = ["isqrt_cov_pool", "isqrt_descriptor_size"]


def isqrt_descriptor_size(channels: int, triu: bool) -> int:
    """Length of one sample's iSQRT-COV descriptor: C(C+1)/2 with ``triu``, else C²."""
    return triu_size(channels) if triu else channels * channels


def isqrt_cov_pool(
    x: torch.Tensor,
    *,
    iterations: int = 5,
    center: bool = True,
    triu: bool = True,
    eps: float = 1e-10,
    backend: str | None = None,
) -> torch.Tensor:
    """iSQRT-COV descriptor (Li et al., CVPR 2018): matrix square root of the covariance.

    Per sample, with X (C, L) the features at the L = H·W locations and μ their mean:

        Σ = (X − μ)(X − μ)ᵀ / L                       (``center=False``: X·Xᵀ / L)
        s = tr(Σ) + eps,  Y = Newton–Schulz_k(Σ / s)  (k = ``iterations`` coupled steps)
        z = √s · Y,  upper triangle (diagonal included) row by row with ``triu``

    See :func:`matrix_sqrt_newton_schulz` for the iteration and the trace guard ``eps``.
    With ``triu`` the off-diagonal entries are not weighted by √2, unlike
    ``bilinear_pool(triu=True)``: that weighting keeps the norm of the full descriptor, which
    matters for a descriptor that is L2-normalized next; this one is not, and unweighted is what
    fast-MPN-COV feeds its classifier, so its learning rates and reported accuracies carry over.

    Args:
        x: feature map (N, C, H, W) or (N, C, L); float16, bfloat16, float32 or float64, any
            strides. Half precision is computed in float32 (the covariance included) and the
            result cast back.
        iterations: Newton–Schulz steps, >= 1 (5 in fast-MPN-COV's released models).
        center: subtract each sample's per-channel mean (covariance); False pools the plain
            Gram X·Xᵀ / L (the matrix-square-root step of improved B-CNN, Lin & Maji 2017).
        triu: return the C(C+1)/2 upper-triangular entries; False returns all C² entries.
        eps: >= 0, added to the trace before dividing by it.
        backend: ``None`` or ``"auto"`` (the Triton kernels where the GPU runs float32 on
            tensor cores, torch otherwise, decided at run time: see
            ``bcnn_triton.ops.dispatch``), ``"torch"`` or ``"triton"`` (CPU tensors only under
            ``TRITON_INTERPRET=1``).

    Returns:
        (N, C(C+1)/2), or (N, C²) without ``triu``, in x's dtype. Zero or constant features give
        zeros and zero gradients; fewer locations than channels (rank-deficient Σ) and dead
        channels are fine; NaN or Inf in one sample reach only that sample.

    Example:
        >>> x = torch.relu(torch.randn(2, 16, 7, 7))
        >>> isqrt_cov_pool(x).shape
        torch.Size([2, 136])
    """
    check_iterations(iterations)
    if isinstance(x, torch.Tensor) and x.dtype in (torch.float16, torch.bfloat16):
        # The square root amplifies the rounding of small eigenvalues: no half-precision Σ.
        features = x.to(torch.float32)
    else:
        features = x
    flat_covariance = bilinear_pool(
        features, signed_sqrt=False, normalize=False, center=center, backend=backend
    )
    num_samples, channels = features.shape[:2]
    covariance = flat_covariance.view(num_samples, channels, channels)
    out = matrix_sqrt_newton_schulz(
        covariance, iterations=iterations, eps=eps, triu=triu, backend=backend
    )
    return out.view(num_samples, -1).to(x.dtype)
