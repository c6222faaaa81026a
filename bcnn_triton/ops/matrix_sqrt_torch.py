"""The torch implementation of the Newton–Schulz matrix square root: CPU path and GPU fallback.

Every matrix of the coupled iteration is a polynomial in the normalized input Â, so all of
them are symmetric and commute with each other; each product the iteration forms is therefore
symmetric, and only its upper row panels are computed (the rest is their mirror).

The backward is forward-mode: the derivative of a polynomial matrix function of a symmetric
matrix is self-adjoint, so the gradient ``L(Â, E)`` for a symmetric output gradient E is the
directional derivative of the iteration along E. It is computed by running the iteration
again with its tangent beside it — every tangent is symmetric too — from Â alone: nothing but
the input is kept between forward and backward, and no iterate is stored.
"""

from __future__ import annotations

import itertools

import torch

__all__ = [
    "newton_schulz_tangent_torch",
    "newton_schulz_torch",
    "symmetric_product",
]

# Products are computed in at most this many row panels of at least this many rows (fewer
# rows: one plain bmm beats several small ones and the mirror copies).
_MAX_PANELS = 4
_MIN_PANEL_ROWS = 64


def symmetric_product(
    pairs: list[tuple[torch.Tensor, torch.Tensor]], alpha: float = 1.0, identity: float = 0.0
) -> torch.Tensor:
    """``alpha·Σ A·B + identity·I`` over ``pairs`` of (N, C, C) matrices, for symmetric sums.

    Only the row panels on and right of the diagonal are multiplied; the part below the
    diagonal blocks is copied from their mirror. Right only where the sum is symmetric.
    """
    first, *_ = pairs[0]
    num_samples, channels, _ = first.shape
    count = min(_MAX_PANELS, channels // _MIN_PANEL_ROWS)
    if count < 2:
        out = _product_sum(pairs, alpha, slice(None), slice(None))
    else:
        out = first.new_empty((num_samples, channels, channels))
        bounds = [channels * i // count for i in range(count + 1)]
        for low, high in itertools.pairwise(bounds):
            panel = _product_sum(pairs, alpha, slice(low, high), slice(low, None))
            out[:, low:high, low:] = panel
            out[:, high:, low:high] = panel[:, :, high - low :].transpose(1, 2)
    if identity:
        out.diagonal(dim1=1, dim2=2).add_(identity)
    return out


def _product_sum(pairs, alpha: float, rows: slice, cols: slice) -> torch.Tensor:
    """alpha·Σ A[:, rows]·B[:, :, cols]; the scale rides on the GEMMs."""
    (a, b), *rest = pairs
    ignored = a.new_empty(())  # beta = 0: never read
    out = torch.baddbmm(ignored, a[:, rows], b[:, :, cols], beta=0.0, alpha=alpha)
    for a, b in rest:
        out.baddbmm_(a[:, rows], b[:, :, cols], alpha=alpha)
    return out


def newton_schulz_torch(a_hat: torch.Tensor, iterations: int) -> torch.Tensor:
    """Y after ``iterations`` coupled Newton–Schulz steps from a symmetric Â (N, C, C).

    T = (3I − Â)/2, Y = Â·T, Z = T, then per further step T = (3I − Z·Y)/2, Y ← Y·T,
    Z ← Z·T (Z is not updated after the last step). Y → Â^{1/2} when ‖I − Â‖ < 1.
    """
    t = _half_three_identity_minus(a_hat)
    y = symmetric_product([(a_hat, t)])
    z = t
    for step in range(1, iterations):
        t = symmetric_product([(z, y)], alpha=-0.5, identity=1.5)
        if step < iterations - 1:
            z = symmetric_product([(z, t)])
        y = symmetric_product([(y, t)])
    return y


def newton_schulz_tangent_torch(
    a_hat: torch.Tensor, tangent: torch.Tensor, iterations: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Y of :func:`newton_schulz_torch` and its derivative along a symmetric ``tangent``.

    Both (N, C, C). With the tangents dT = −dM/2 of T = (3I − M)/2, M = Z·Y:
    dM = dZ·Y + Z·dY, dY ← dY·T + Y·dT, dZ ← dZ·T + Z·dT.
    """
    t = _half_three_identity_minus(a_hat)
    d_t = tangent * -0.5
    y = symmetric_product([(a_hat, t)])
    d_y = symmetric_product([(tangent, t), (a_hat, d_t)])
    z, d_z = t, d_t
    for step in range(1, iterations):
        t = symmetric_product([(z, y)], alpha=-0.5, identity=1.5)
        d_t = symmetric_product([(d_z, y), (z, d_y)], alpha=-0.5)
        if step < iterations - 1:
            z, d_z = symmetric_product([(z, t)]), symmetric_product([(d_z, t), (z, d_t)])
        y, d_y = symmetric_product([(y, t)]), symmetric_product([(d_y, t), (y, d_t)])
    return y, d_y


def _half_three_identity_minus(a: torch.Tensor) -> torch.Tensor:
    """(3I − A)/2."""
    out = a * -0.5
    out.diagonal(dim1=1, dim2=2).add_(1.5)
    return out
