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
