"""The Newton–Schulz kernels on CPU tensors through the interpreter (TRITON_INTERPRET=1).

Every buffer the launchers allocate starts out as NaN (tests/kernels/conftest.py), so a missing
or unmasked store (a tile below the diagonal that no mirror covers, a triangle entry never
written) cannot pass unnoticed.
The interpreter's tile is 32×32: C = 45 and 64 give 2×2 tiles (three computed, one mirrored) and
ragged edges.
"""

from __future__ import annotations

import pytest
import torch
from reference import newton_schulz_sqrt_reference, spd_like

from bcnn_triton import matrix_sqrt_newton_schulz

pytestmark = pytest.mark.interpreter

# (N, C, L) of the covariances
SHAPES = [
    (2, 45, 60),  # 2×2 tiles, ragged
    (1, 64, 40),  # exactly 2×2 tiles, L < C: rank 39
    (3, 5, 9),  # one tile, mostly masked
    (1, 1, 3),  # C = 1
]
SHAPE_IDS = ["45", "64-rank39", "5", "1"]
CASES = [(1, False), (2, True), (5, False), (5, True)]  # (iterations, triu)
# Five steps on the 2×2-tile shapes take seconds each in the interpreter.
PARAMS = [
    pytest.param(
        shape,
        iterations,
        triu,
        id=f"{sid}-{iterations}-{'triu' if triu else 'full'}",
        marks=[pytest.mark.slow] if iterations == 5 and shape[1] > 32 else [],
    )
    for shape, sid in zip(SHAPES, SHAPE_IDS, strict=True)
    for iterations, triu in CASES
]
TOLERANCES = {torch.float32: 2e-6, torch.float16: 2e-3}
GRAD_TOLERANCES = {torch.float32: 2e-5, torch.float16: 4e-3}


def assert_close_scaled(actual, expected, rel):
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual.to(torch.float64), expected, atol=rel * scale, rtol=0.0)


@pytest.mark.parametrize(("shape", "iterations", "triu"), PARAMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_forward_and_backward_match_reference(shape, dtype, iterations, triu):
    a = spd_like(*shape, dtype=dtype).requires_grad_()
    out = matrix_sqrt_newton_schulz(a, iterations=iterations, triu=triu, backend="triton")
    ref_a = a.detach().to(torch.float64).requires_grad_()
    expected = newton_schulz_sqrt_reference(ref_a, iterations=iterations, triu=triu)
    assert out.dtype == dtype and out.shape == expected.shape
    assert_close_scaled(out, expected, TOLERANCES[dtype])

    weights = torch.randn(out.shape, dtype=torch.float64)
    (out.to(torch.float64) * weights).sum().backward()
    (expected * weights).sum().backward()
    assert a.grad.dtype == dtype
    expected_grad = (ref_a.grad + ref_a.grad.transpose(1, 2)) / 2
    assert_close_scaled(a.grad, expected_grad, GRAD_TOLERANCES[dtype])


def test_matches_the_torch_path_and_is_exactly_symmetric():
    a = spd_like(2, 45, 60)
    out = matrix_sqrt_newton_schulz(a, backend="triton")
    assert torch.equal(out, out.transpose(1, 2))
    torch.testing.assert_close(out, matrix_sqrt_newton_schulz(a, backend="torch"))


def test_input_is_read_through_its_strides():
    # A transposed view of every other matrix of a larger batch: no dense layout.
    a = spd_like(4, 45, 60).transpose(1, 2)[::2]
    assert not a.is_contiguous()
    a.requires_grad_()
    out = matrix_sqrt_newton_schulz(a, triu=True, backend="triton")
    ref_a = a.detach().to(torch.float64).requires_grad_()
    expected = newton_schulz_sqrt_reference(ref_a, triu=True)
    assert_close_scaled(out, expected, TOLERANCES[torch.float32])
    out.sum().backward()  # an expanded (stride-0) gradient
    expected.sum().backward()
    assert_close_scaled(a.grad, (ref_a.grad + ref_a.grad.mT) / 2, GRAD_TOLERANCES[torch.float32])


def test_nan_stays_in_its_sample():
    a = spd_like(3, 40, 30)
    poisoned = a.clone()
    poisoned[1, 2, 5] = float("nan")
    out = matrix_sqrt_newton_schulz(poisoned, backend="triton")
    assert torch.isnan(out[1]).all()
    torch.testing.assert_close(out[[0, 2]], matrix_sqrt_newton_schulz(a, backend="triton")[[0, 2]])


def test_zero_matrix_gives_zero_and_a_finite_gradient():
    a = torch.zeros(2, 40, 40, requires_grad=True)
    out = matrix_sqrt_newton_schulz(a, backend="triton")
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.isfinite(a.grad).all()


@pytest.mark.slow
def test_opcheck_on_the_triton_path():
    a = spd_like(2, 40, 30).requires_grad_()
    args = (a, 3, 1e-10, True, "triton")
    torch.library.opcheck(torch.ops.bcnn_triton.matrix_sqrt_newton_schulz.default, args)
