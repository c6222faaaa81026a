"""Independent references for the tests: written from the math, never from the package's code.

``bilinear_pool_reference`` sums per-location outer products in float64 with einsum and
follows the formula step by step with autograd-friendly torch ops; ``seed_bilinear_pool``
is the seed article's formula, in the input's dtype, as the seed's models run it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def bilinear_pool_reference(
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    signed_sqrt: bool = True,
    normalize: bool = True,
    eps: float = 1e-10,
    triu: bool = False,
    center: bool = False,
) -> torch.Tensor:
    """float64 descriptor of x (N, C, H, W) or (N, C, L); differentiable w.r.t. x and y.

    ``center`` subtracts each channel's float64 mean over the locations from each stream."""
    x64 = x.flatten(2).to(torch.float64)
    y64 = x64 if y is None else y.flatten(2).to(torch.float64)
    if center:
        x64 = x64 - x64.mean(dim=2, keepdim=True)
        y64 = y64 - y64.mean(dim=2, keepdim=True)
    locations = x64.shape[2]
    # G[n] = Σ_l x_l · y_lᵀ / L: the sum of per-location outer products.
    gram = torch.einsum("nil,njl->nij", x64, y64) / locations
    if signed_sqrt:
        gram = torch.sign(gram) * torch.sqrt(torch.abs(gram) + eps)
    if triu:
        channels = gram.shape[1]
        rows, cols = torch.triu_indices(channels, channels)
        weights = torch.full(rows.shape, math.sqrt(2.0), dtype=torch.float64)
        weights[rows == cols] = 1.0
        descriptor = gram[:, rows, cols] * weights
    else:
        descriptor = gram.reshape(gram.shape[0], -1)
    if normalize:
        descriptor = F.normalize(descriptor, dim=1)
    return descriptor


def seed_bilinear_pool(x: torch.Tensor) -> torch.Tensor:
    """The seed article's pooling (``Net.forward`` minus the backbone), in x's dtype."""
    batch, channels = x.shape[:2]
    feature_size = x.shape[2] * x.shape[3] if x.dim() == 4 else x.shape[2]
    x = x.reshape(batch, channels, feature_size)
    x = (torch.bmm(x, torch.transpose(x, 1, 2)) / feature_size).view(batch, -1)
    return torch.nn.functional.normalize(torch.sign(x) * torch.sqrt(torch.abs(x) + 1e-10))


def feature_like(
    *shape: int, dtype: torch.dtype = torch.float32, dead: float = 0.0
) -> torch.Tensor:
    """A ReLU-like feature map (non-negative, as relu5_3) with a fraction ``dead`` of zero channels.

    Its Gram entries are positive and away from zero, where the signed square root is well
    conditioned; float32 results then agree with float64 to float32 rounding.
    """
    features = torch.relu(torch.randn(*shape, dtype=torch.float64)) + 0.05
    dead_channels = torch.randperm(shape[1])[: int(dead * shape[1])]
    features[:, dead_channels] = 0.0
    return features.to(dtype)


def newton_schulz_polynomial_reference(a_hat: torch.Tensor, iterations: int) -> torch.Tensor:
    """Y after ``iterations`` coupled Newton–Schulz steps from Â (N, C, C), no normalization."""
    three = 3.0 * torch.eye(a_hat.shape[1], dtype=a_hat.dtype, device=a_hat.device)
    z = (three - a_hat) / 2
    y = a_hat @ z
    for _ in range(iterations - 1):
        t = (three - z @ y) / 2
        y, z = y @ t, t @ z
    return y


def newton_schulz_sqrt_reference(
    a: torch.Tensor, *, iterations: int = 5, eps: float = 1e-10, triu: bool = False
) -> torch.Tensor:
    """float64 iSQRT of square matrices a (N, C, C), differentiable: a plain coupled loop.

    S = (A + Aᵀ)/2, s = tr(S) + eps, Â = S/s; Y₀ = Â(3I − Â)/2, Z₀ = (3I − Â)/2; then
    T = (3I − ZY)/2, Y ← YT, Z ← TZ; result √s·Y, or its upper triangle (diagonal included,
    unweighted) row by row.
    """
    a64 = a.to(torch.float64)
    sym = (a64 + a64.transpose(1, 2)) / 2
    scale = torch.diagonal(sym, dim1=1, dim2=2).sum(dim=1) + eps
    root = newton_schulz_polynomial_reference(sym / scale[:, None, None], iterations)
    root = root * scale.sqrt()[:, None, None]
    if triu:
        rows, cols = torch.triu_indices(a.shape[1], a.shape[1])
        return root[:, rows, cols]
    return root


def eigh_sqrt(a: torch.Tensor) -> torch.Tensor:
    """The exact principal square root of symmetric PSD matrices (N, C, C), in float64."""
    values, vectors = torch.linalg.eigh(a.to(torch.float64))
    return vectors @ torch.diag_embed(values.clamp_min(0).sqrt()) @ vectors.transpose(1, 2)


def spd_like(
    num: int, channels: int, locations: int, *, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Covariances (N, C, C) of ReLU-like features over L locations; rank < C when L <= C."""
    features = feature_like(num, channels, locations, dtype=torch.float64)
    centred = features - features.mean(dim=2, keepdim=True)
    return (centred @ centred.transpose(1, 2) / locations).to(dtype)


def isqrt_cov_pool_reference(
    x: torch.Tensor,
    *,
    iterations: int = 5,
    center: bool = True,
    triu: bool = True,
    eps: float = 1e-10,
) -> torch.Tensor:
    """float64 iSQRT-COV of x (N, C, H, W) or (N, C, L): covariance by per-location outer
    products of the centred features, then :func:`newton_schulz_sqrt_reference`; (N, D)."""
    x64 = x.flatten(2).to(torch.float64)
    if center:
        x64 = x64 - x64.mean(dim=2, keepdim=True)
    covariance = torch.einsum("nil,njl->nij", x64, x64) / x64.shape[2]
    root = newton_schulz_sqrt_reference(covariance, iterations=iterations, eps=eps, triu=triu)
    return root.reshape(root.shape[0], -1)
