"""The torch implementation of the bilinear-pool op: the CPU path, and the GPU fallback.

Forward and backward are written by hand so that autograd keeps only the inputs, the output
and the per-sample norm; every ``N·C·C`` intermediate below lives for one call only.
Half-precision inputs are computed in float32 (the Gram of a float16 map can exceed the
float16 range long before its signed square root does) and cast down last.
"""

from __future__ import annotations

import math

import torch

from bcnn_triton.ops.coefficients import NORM_EPS

# Below this many channels one plain bmm is faster than two smaller ones and the copies.
_SYMMETRIC_GRAM_MIN_CHANNELS = 128

__all__ = [
    "bilinear_pool_backward_torch",
    "bilinear_pool_forward_torch",
    "compute_dtype_for",
    "rowwise_dot_torch",
    "triu_indices_and_weights",
]


def compute_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype for an input dtype: float32, or float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def triu_indices_and_weights(
    channels: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row, column and weight of each upper-triangular entry, in row-major order.

    The weight is 1 on the diagonal and sqrt(2) off it, so that a weighted triangle has the
    norm (and the pairwise dot products) of the full symmetric matrix.
    """
    rows, cols = torch.triu_indices(channels, channels, device=device)
    weights = torch.where(rows == cols, 1.0, math.sqrt(2.0)).to(dtype)
    return rows, cols, weights


def bilinear_pool_forward_torch(
    x: torch.Tensor,
    y: torch.Tensor | None,
    signed_sqrt: bool,
    normalize: bool,
    eps: float,
    triu: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Descriptor and per-sample norm. x: (N, Cx, L); y: (N, Cy, L) or None.

    Returns ``out`` (N, D) in x's dtype and ``norm`` (N,) in the compute dtype when
    ``normalize`` (the norm of the descriptor before normalization), else an empty (0,) tensor.
    """
    num_samples, _, locations = x.shape
    compute_dtype = compute_dtype_for(x.dtype)
    x_c = x.to(compute_dtype)
    gram = _gram(x_c, None if y is None else y.to(compute_dtype)).div_(locations)
    if signed_sqrt:
        sign = gram.sign()
        # sign(0) = 0 keeps exact zeros at zero; NaN survives sqrt and the multiply.
        gram.abs_().add_(eps).sqrt_().mul_(sign)
    if triu:
        rows, cols, weights = triu_indices_and_weights(gram.shape[1], x.device, compute_dtype)
        descriptor = gram[:, rows, cols].mul_(weights)
    else:
        descriptor = gram.view(num_samples, -1)
    if normalize:
        norm = torch.linalg.vector_norm(descriptor, dim=1)
        descriptor = descriptor.div_(norm.clamp_min(NORM_EPS).unsqueeze(1))
    else:
        norm = descriptor.new_empty(0)
    return descriptor.to(x.dtype), norm


def _gram(x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """X·Yᵀ (N, Cx, Cy); with one stream, three quarters of the GEMM and a mirrored block.

    Splitting the channels in halves X₁, X₂, the Gram [[X₁X₁ᵀ, X₁X₂ᵀ], [X₂X₁ᵀ, X₂X₂ᵀ]] needs
    only X₁·Xᵀ (the top rows) and X₂·X₂ᵀ; the bottom-left block is the top-right one transposed.
    """
    channels = x.shape[1]
    if y is not None or channels < _SYMMETRIC_GRAM_MIN_CHANNELS:
        return torch.bmm(x, (x if y is None else y).transpose(1, 2))
    half = channels // 2
    top = torch.bmm(x[:, :half], x.transpose(1, 2))
    gram = x.new_empty(x.shape[0], channels, channels)
    gram[:, :half] = top
    # (bmm's out= into a strided block takes a slow path: copy instead)
    gram[:, half:, half:] = torch.bmm(x[:, half:], x[:, half:].transpose(1, 2))
    gram[:, half:, :half] = top[:, :, half:].transpose(1, 2)
    return gram


def rowwise_dot_torch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row dot product of two (N, D) tensors, accumulated in the compute dtype: (N,)."""
    compute_dtype = compute_dtype_for(a.dtype)
    return torch.linalg.vecdot(a.to(compute_dtype), b.to(compute_dtype), dim=1)


def bilinear_pool_backward_torch(
    grad: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor | None,
    out: torch.Tensor,
    projection: torch.Tensor,
    scale: torch.Tensor,
    signed_sqrt: bool,
    triu: bool,
    needs_dx: bool,
    needs_dy: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of x and y from the descriptor gradient.

    grad, out: (N, D); projection, scale: (N,) from ``coefficients.backward_coefficients``.
    The Gram gradient is dG = (grad − projection·out)·scale / |out| (without the division when
    ``signed_sqrt`` is off; zero where out = 0), then dX = (dG + dGᵀ)·X for one stream, or
    dX = dG·Y and dY = dGᵀ·X for two. The 1/L of the Gram is folded into ``scale``.
    """
    compute_dtype = compute_dtype_for(x.dtype)
    z = out.to(compute_dtype)
    g = grad.to(compute_dtype)
    num_samples, channels_x, _ = x.shape
    x_c = x.to(compute_dtype)
    projection = projection.to(compute_dtype).unsqueeze(1)
    scale = scale.to(compute_dtype).unsqueeze(1)

    if triu:
        rows, cols, weights = triu_indices_and_weights(channels_x, x.device, compute_dtype)
        # Entry k stands for G[i, j] and G[j, i] together: the pair's gradient sum is
        # sqrt(2)·g_k off the diagonal (weight w_k, shared by two entries) and 2·g_k on it.
        z = z / weights
        grad_pair_sum = g * torch.where(rows == cols, 2.0, math.sqrt(2.0)).to(compute_dtype)
        pair = torch.addcmul(grad_pair_sum, z, projection, value=-2.0)
        pair = _divide_by_magnitude(pair, z) if signed_sqrt else pair
        pair.mul_(scale)
        sym = pair.new_zeros(num_samples, channels_x, channels_x)
        sym[:, rows, cols] = pair
        sym[:, cols, rows] = pair
        return torch.bmm(sym, x_c).to(x.dtype), None

    d_gram = torch.addcmul(g, z, projection, value=-1.0)
    d_gram = _divide_by_magnitude(d_gram, z) if signed_sqrt else d_gram
    d_gram = d_gram.mul_(scale).view(num_samples, channels_x, -1)
    if y is None:
        sym = d_gram + d_gram.transpose(1, 2)
        return torch.bmm(sym, x_c).to(x.dtype), None
    y_c = y.to(compute_dtype)
    dx = torch.bmm(d_gram, y_c).to(x.dtype) if needs_dx else None
    dy = torch.bmm(d_gram.transpose(1, 2), x_c).to(y.dtype) if needs_dy else None
    return dx, dy


def _divide_by_magnitude(numerator: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """numerator / |z| in place, and 0 where z = 0: there sign(G) = 0 and so is the gradient."""
    numerator.div_(z.abs())
    return numerator.masked_fill_(z == 0, 0.0)
