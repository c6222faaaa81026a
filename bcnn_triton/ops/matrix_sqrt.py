"""The Newton–Schulz matrix square root op: checks, dispatch, torch.library registration, autograd.

Two operators are registered in the ``bcnn_triton`` namespace:

- ``bcnn_triton::matrix_sqrt_newton_schulz(a, iterations, eps, triu, backend) -> out``
- ``bcnn_triton::matrix_sqrt_newton_schulz_backward(grad, a, iterations, eps, triu, backend)``

``backend`` is "auto" unless the caller chose one, resolved inside the body at run time, as for
``bilinear_pool``.

The forward computes, per sample, with S = (A + Aᵀ)/2 and s = tr(S) + eps,

    Â = S / s,   T = (3I − Â)/2,  Y = Â·T,  Z = T,
    then (iterations − 1) times:  T = (3I − Z·Y)/2,  Y ← Y·T,  Z ← T·Z,
    out = √s · Y                  (or its upper triangle, diagonal included, with ``triu``)

— the coupled Newton–Schulz iteration of iSQRT-COV (Li et al., CVPR 2018); Y = p(Â) for a
polynomial p. The backward keeps only A between the passes. For the output gradient G and
E = (G + Gᵀ)/2 it needs K = L_p(Â, E), the derivative of p at Â along E (self-adjoint for a
symmetric Â, so also the gradient), then

    grad A = (K + (⟨E, Y⟩/2 − ⟨K, Â⟩)·I) / √s.

K comes from the iteration run again beside its tangent along E (Triton kernels, and the torch
path on CUDA) or, on CPU, from Â's eigendecomposition (see ``matrix_sqrt_torch``).
"""

from __future__ import annotations

import numbers

import torch

from bcnn_triton.ops.bilinear_pool import check_options, resolve_backend
from bcnn_triton.ops.matrix_sqrt_torch import newton_schulz_backward_torch, newton_schulz_torch
from bcnn_triton.ops.torch_path import compute_dtype_for

__all__ = ["check_iterations", "matrix_sqrt_newton_schulz", "triu_size"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


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
    a few steps give an approximation that damps small eigenvalues less than the exact root,
    which is what iSQRT-COV trains with (5 steps in its released models).

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
        backend: ``None`` (Triton kernels for CUDA tensors, torch otherwise, decided at run
            time), ``"torch"`` or ``"triton"`` (CPU tensors only under ``TRITON_INTERPRET=1``).

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
    if backend is not None:
        resolve_backend(backend, a)  # a backend that cannot run here fails now, clearly
    return torch.ops.bcnn_triton.matrix_sqrt_newton_schulz(
        a, int(iterations), float(eps), bool(triu), backend or "auto"
    )


def _normalized(a: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Â = (A + Aᵀ) / 2s and s = tr(A) + eps, (N,), in the compute dtype."""
    a = a.to(compute_dtype_for(a.dtype))
    scale = a.diagonal(dim1=1, dim2=2).sum(dim=1).add_(eps)
    a_hat = (a + a.transpose(1, 2)).div_(2 * scale.view(-1, 1, 1))
    return a_hat, scale


def _triu_flat_index(channels: int, device: torch.device) -> torch.Tensor:
    """Row-major positions of the upper triangle (diagonal included) in a flattened C×C."""
    rows, cols = torch.triu_indices(channels, channels, device=device)
    return rows * channels + cols


def _output(a: torch.Tensor, triu: bool) -> torch.Tensor:
    """Uninitialised result for matrices ``a``: (N, C, C) or (N, C(C+1)/2)."""
    num_samples, channels, _ = a.shape
    if triu:
        return a.new_empty((num_samples, triu_size(channels)))
    return a.new_empty((num_samples, channels, channels))


@torch.library.custom_op("bcnn_triton::matrix_sqrt_newton_schulz", mutates_args=())
def _matrix_sqrt_op(
    a: torch.Tensor, iterations: int, eps: float, triu: bool, backend: str
) -> torch.Tensor:
    """a: (N, C, C) → √s·Y (N, C, C), or its upper triangle (N, C(C+1)/2)."""
    if a.shape[0] == 0:
        return _output(a, triu)
    if resolve_backend(backend, a) == "triton":
        from bcnn_triton.kernels import matrix_sqrt_newton_schulz_fwd

        return matrix_sqrt_newton_schulz_fwd(a, iterations=iterations, eps=eps, triu=triu)
    a_hat, scale = _normalized(a, eps)
    root = newton_schulz_torch(a_hat, iterations).mul_(scale.sqrt().view(-1, 1, 1))
    if triu:
        root = root.flatten(1)[:, _triu_flat_index(a.shape[1], a.device)]
    else:
        # Exactly symmetric, as the Triton path: the upper triangle and its mirror.
        root = root.triu().add_(root.triu(1).transpose(1, 2))
    return root.to(a.dtype)


@_matrix_sqrt_op.register_fake
def _(a, iterations, eps, triu, backend):
    return _output(a, triu)


@torch.library.custom_op("bcnn_triton::matrix_sqrt_newton_schulz_backward", mutates_args=())
def _matrix_sqrt_backward_op(
    grad: torch.Tensor, a: torch.Tensor, iterations: int, eps: float, triu: bool, backend: str
) -> torch.Tensor:
    """Gradient (N, C, C) of the matrix square root with respect to a, in a's dtype."""
    if a.shape[0] == 0:
        return torch.zeros_like(a)
    if resolve_backend(backend, a) == "triton":
        from bcnn_triton.kernels import matrix_sqrt_newton_schulz_bwd

        return matrix_sqrt_newton_schulz_bwd(grad, a, iterations=iterations, eps=eps, triu=triu)
    a_hat, scale = _normalized(a, eps)
    tangent = _symmetric_gradient(grad.to(a_hat.dtype), triu, a.shape[1])
    grad_a = newton_schulz_backward_torch(a_hat, tangent, iterations)
    return grad_a.div_(scale.sqrt().view(-1, 1, 1)).to(a.dtype)


def _symmetric_gradient(grad: torch.Tensor, triu: bool, channels: int) -> torch.Tensor:
    """E = (G + Gᵀ)/2 as (N, C, C); with ``triu`` G holds the triangle's gradient, 0 below."""
    if triu:
        num_samples = grad.shape[0]
        full = grad.new_zeros((num_samples, channels * channels))
        full[:, _triu_flat_index(channels, grad.device)] = grad
        grad = full.view(num_samples, channels, channels)
    return (grad + grad.transpose(1, 2)).mul_(0.5)


@_matrix_sqrt_backward_op.register_fake
def _(grad, a, iterations, eps, triu, backend):
    return torch.empty_like(a)


def _setup_context(ctx, inputs, output):
    a, iterations, eps, triu, backend = inputs
    ctx.save_for_backward(a)
    ctx.options = (iterations, eps, triu, backend)


def _backward(ctx, grad_out):
    (a,) = ctx.saved_tensors
    iterations, eps, triu, backend = ctx.options
    grad_a = torch.ops.bcnn_triton.matrix_sqrt_newton_schulz_backward(
        grad_out, a, iterations, eps, triu, backend
    )
    return grad_a, None, None, None, None


_matrix_sqrt_op.register_autograd(_backward, setup_context=_setup_context)
