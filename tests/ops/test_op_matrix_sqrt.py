"""matrix_sqrt_newton_schulz on the torch path: values, convergence, gradients, memory,
registration, compile and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from reference import (
    eigh_sqrt,
    newton_schulz_polynomial_reference,
    newton_schulz_sqrt_reference,
    spd_like,
)

from bcnn_triton import matrix_sqrt_newton_schulz
from bcnn_triton.ops.matrix_sqrt_torch import newton_schulz_tangent_torch

# (N, C, L): covariances of C channels over L locations (rank < C when L <= C).
SHAPES = [
    (2, 16, 40),
    (3, 37, 60),  # primes
    (1, 1, 5),  # a 1×1 matrix: its root is √a
    (2, 9, 4),  # L < C: rank 3
    (2, 131, 150),  # odd C above the torch path's threshold for symmetric row panels
    (1, 200, 100),  # three panels, rank 99
]
SHAPE_IDS = ["16", "37-primes", "1", "9-rank3", "131-panels", "200-rank99"]

# Result tolerance relative to the largest entry: float32 compute, one rounding to the dtype.
# On CPU the torch path works in Â's eigenbasis (LAPACK's eigh): float32 results within about
# ten ulps of the largest entry.
TOLERANCES = {
    torch.float64: 1e-12,
    torch.float32: 1e-5,
    torch.float16: 2e-3,
    torch.bfloat16: 1.6e-2,
}
GRAD_TOLERANCES = {
    torch.float64: 1e-11,
    torch.float32: 2e-5,
    torch.float16: 4e-3,
    torch.bfloat16: 3e-2,
}


def assert_close_scaled(actual, expected, rel):
    """|actual − expected| <= rel · max|expected| (+ a floor for all-zero expectations)."""
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(
        actual.to(torch.float64), expected, atol=rel * scale + 1e-12, rtol=0.0, equal_nan=True
    )


@pytest.mark.parametrize(
    ("iterations", "triu"), [(1, False), (2, True), (5, False), (5, True)], ids=str
)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_forward_matches_reference(shape, dtype, iterations, triu):
    a = spd_like(*shape, dtype=dtype)
    out = matrix_sqrt_newton_schulz(a, iterations=iterations, triu=triu, backend="torch")
    expected = newton_schulz_sqrt_reference(a, iterations=iterations, triu=triu)
    assert out.dtype == dtype
    assert out.shape == expected.shape
    assert_close_scaled(out, expected, TOLERANCES[dtype])


@pytest.mark.parametrize("shape", [(2, 16, 40), (1, 131, 400)], ids=["16", "131"])
def test_converges_to_the_square_root(shape):
    # Full rank and well conditioned (L >> C): 20 steps reach the root to float64 rounding.
    a = spd_like(*shape, dtype=torch.float64) + 0.1 * torch.eye(shape[1], dtype=torch.float64)
    root = matrix_sqrt_newton_schulz(a, iterations=20, eps=0.0)
    torch.testing.assert_close(root, eigh_sqrt(a), atol=1e-12, rtol=1e-10)
    five = matrix_sqrt_newton_schulz(a, iterations=5, eps=0.0)
    assert (five - eigh_sqrt(a)).abs().max() > 1e-6  # five steps are an approximation


def test_triu_is_the_unweighted_upper_triangle():
    a = spd_like(2, 7, 20)
    full = matrix_sqrt_newton_schulz(a)
    rows, cols = torch.triu_indices(7, 7)
    assert torch.equal(matrix_sqrt_newton_schulz(a, triu=True), full[:, rows, cols])
    assert torch.equal(full, full.transpose(1, 2))  # exactly symmetric


def test_reads_only_the_symmetric_part():
    a = spd_like(2, 6, 20, dtype=torch.float64)
    skew = torch.randn(2, 6, 6, dtype=torch.float64)
    skew = skew - skew.transpose(1, 2)
    torch.testing.assert_close(matrix_sqrt_newton_schulz(a + skew), matrix_sqrt_newton_schulz(a))


@pytest.mark.parametrize(("iterations", "triu"), [(1, True), (5, False), (5, True)], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_gradients_match_reference(shape, dtype, iterations, triu):
    a = spd_like(*shape, dtype=dtype).requires_grad_()
    out = matrix_sqrt_newton_schulz(a, iterations=iterations, triu=triu, backend="torch")
    weights = torch.randn(out.shape, dtype=torch.float64)
    (out.to(torch.float64) * weights).sum().backward()

    ref_a = a.detach().to(torch.float64).requires_grad_()
    ref_out = newton_schulz_sqrt_reference(ref_a, iterations=iterations, triu=triu)
    (ref_out * weights).sum().backward()
    assert a.grad.dtype == dtype
    # The function reads (A + Aᵀ)/2: its gradient is the symmetric part of the loop's.
    expected = (ref_a.grad + ref_a.grad.transpose(1, 2)) / 2
    assert_close_scaled(a.grad, expected, GRAD_TOLERANCES[dtype])


@pytest.mark.parametrize("shape", [(2, 9, 4), (2, 131, 150)], ids=["9-rank3", "131-panels"])
def test_forward_mode_tangent_is_the_derivative(shape):
    """The torch path's backward on CUDA: the iteration run beside its tangent."""
    a = spd_like(*shape, dtype=torch.float64)
    a_hat = a / a.diagonal(dim1=1, dim2=2).sum(dim=1)[:, None, None]
    direction = torch.randn_like(a)
    direction = direction + direction.transpose(1, 2)
    root, tangent = newton_schulz_tangent_torch(a_hat, direction, 5)
    _, expected = torch.autograd.functional.jvp(
        lambda m: newton_schulz_polynomial_reference(m, 5), a_hat, direction
    )
    torch.testing.assert_close(root, newton_schulz_polynomial_reference(a_hat, 5))
    torch.testing.assert_close(tangent, expected)


@pytest.mark.parametrize("triu", [False, True], ids=["full", "triu"])
@pytest.mark.parametrize(("shape", "iterations"), [((2, 4, 9), 3), ((1, 5, 3), 5), ((2, 1, 2), 2)])
def test_gradcheck_float64(shape, iterations, triu):
    # gradcheck perturbs single entries, so A leaves the symmetric matrices: that checks the
    # gradient of the function of (A + Aᵀ)/2 the op computes.
    a = spd_like(*shape, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda m: matrix_sqrt_newton_schulz(m, iterations=iterations, triu=triu), (a,)
    )


def test_zero_and_rank_deficient_matrices_are_finite():
    zero = torch.zeros(2, 8, 8, requires_grad=True)
    out = matrix_sqrt_newton_schulz(zero)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.isfinite(zero.grad).all()
    # The trace guard bounds it: |grad| <= 1.5^iterations / √eps at A = 0.
    assert zero.grad.abs().max() <= 1.5**5 / math.sqrt(1e-10) * (1 + 1e-6)

    # Dead channels (zero rows and columns) and fewer locations than channels.
    a = spd_like(2, 12, 5)
    a[:, 3] = 0.0
    a[:, :, 3] = 0.0
    a.requires_grad_()
    out = matrix_sqrt_newton_schulz(a)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(a.grad).all()
    # The dead channel's row stays zero, up to rounding (exactly, where the iteration runs).
    assert out[:, 3].abs().max() <= 1e-6 * out.abs().max()


def test_nan_stays_in_its_sample():
    a = spd_like(3, 40, 30).requires_grad_()
    poisoned = a.detach().clone()
    poisoned[1, 2, 5] = float("nan")
    poisoned[2, 7, 7] = float("inf")
    poisoned.requires_grad_()
    weights = torch.randn(3, 40, 40)
    clean = matrix_sqrt_newton_schulz(a)
    out = matrix_sqrt_newton_schulz(poisoned)
    assert torch.equal(out[0], clean[0])
    assert not torch.isfinite(out[1]).any() and not torch.isfinite(out[2]).any()
    (out * weights).sum().backward()
    (clean * weights).sum().backward()
    assert torch.equal(poisoned.grad[0], a.grad[0])


def test_half_precision_is_computed_in_float32():
    # Diagonal entries near 2e4: the trace exceeds the float16 range (65504).
    base = spd_like(2, 6, 30, dtype=torch.float64)
    a = (2e4 * torch.eye(6) + 1e3 * base / base.diagonal(dim1=1, dim2=2).mean()).to(torch.float16)
    assert torch.isinf(a.double().diagonal(dim1=1, dim2=2).sum(1).half()).all()
    out = matrix_sqrt_newton_schulz(a)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert_close_scaled(out, newton_schulz_sqrt_reference(a), TOLERANCES[torch.float16])


def test_empty_batch():
    a = torch.rand(0, 5, 5, requires_grad=True)
    out = matrix_sqrt_newton_schulz(a, triu=True)
    assert out.shape == (0, 15)
    out.sum().backward()
    assert a.grad.shape == a.shape


def test_backward_keeps_one_matrix_and_two_vectors():
    # Here (CPU) the eigenvectors, the eigenvalues and the trace; not the iterates.
    a = spd_like(4, 32, 50).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        matrix_sqrt_newton_schulz(a, iterations=5)
    assert sorted(t.shape for t in saved) == [(4,), (4, 32), (4, 32, 32)]
    assert all(t.dtype == torch.float32 for t in saved)


# ---------------------------------------------------------------- registration and compile


@pytest.mark.parametrize("triu", [False, True])
@pytest.mark.parametrize("iterations", [1, 3])
def test_opcheck_forward(iterations, triu):
    a = spd_like(2, 6, 10).requires_grad_()
    args = (a, iterations, 1e-10, triu, "torch")
    torch.library.opcheck(torch.ops.bcnn_triton.matrix_sqrt_newton_schulz.default, args)


@pytest.mark.parametrize("triu", [False, True])
def test_opcheck_backward(triu):
    a = spd_like(2, 6, 10)
    _, basis, values, scale = torch.ops.bcnn_triton.matrix_sqrt_newton_schulz(
        a, 3, 1e-10, triu, "torch"
    )
    grad = torch.randn(2, 21) if triu else torch.randn(2, 6, 6)
    args = (grad, basis, values, scale, 3, triu, "torch")
    torch.library.opcheck(torch.ops.bcnn_triton.matrix_sqrt_newton_schulz_backward.default, args)


@pytest.mark.slow
def test_compile_fullgraph_matches_eager():
    torch.compiler.reset()

    def head(x):
        cov = x @ x.transpose(1, 2) / x.shape[2]
        return matrix_sqrt_newton_schulz(torch.relu(cov) + cov, triu=True).sum(dim=1)

    x = torch.randn(3, 7, 9, requires_grad=True)
    compiled = torch.compile(head, fullgraph=True)
    torch.testing.assert_close(compiled(x), head(x))
    compiled(x).sum().backward()
    grad = x.grad.clone()
    x.grad = None
    head(x).sum().backward()
    torch.testing.assert_close(grad, x.grad)


# --------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: matrix_sqrt_newton_schulz([1.0]), TypeError, "a must be a torch.Tensor; got list"),
        (
            lambda: matrix_sqrt_newton_schulz(torch.rand(3, 3)),
            ValueError,
            r"square matrices \(N, C, C\); got shape \(3, 3\)",
        ),
        (lambda: matrix_sqrt_newton_schulz(torch.rand(2, 3, 4)), ValueError, r"\(2, 3, 4\)"),
        (lambda: matrix_sqrt_newton_schulz(torch.rand(2, 0, 0)), ValueError, "at least one row"),
        (
            lambda: matrix_sqrt_newton_schulz(torch.ones(1, 2, 2, dtype=torch.int64)),
            TypeError,
            "torch.int64",
        ),
        (
            lambda: matrix_sqrt_newton_schulz(torch.eye(2)[None], iterations=0),
            ValueError,
            "iterations must be >= 1; got 0",
        ),
        (
            lambda: matrix_sqrt_newton_schulz(torch.eye(2)[None], iterations=2.5),
            TypeError,
            "iterations must be an integer; got float",
        ),
        (lambda: matrix_sqrt_newton_schulz(torch.eye(2)[None], eps=-1.0), ValueError, "eps"),
        (
            lambda: matrix_sqrt_newton_schulz(torch.eye(2)[None], backend="cuda"),
            ValueError,
            "backend must be",
        ),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
