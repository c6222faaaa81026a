"""The torch implementation of the Newton–Schulz matrix square root: CPU path and GPU fallback.

Every matrix of the coupled iteration is a polynomial p in the normalized input Â, so all of
them are symmetric and commute with each other. The products are plain batched GEMMs: computing
only the upper row panels of each (symmetric) product and copying their mirror saved nothing
measurable on the 2-core CPU at C = 256 (75.0 vs 75.9 ms for five steps at N = 32, the copies
eating the FLOPs saved) and was much slower when other processes shared the cores.

The backward needs the derivative of the matrix function Â ↦ p(Â) along the symmetric output
gradient E (for a symmetric Â that derivative is self-adjoint, so it is also the gradient).
Nothing but the input is kept between forward and backward; the backward computes it one of
two ways, the same value up to rounding:

- by eigendecomposition (CPU): with Â = U·diag(λ)·Uᵀ it is U·(D ∘ UᵀEU)·Uᵀ, D the divided
  differences [p](λᵢ, λⱼ) (Daleckii–Krein), with p and p′ from the iteration's own recurrence
  run on the eigenvalues. One ``eigh`` plus four products: about a third of the next way's
  time on a CPU, where LAPACK's ``eigh`` costs about ten products;
- by forward mode (CUDA, where a batched ``eigh`` is slow): the iteration again with its
  tangent along E beside it — every tangent is symmetric too — three times the forward's
  products, no iterate stored.
"""

from __future__ import annotations

import torch

__all__ = [
    "newton_schulz_backward_torch",
    "newton_schulz_tangent_torch",
    "newton_schulz_torch",
    "product_sum",
]

# Eigenvalues of Â (in [0, 1]) closer than this count as equal in the divided differences:
# there [p](a, b) is taken as (p'(a) + p'(b))/2, second-order accurate, while the quotient
# (p(a) − p(b))/(a − b) in float64 keeps its cancellation error below 1e-8 elsewhere.
_EQUAL_EIGENVALUES = 1e-6


def product_sum(
    pairs: list[tuple[torch.Tensor, torch.Tensor]], alpha: float = 1.0, identity: float = 0.0
) -> torch.Tensor:
    """``alpha·Σ A·B + identity·I`` over ``pairs`` of (N, C, C) matrices; alpha rides on the
    GEMMs."""
    (a, b), *rest = pairs
    ignored = a.new_empty(())  # beta = 0: never read
    out = torch.baddbmm(ignored, a, b, beta=0.0, alpha=alpha)
    for a, b in rest:
        out.baddbmm_(a, b, alpha=alpha)
    if identity:
        out.diagonal(dim1=1, dim2=2).add_(identity)
    return out


def newton_schulz_torch(a_hat: torch.Tensor, iterations: int) -> torch.Tensor:
    """Y after ``iterations`` coupled Newton–Schulz steps from a symmetric Â (N, C, C).

    T = (3I − Â)/2, Y = Â·T, Z = T, then per further step T = (3I − Z·Y)/2, Y ← Y·T,
    Z ← Z·T (Z is not updated after the last step). Y → Â^{1/2} when ‖I − Â‖ < 1.
    """
    t = _half_three_identity_minus(a_hat)
    y = product_sum([(a_hat, t)])
    z = t
    for step in range(1, iterations):
        t = product_sum([(z, y)], alpha=-0.5, identity=1.5)
        if step < iterations - 1:
            z = product_sum([(z, t)])
        y = product_sum([(y, t)])
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
    y = product_sum([(a_hat, t)])
    d_y = product_sum([(tangent, t), (a_hat, d_t)])
    z, d_z = t, d_t
    for step in range(1, iterations):
        t = product_sum([(z, y)], alpha=-0.5, identity=1.5)
        d_t = product_sum([(d_z, y), (z, d_y)], alpha=-0.5)
        if step < iterations - 1:
            z, d_z = product_sum([(z, t)]), product_sum([(d_z, t), (z, d_t)])
        y, d_y = product_sum([(y, t)]), product_sum([(d_y, t), (y, d_t)])
    return y, d_y


def _half_three_identity_minus(a: torch.Tensor) -> torch.Tensor:
    """(3I − A)/2."""
    out = a * -0.5
    out.diagonal(dim1=1, dim2=2).add_(1.5)
    return out


def newton_schulz_backward_torch(
    a_hat: torch.Tensor, tangent: torch.Tensor, iterations: int
) -> torch.Tensor:
    """√s times the gradient of ⟨E, √s·p(S/s)⟩ with respect to S: (N, C, C).

    Â = S/s (N, C, C) symmetric, s = tr(S) + eps; E (N, C, C) the symmetric output gradient.
    That gradient is (K + (⟨E, Y⟩/2 − ⟨K, Â⟩)·I)/√s with Y = p(Â) and K = L_p(Â, E), the
    derivative of p at Â along E; the caller divides by √s. By eigendecomposition on CPU, by
    forward mode on CUDA.
    """
    if a_hat.is_cuda:
        root, grad = newton_schulz_tangent_torch(a_hat, tangent, iterations)
        trace_term = torch.linalg.vecdot(tangent.flatten(1), root.flatten(1)) / 2
        trace_term -= torch.linalg.vecdot(grad.flatten(1), a_hat.flatten(1))
        grad.diagonal(dim1=1, dim2=2).add_(trace_term.unsqueeze(1))
        return grad
    return _backward_by_eigh(a_hat, tangent, iterations)


def _backward_by_eigh(a_hat: torch.Tensor, tangent: torch.Tensor, iterations: int) -> torch.Tensor:
    # LAPACK fails on a non-finite matrix for the whole batch: such samples are decomposed as
    # zeros and get NaN gradients, as the iteration itself would give them.
    finite = torch.isfinite(a_hat).all(dim=2).all(dim=1)
    all_finite = bool(finite.all())
    if not all_finite:
        a_hat = torch.where(finite.view(-1, 1, 1), a_hat, 0.0)
    eigenvalues, vectors = torch.linalg.eigh(a_hat)
    rotated = vectors.transpose(1, 2) @ (tangent @ vectors)
    values, slopes = _polynomial_and_slope(eigenvalues.to(torch.float64), iterations)
    weights = _divided_differences(eigenvalues.to(torch.float64), values, slopes)
    diagonal = rotated.diagonal(dim1=1, dim2=2).to(torch.float64)
    # ⟨E, Y⟩ = Σᵢ p(λᵢ)·Ẽᵢᵢ and ⟨K, Â⟩ = Σᵢ λᵢ·p′(λᵢ)·Ẽᵢᵢ in the eigenbasis.
    trace_term = (diagonal * (values / 2 - eigenvalues * slopes)).sum(dim=1)
    rotated.mul_(weights.to(rotated.dtype))
    rotated.diagonal(dim1=1, dim2=2).add_(trace_term.to(rotated.dtype).unsqueeze(1))
    grad = vectors @ (rotated @ vectors.transpose(1, 2))
    if not all_finite:
        grad = torch.where(finite.view(-1, 1, 1), grad, torch.nan)
    return grad


def _polynomial_and_slope(
    eigenvalues: torch.Tensor, iterations: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """p(λ) and p′(λ) elementwise: the coupled recurrence on scalars, with its derivative."""
    t, d_t = (3 - eigenvalues) / 2, torch.full_like(eigenvalues, -0.5)
    y, d_y = eigenvalues * t, t + eigenvalues * d_t
    z, d_z = t, d_t
    for _ in range(1, iterations):
        t, d_t = (3 - z * y) / 2, -(d_z * y + z * d_y) / 2
        y, d_y, z, d_z = y * t, d_y * t + y * d_t, z * t, d_z * t + z * d_t
    return y, d_y


def _divided_differences(
    eigenvalues: torch.Tensor, values: torch.Tensor, slopes: torch.Tensor
) -> torch.Tensor:
    """D (N, C, C): (p(λᵢ) − p(λⱼ))/(λᵢ − λⱼ), or the mean slope where λᵢ ≈ λⱼ."""
    gap = eigenvalues.unsqueeze(2) - eigenvalues.unsqueeze(1)
    close = gap.abs() <= _EQUAL_EIGENVALUES
    quotient = (values.unsqueeze(2) - values.unsqueeze(1)) / torch.where(close, 1.0, gap)
    return torch.where(close, (slopes.unsqueeze(2) + slopes.unsqueeze(1)) / 2, quotient)
