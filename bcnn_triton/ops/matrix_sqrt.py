"""The Newton–Schulz matrix square root op: checks, dispatch, torch.library registration, autograd.

Two operators are registered in the ``bcnn_triton`` namespace:

- ``bcnn_triton::matrix_sqrt_newton_schulz(a, iterations, eps, triu, backend)
  -> (out, basis, values, scale)``
- ``bcnn_triton::matrix_sqrt_newton_schulz_backward(grad, basis, values, scale, iterations,
  triu, backend) -> grad_a``

They follow the template of ``bcnn_triton.ops.registration``. ``backend`` is "auto" unless the
caller chose one, resolved inside the body at run time, as for ``bilinear_pool``; the outputs
have the same shapes whichever way runs.

The forward computes, per sample, with S = (A + Aᵀ)/2 and s = tr(S) + eps,

    Â = S / s,   T = (3I − Â)/2,  Y = Â·T,  Z = T,
    then (iterations − 1) times:  T = (3I − Z·Y)/2,  Y ← Y·T,  Z ← T·Z,
    out = √s · Y                  (or its upper triangle, diagonal included, with ``triu``)

— the coupled Newton–Schulz iteration of iSQRT-COV (Li et al., CVPR 2018); Y = p(Â) for a
polynomial p. For the output gradient G and E = (G + Gᵀ)/2 the backward needs K = L_p(Â, E),
the derivative of p at Â along E (self-adjoint for a symmetric Â, so also the gradient), then

    grad A = (K + (⟨E, Y⟩/2 − ⟨K, Â⟩)·I) / √s.

Between the passes autograd keeps only s and one (N, C, C) and one (N, C) tensor: Â (and
zeros) where the backward iterates again beside its tangent (Triton kernels; the torch path on
CUDA), Â's eigenvectors and eigenvalues where the torch path works in the eigenbasis (CPU; see
``matrix_sqrt_torch`` for why).
"""

from __future__ import annotations

import numbers

import torch

from bcnn_triton import kernels  # the launchers load (and Triton with them) at first use
from bcnn_triton.ops.bilinear_pool import check_options
from bcnn_triton.ops.dispatch import resolve_backend, run_dispatched
from bcnn_triton.ops.matrix_sqrt_torch import (
    newton_schulz_gradient_torch,
    newton_schulz_torch,
    spectral_gradient_torch,
    spectral_newton_schulz_torch,
)
from bcnn_triton.ops.registration import FusedOperator
from bcnn_triton.ops.torch_path import compute_dtype_for

__all__ = ["check_iterations", "matrix_sqrt_newton_schulz", "triu_size"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# The name dispatch records a failed kernel under: forward and backward share it, so that both
# take one path and the backward finds what it expects in the forward's saved tensors.
_OP = "matrix_sqrt_newton_schulz"


def triu_size(channels: int) -> int:
    """Entries of a C×C upper triangle, diagonal included: C(C+1)/2."""
    return channels * (channels + 1) // 2


def check_iterations(iterations: object) -> None:
    """TypeError/ValueError unless ``iterations`` is an integer >= 1."""
    if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral):
        raise TypeError(f"iterations must be an integer; got {type(iterations).__name__}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1; got {iterations}")


def _check_matrices(a: object) -> None:
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"a must be a torch.Tensor; got {type(a).__name__}")
    if a.dim() != 3 or a.shape[1] != a.shape[2]:
        raise ValueError(
            f"a must be a batch of square matrices (N, C, C); got shape {tuple(a.shape)}"
        )
    if a.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"a must be float16, bfloat16, float32 or float64; got dtype {a.dtype}")
    if a.shape[1] == 0:
        raise ValueError(f"a needs at least one row and column; got shape {tuple(a.shape)}")


def matrix_sqrt_newton_schulz(
    a: torch.Tensor,
    *,
    iterations: int = 5,
    eps: float = 1e-10,
    triu: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """Square root of a batch of symmetric positive semi-definite matrices by Newton–Schulz.

    The matrix is scaled by its trace, iterated, and scaled back by the root of the trace
    (iSQRT, Li et al., CVPR 2018): ``√s · Y_k(S / s)`` with S = (A + Aᵀ)/2, s = tr(S) + eps
    and Y_k the coupled Newton–Schulz iterate after k = ``iterations`` steps (see the module
    docstring). Y_k converges to the square root where the eigenvalues of S / s lie in (0, 1];
    a few steps give an approximation that raises small eigenvalues less than the exact root
    does (about 7.6·λ for a tiny λ after 5 steps, against √λ), which is what iSQRT-COV trains
    with (5 steps in its released models).

    Args:
        a: (N, C, C) symmetric positive semi-definite matrices; float16, bfloat16 (computed in
            float32), float32 or float64. Only the symmetric part (A + Aᵀ)/2 is read, and the
            gradient is that of a function of the symmetric part (symmetric, like ``a``).
        iterations: Newton–Schulz steps, >= 1.
        eps: added to the trace before dividing by it (the trace guard): an all-zero matrix
            gives 0 and a finite gradient (at most about 1.5^iterations / √eps per entry)
            instead of 0/0. Keep it far below the traces of your matrices; 0 divides by the
            bare trace (NaN for a zero matrix).
        triu: return the upper triangle row by row, diagonal included, C(C+1)/2 values per
            sample, without weights (as fast-MPN-COV's ``Triuvec``; see :func:`isqrt_cov_pool`).
        backend: ``None`` or ``"auto"`` (the Triton kernels where the GPU runs them on tensor
            cores, torch otherwise, decided at run time by the float32 iteration: see
            ``bcnn_triton.ops.dispatch``), ``"torch"`` or ``"triton"`` (CPU tensors only under
            ``TRITON_INTERPRET=1``).

    Returns:
        (N, C, C), or (N, C(C+1)/2) with ``triu``, in a's dtype. Samples are independent:
        NaN or Inf in one matrix reach only that sample's output and gradient.

    Example:
        >>> x = torch.randn(4, 6, 50, dtype=torch.float64)
        >>> a = x @ x.transpose(1, 2) / 50
        >>> root = matrix_sqrt_newton_schulz(a, iterations=30)
        >>> torch.allclose(root @ root, a)
        True
    """
    _check_matrices(a)
    check_iterations(iterations)
    check_options(eps, backend)
    if backend not in (None, "auto"):
        resolve_backend(backend, a)  # a backend that cannot run here fails now, clearly
    return MATRIX_SQRT_NEWTON_SCHULZ(a, int(iterations), float(eps), bool(triu), backend or "auto")


def _normalized(a: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Â = (A + Aᵀ) / 2s and s = tr(A) + eps, (N,), in the compute dtype."""
    a = a.to(compute_dtype_for(a.dtype))
    scale = a.diagonal(dim1=1, dim2=2).sum(dim=1).add_(eps)
    a_hat = (a + a.transpose(1, 2)).div_(2 * scale.view(-1, 1, 1))
    return a_hat, scale


def _kernels():
    """The Triton launchers, imported at the first call that runs them."""
    import bcnn_triton.kernels

    return bcnn_triton.kernels


def _triu_flat_index(channels: int, device: torch.device) -> torch.Tensor:
    """Row-major positions of the upper triangle (diagonal included) in a flattened C×C."""
    rows, cols = torch.triu_indices(channels, channels, device=device)
    return rows * channels + cols


def _empty_outputs(a: torch.Tensor, triu: bool):
    """Uninitialised result (N, C, C) or (N, C(C+1)/2), and what the backward keeps: a basis
    (N, C, C), values (N, C) and the trace s (N,), in the compute dtype."""
    num_samples, channels, _ = a.shape
    size = (num_samples, triu_size(channels)) if triu else (num_samples, channels, channels)
    compute_dtype = compute_dtype_for(a.dtype)
    return (
        a.new_empty(size),
        a.new_empty((num_samples, channels, channels), dtype=compute_dtype),
        a.new_empty((num_samples, channels), dtype=compute_dtype),
        a.new_empty((num_samples,), dtype=compute_dtype),
    )


def _forward(
    a: torch.Tensor, iterations: int, eps: float, triu: bool, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """a: (N, C, C) → √s·Y (N, C, C) or its upper triangle (N, C(C+1)/2), and what the
    backward needs: (Â, zeros, s) when iterating, (U, λ, s) on the spectral path."""
    if a.shape[0] == 0:
        return _empty_outputs(a, triu)
    a_hat, scale = _normalized(a, eps)

    def triton_path():
        out = kernels.matrix_sqrt_newton_schulz_fwd(
            a_hat, scale, iterations=iterations, triu=triu, out_dtype=a.dtype
        )
        return out, a_hat, a_hat.new_zeros(a.shape[:2]), scale

    # The kernels iterate in the compute dtype: dispatch looks at Â, not at a.
    return run_dispatched(
        _OP, f"{_OP} forward", backend, a_hat, triton_path,
        lambda: _forward_torch(a, a_hat, scale, iterations, triu),
    )  # fmt: skip


def _forward_torch(a, a_hat, scale, iterations, triu):
    """The torch path of the forward: iterate on CUDA, in the eigenbasis elsewhere."""
    if a.is_cuda:
        root, basis, values = newton_schulz_torch(a_hat, iterations), a_hat, None
    else:
        root, basis, values = spectral_newton_schulz_torch(a_hat, iterations)
    root.mul_(scale.sqrt().view(-1, 1, 1))
    if triu:
        out = root.flatten(1)[:, _triu_flat_index(a.shape[1], a.device)]
    else:
        # Exactly symmetric, as the Triton path: the upper triangle and its mirror.
        out = root.triu().add_(root.triu(1).transpose(1, 2))
    values = a_hat.new_zeros(a.shape[:2]) if values is None else values
    return out.to(a.dtype), basis, values, scale


def _forward_fake(a, iterations, eps, triu, backend):
    return _empty_outputs(a, triu)


def _backward(
    grad: torch.Tensor,
    basis: torch.Tensor,
    values: torch.Tensor,
    scale: torch.Tensor,
    iterations: int,
    triu: bool,
    backend: str,
) -> torch.Tensor:
    """Gradient (N, C, C) with respect to a, in the compute dtype, from the forward's basis,
    values and trace (see the forward)."""
    if basis.shape[0] == 0:
        return torch.zeros_like(basis)
    # The forward kept Â, not eigenvectors, wherever it iterated: on CUDA, and wherever the
    # kernels ran — which, resolved the same way, is where they run now.
    iterated = basis.is_cuda or resolve_backend(backend, basis, _OP) == "triton"
    return run_dispatched(
        _OP, f"{_OP} backward", backend, basis,
        lambda: kernels.matrix_sqrt_newton_schulz_bwd(
            grad, basis, scale, iterations=iterations, triu=triu
        ),
        lambda: _backward_torch(grad, basis, values, scale, iterations, triu, iterated),
    )  # fmt: skip


def _backward_torch(grad, basis, values, scale, iterations, triu, iterated):
    """The torch path of the backward, from Â (``iterated``) or from the eigenbasis."""
    tangent = _symmetric_gradient(grad.to(basis.dtype), triu, basis.shape[1])
    if iterated:
        grad_a = newton_schulz_gradient_torch(basis, tangent, iterations)
    else:
        grad_a = spectral_gradient_torch(basis, values, tangent, iterations)
    return grad_a.div_(scale.sqrt().view(-1, 1, 1))


def _symmetric_gradient(grad: torch.Tensor, triu: bool, channels: int) -> torch.Tensor:
    """E = (G + Gᵀ)/2 as (N, C, C); with ``triu`` G holds the triangle's gradient, 0 below."""
    if triu:
        num_samples = grad.shape[0]
        full = grad.new_zeros((num_samples, channels * channels))
        full[:, _triu_flat_index(channels, grad.device)] = grad
        grad = full.view(num_samples, channels, channels)
    return (grad + grad.transpose(1, 2)).mul_(0.5)


def _backward_fake(grad, basis, values, scale, iterations, triu, backend):
    return torch.empty_like(basis)


def _setup_context(ctx, inputs, output):
    a, iterations, _eps, triu, backend = inputs
    _out, basis, values, scale = output
    ctx.save_for_backward(basis, values, scale)
    ctx.options = (iterations, triu, backend)
    ctx.input_dtype = a.dtype


def _input_gradients(ctx, grad_out, backward, needs_input_grad):
    """(grad a, None × 4) from what ``_setup_context`` saved, through ``backward``."""
    if not needs_input_grad[0]:
        return None, None, None, None, None
    basis, values, scale = ctx.saved_tensors
    grad_a = backward(grad_out, basis, values, scale, *ctx.options)
    return grad_a.to(ctx.input_dtype), None, None, None, None


MATRIX_SQRT_NEWTON_SCHULZ = FusedOperator(
    "matrix_sqrt_newton_schulz",
    forward=_forward,
    forward_fake=_forward_fake,
    backward=_backward,
    backward_fake=_backward_fake,
    setup_context=_setup_context,
    input_gradients=_input_gradients,
)
