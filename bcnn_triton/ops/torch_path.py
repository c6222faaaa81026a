"""The torch implementation of the bilinear-pool op: the CPU path, and the GPU fallback.

Forward and backward are written by hand so that autograd keeps only the inputs, the output
and the per-sample norm; every ``N·C·C`` intermediate below lives for one call only.
Half-precision inputs are computed in float32 (the Gram of a float16 map can exceed the
float16 range long before its signed square root does) and cast down last. Centring subtracts
each channel's mean from a copy in that compute dtype; the backward multiplies by the centred
map and needs nothing more, because its rows sum to zero.
"""

from __future__ import annotations

import itertools
import math

import torch

from bcnn_triton.ops.coefficients import NORM_EPS, backward_coefficients

# The single-stream Gram is computed in at most this many row panels of at least this many
# rows (fewer rows: one plain bmm beats several small ones and the extra passes).
_MAX_PANELS = 4
_MIN_PANEL_ROWS = 64

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


def _operand(t: torch.Tensor, center: bool) -> torch.Tensor:
    """t (N, C, L) in the compute dtype, each channel centred by its mean with ``center``."""
    t = t.to(compute_dtype_for(t.dtype))
    return t - t.mean(dim=2, keepdim=True) if center else t


def bilinear_pool_forward_torch(
    x: torch.Tensor,
    y: torch.Tensor | None,
    *,
    signed_sqrt: bool,
    normalize: bool,
    eps: float,
    triu: bool,
    center: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Descriptor and per-sample norm. x: (N, Cx, L); y: (N, Cy, L) or None.

    Returns ``out`` (N, D) in x's dtype and ``norm`` (N,) in the compute dtype when
    ``normalize`` (the norm of the descriptor before normalization), else an empty (0,) tensor.
    """
    num_samples, channels, _ = x.shape
    compute_dtype = compute_dtype_for(x.dtype)
    x_c = _operand(x, center)
    if y is None and not triu and channels >= 2 * _MIN_PANEL_ROWS:
        return _self_descriptor_by_panels(x_c, signed_sqrt, normalize, eps, x.dtype)
    gram = _scaled_bmm(x_c, x_c if y is None else _operand(y, center))
    if signed_sqrt:
        _signed_sqrt_(gram, eps)
    if triu:
        rows, cols, weights = triu_indices_and_weights(channels, x.device, compute_dtype)
        descriptor = gram[:, rows, cols].mul_(weights)
    else:
        descriptor = gram.view(num_samples, -1)
    if normalize:
        norm = torch.linalg.vector_norm(descriptor, dim=1)
        descriptor = descriptor.div_(norm.clamp_min(NORM_EPS).unsqueeze(1))
    else:
        norm = descriptor.new_empty(0)
    return descriptor.to(x.dtype), norm


def _scaled_bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a·bᵀ / L for a (N, Ca, L), b (N, Cb, L): the 1/L rides on the GEMM (alpha)."""
    ignored = a.new_empty(())  # beta = 0: not read, NaN or not
    return torch.baddbmm(ignored, a, b.transpose(1, 2), beta=0.0, alpha=1.0 / a.shape[2])


def _signed_sqrt_(gram: torch.Tensor, eps: float) -> None:
    """sign(G)·sqrt(|G| + eps) in place; sign(0) = 0 keeps exact zeros, NaN stays NaN."""
    sign = gram.sign()
    gram.abs_().add_(eps).sqrt_().mul_(sign)


def _self_descriptor_by_panels(
    x: torch.Tensor, signed_sqrt: bool, normalize: bool, eps: float, out_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """The full single-stream descriptor from the Gram's row panels on and above the diagonal.

    The channels split into P panels; panel i is X_i·X_{i:}ᵀ, its rows of the Gram from its
    diagonal block rightwards — (P + 1)/2P of the GEMM (5/8 with P = 4; 8 panels of 64 rows
    measured no faster at C = 512). The signed square root runs on the panels; one last pass
    writes each panel, and the mirror of its part right of the diagonal block, straight into the
    output, divided by the norm.
    """
    num_samples, channels, _ = x.shape
    count = min(_MAX_PANELS, channels // _MIN_PANEL_ROWS)
    bounds = [channels * i // count for i in range(count + 1)]
    panels = []
    sumsq = x.new_zeros(num_samples)
    for low, high in itertools.pairwise(bounds):
        panel = _scaled_bmm(x[:, low:high], x[:, low:])
        if signed_sqrt:
            _signed_sqrt_(panel, eps)
        if normalize:
            # The diagonal block counts once, the rest of the panel twice: once more as mirror.
            width = high - low
            sumsq += torch.linalg.vector_norm(panel[:, :, :width], dim=(1, 2)).square()
            sumsq += 2 * torch.linalg.vector_norm(panel[:, :, width:], dim=(1, 2)).square()
        panels.append((low, high, panel))

    norm = sumsq.sqrt() if normalize else x.new_empty(0)
    denominator = norm.clamp_min(NORM_EPS) if normalize else x.new_ones(num_samples)
    denominator = denominator.view(-1, 1, 1)
    out = torch.empty((num_samples, channels, channels), dtype=out_dtype, device=x.device)
    for low, high, panel in panels:
        torch.div(panel, denominator, out=out[:, low:high, low:])
        mirror = panel[:, :, high - low :].transpose(1, 2)
        torch.div(mirror, denominator, out=out[:, high:, low:high])
    return out.view(num_samples, -1), norm


def rowwise_dot_torch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row dot product of two (N, D) tensors, accumulated in the compute dtype: (N,)."""
    compute_dtype = compute_dtype_for(a.dtype)
    return torch.linalg.vecdot(a.to(compute_dtype), b.to(compute_dtype), dim=1)


def bilinear_pool_backward_torch(
    grad: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor | None,
    out: torch.Tensor,
    norm: torch.Tensor,
    *,
    signed_sqrt: bool,
    normalize: bool,
    triu: bool,
    center: bool,
    needs_dx: bool,
    needs_dy: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of x and y from the descriptor gradient.

    grad, out: (N, D) (out is not read, and may be empty, without ``signed_sqrt`` and
    ``normalize``); norm: (N,) the forward's norms (ignored unless ``normalize``). With
    ``projection`` and ``scale`` from ``coefficients.backward_coefficients``, the Gram gradient
    is dG = (grad − projection·out)·scale / |out| (without the division when ``signed_sqrt``
    is off; zero where out = 0), then dX = (dG + dGᵀ)·X for one stream, or dX = dG·Y and
    dY = dGᵀ·X for two (X and Y centred with ``center``). The 1/L of the Gram is folded into
    ``scale``.
    """
    compute_dtype = compute_dtype_for(x.dtype)
    # The descriptor enters through the projection and |z|; a plain Gram's gradient is g·scale.
    z = out.to(compute_dtype) if signed_sqrt or normalize else None
    g = grad.to(compute_dtype)
    num_samples, channels_x, locations = x.shape
    x_c = _operand(x, center)
    projection, scale = backward_coefficients(
        norm,
        rowwise_dot_torch(out, grad) if normalize else None,
        signed_sqrt,
        normalize,
        locations,
        num_samples,
        x.device,
        compute_dtype,
    )
    projection = projection.unsqueeze(1)
    scale = scale.unsqueeze(1)

    if triu:
        rows, cols, weights = triu_indices_and_weights(channels_x, x.device, compute_dtype)
        # Entry k stands for G[i, j] and G[j, i] together: the pair's gradient sum is
        # sqrt(2)·g_k off the diagonal (weight w_k, shared by two entries) and 2·g_k on it.
        z = None if z is None else z / weights
        pair = g * torch.where(rows == cols, 2.0, math.sqrt(2.0)).to(compute_dtype)
        if normalize:
            pair.addcmul_(z, projection, value=-2.0)
        pair = _divide_by_magnitude(pair, z) if signed_sqrt else pair
        pair.mul_(scale)
        sym = pair.new_zeros(num_samples, channels_x, channels_x)
        sym[:, rows, cols] = pair
        sym[:, cols, rows] = pair
        return torch.bmm(sym, x_c).to(x.dtype), None

    if y is None:
        # z is symmetric: dG + dGᵀ = (g + gᵀ − 2·projection·z)·scale / |z|.
        shape = (num_samples, channels_x, channels_x)
        z = None if z is None else z.view(shape)
        sym = _plus_transpose(g.reshape(shape))
        if normalize:
            sym.addcmul_(z, projection.unsqueeze(2), value=-2.0)
        sym = _divide_by_magnitude(sym, z) if signed_sqrt else sym
        sym.mul_(scale.unsqueeze(2))
        return torch.bmm(sym, x_c).to(x.dtype), None
    d_gram = torch.addcmul(g, z, projection, value=-1.0) if normalize else g.clone()
    d_gram = _divide_by_magnitude(d_gram, z) if signed_sqrt else d_gram
    d_gram = d_gram.mul_(scale).view(num_samples, channels_x, -1)
    y_c = _operand(y, center)
    dx = torch.bmm(d_gram, y_c).to(x.dtype) if needs_dx else None
    dy = torch.bmm(d_gram.transpose(1, 2), x_c).to(y.dtype) if needs_dy else None
    return dx, dy


def _plus_transpose(matrices: torch.Tensor) -> torch.Tensor:
    """m + mᵀ for a batch (N, C, C) of square matrices, as a new contiguous tensor.

    Reading a transposed operand element by element strides through memory; on the CPU a
    per-matrix 2-D copy of the transpose takes PyTorch's blocked transpose instead, several
    times faster at the seed's C = 512.
    """
    if matrices.device.type != "cpu":
        return matrices + matrices.transpose(1, 2)
    result = torch.empty(matrices.shape, dtype=matrices.dtype)
    for source, target in zip(matrices, result, strict=True):
        target.copy_(source.t())
    return result.add_(matrices)


def _divide_by_magnitude(numerator: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """numerator / |z| in place, and 0 where z = 0: there sign(G) = 0 and so is the gradient."""
    inverse = z.abs().reciprocal_()
    # 1/|0| = inf becomes 0 (cheaper than a boolean mask); a NaN stays NaN.
    inverse.nan_to_num_(nan=math.nan, posinf=0.0)
    return numerator.mul_(inverse)
