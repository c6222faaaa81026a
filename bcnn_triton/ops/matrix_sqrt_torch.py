"""The torch implementations of the Newton–Schulz matrix square root Y = p(Â).

Every matrix of the coupled iteration is a polynomial in the normalized input Â, so Y = p(Â)
for one polynomial p (of degree 122 after five steps), and all iterates are symmetric and
commute. The backward needs K = L_p(Â, E), the derivative of p at Â along the symmetrized
output gradient E (self-adjoint for a symmetric Â, so also the gradient). Two ways to the same
function, each where it is fast:

- **iterating** (CUDA, the fallback next to the Triton kernels): the coupled iteration as
  batched GEMMs; the backward runs it again from Â with its tangent along E beside it (every
  tangent is symmetric too) — three times the forward's products, no iterate stored;
- **spectral** (CPU): one ``eigh`` of Â, then Y = U·diag(p(λ))·Uᵀ with p run as the coupled
  recurrence on the eigenvalues, keeping U and λ; the backward is U·(D ∘ UᵀEU)·Uᵀ with D the
  divided differences [p](λᵢ, λⱼ) (Daleckii–Krein) — four products and no ``eigh``. On a CPU
  an ``eigh`` of the batch takes about ten batched products' time, so this way's forward is
  about as fast as iterating and its backward several times faster
  (``bench/test_bench_isqrt_cpu.py::test_matrix_sqrt_ways``; figures in
  bench/results/2026-11-27-cpu-2core-isqrt). On a GPU a batched ``eigh`` is slow and the
  products are cheap: there the iteration wins.

Both are exact up to rounding; the tests hold each to a float64 run of the plain iteration.
"""

from __future__ import annotations

import torch

__all__ = [
    "newton_schulz_gradient_torch",
    "newton_schulz_tangent_torch",
    "newton_schulz_torch",
    "product_sum",
    "spectral_gradient_torch",
    "spectral_newton_schulz_torch",
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


def newton_schulz_gradient_torch(
    a_hat: torch.Tensor, tangent: torch.Tensor, iterations: int
) -> torch.Tensor:
    """√s times the gradient of ⟨E, √s·p(S/s)⟩ with respect to S, by iterating: (N, C, C).

    Â = S/s (N, C, C) symmetric, s = tr(S) + eps; E (N, C, C) the symmetric output gradient.
    That gradient is (K + (⟨E, Y⟩/2 − ⟨K, Â⟩)·I)/√s with Y = p(Â) and K = L_p(Â, E); the
    caller divides by √s.
    """
    root, grad = newton_schulz_tangent_torch(a_hat, tangent, iterations)
    trace_term = torch.linalg.vecdot(tangent.flatten(1), root.flatten(1)) / 2
    trace_term -= torch.linalg.vecdot(grad.flatten(1), a_hat.flatten(1))
    grad.diagonal(dim1=1, dim2=2).add_(trace_term.unsqueeze(1))
    return grad


def _eigh(a_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh``, redone in float64 where float32 LAPACK fails or gives NaN.

    Seen on CPU (MKL, torch 2.14): a float32 Â of rank 3 in 512 channels (a 2×2 map of a
    ResNet-18) gave NaN alone and LinAlgError in a batch; float64 decomposes it.
    """
    try:
        eigenvalues, vectors = torch.linalg.eigh(a_hat)
        if a_hat.dtype == torch.float64 or bool(torch.isfinite(eigenvalues).all()):
            return eigenvalues, vectors
    except torch.linalg.LinAlgError:
        if a_hat.dtype == torch.float64:
            raise
    eigenvalues, vectors = torch.linalg.eigh(a_hat.double())
    return eigenvalues.to(a_hat.dtype), vectors.to(a_hat.dtype)


def spectral_newton_schulz_torch(
    a_hat: torch.Tensor, iterations: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Y = p(Â) = U·diag(p(λ))·Uᵀ, with Uᵀ (N, C, C: the eigenvectors as rows) and λ (N, C).

    A sample whose Â is not finite gets NaN in all three (LAPACK would fail on it for the
    whole batch; it is decomposed as zeros instead), as the iteration would give it.
    """
    finite = torch.isfinite(a_hat).all(dim=2).all(dim=1).view(-1, 1, 1)
    all_finite = bool(finite.all())
    if not all_finite:
        a_hat = torch.where(finite, a_hat, 0.0)
    eigenvalues, vectors = _eigh(a_hat)
    rows = vectors.transpose(1, 2)  # LAPACK's column-major U: its transpose is contiguous
    if not all_finite:
        rows = torch.where(finite, rows, torch.nan)
        eigenvalues = torch.where(finite.view(-1, 1), eigenvalues, torch.nan)
    values, _ = _polynomial_and_slope(eigenvalues.to(torch.float64), iterations)
    root = rows.transpose(1, 2) @ (values.to(rows.dtype).unsqueeze(2) * rows)
    return root, rows, eigenvalues


def spectral_gradient_torch(
    rows: torch.Tensor, eigenvalues: torch.Tensor, tangent: torch.Tensor, iterations: int
) -> torch.Tensor:
    """What :func:`newton_schulz_gradient_torch` gives, from Â's eigenvectors (as the rows of
    ``rows``) and eigenvalues."""
    rotated = rows @ (tangent @ rows.transpose(1, 2))
    eigenvalues = eigenvalues.to(torch.float64)
    values, slopes = _polynomial_and_slope(eigenvalues, iterations)
    weights = _divided_differences(eigenvalues, values, slopes)
    diagonal = rotated.diagonal(dim1=1, dim2=2).to(torch.float64)
    # ⟨E, Y⟩ = Σᵢ p(λᵢ)·Ẽᵢᵢ and ⟨K, Â⟩ = Σᵢ λᵢ·p′(λᵢ)·Ẽᵢᵢ in the eigenbasis.
    trace_term = (diagonal * (values / 2 - eigenvalues * slopes)).sum(dim=1)
    rotated.mul_(weights.to(rotated.dtype))
    rotated.diagonal(dim1=1, dim2=2).add_(trace_term.to(rotated.dtype).unsqueeze(1))
    return rows.transpose(1, 2) @ (rotated @ rows)


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
