"""The compiled Newton–Schulz kernels on a CUDA GPU: what the interpreter cannot show.

Run on a GPU machine with ``TRITON_INTERPRET=0 pytest -m gpu tests/kernels`` (bench/gpu_check.sh
does). Covers real compilation, TF32 and IEEE float32 products, bfloat16 inputs, races between
programs (mirror stores, ping-pong state), the iSQRT-COV shape (N = 32, C = 256), opcheck and
torch.compile on CUDA. Errors are held to flash-attention's rule against float64: at most twice
the error of the torch path (cuBLAS) on the same input and precision, plus a small floor.
"""

from __future__ import annotations

import pytest
import torch
from reference import newton_schulz_sqrt_reference, spd_like

from bcnn_triton import matrix_sqrt_newton_schulz

pytestmark = pytest.mark.gpu

DTYPES = [
    pytest.param(torch.bfloat16, "highest", id="bf16"),
    pytest.param(torch.float32, "highest", id="fp32-ieee"),
    pytest.param(torch.float32, "high", id="fp32-tf32"),
]
FLOOR = 1e-5


@pytest.fixture
def matmul_precision(request):
    """Set torch's float32 matmul precision for one test (the kernels follow it)."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(request.param)
    yield request.param
    torch.set_float32_matmul_precision(previous)


def assert_within_twice_torch_error(ours, torch_same_input, reference):
    ours_err = (ours.double() - reference).abs().max().item()
    torch_err = (torch_same_input.double() - reference).abs().max().item()
    scale = reference.abs().max().item()
    assert ours_err <= 2 * torch_err + FLOOR * scale, (ours_err, torch_err, scale)


def _output_and_grad(fn, a, weights):
    leaf = a.detach().clone().requires_grad_()
    out = fn(leaf)
    (out.double() * weights).sum().backward()
    return out.detach(), leaf.grad


@pytest.mark.parametrize("triu", [False, True], ids=["full", "triu"])
@pytest.mark.parametrize(("dtype", "matmul_precision"), DTYPES, indirect=["matmul_precision"])
def test_isqrt_cov_shape_against_float64(dtype, matmul_precision, triu):
    # ResNet-50 at 448 px after the 1×1 reduction: C = 256, 14×14 = 196 < C locations.
    a = spd_like(32, 256, 196, dtype=dtype).cuda()
    reference = newton_schulz_sqrt_reference(a, triu=triu)
    weights = torch.randn(reference.shape, dtype=torch.float64, device="cuda")
    ours, ours_grad = _output_and_grad(
        lambda m: matrix_sqrt_newton_schulz(m, triu=triu, backend="triton"), a, weights
    )
    torch_out, torch_grad = _output_and_grad(
        lambda m: matrix_sqrt_newton_schulz(m, triu=triu, backend="torch"), a, weights
    )
    assert ours.dtype == dtype
    assert_within_twice_torch_error(ours, torch_out, reference)

    ref_a = a.double().requires_grad_()
    (newton_schulz_sqrt_reference(ref_a, triu=triu) * weights).sum().backward()
    ref_grad = (ref_a.grad + ref_a.grad.transpose(1, 2)) / 2
    assert_within_twice_torch_error(ours_grad, torch_grad, ref_grad)


def test_ragged_channels_and_many_samples_are_deterministic():
    # C = 200: partial tiles on every edge; 64 samples keep many programs in flight, so racing
    # mirror stores or a state buffer read while written would show.
    a = spd_like(64, 200, 120).cuda()
    out = matrix_sqrt_newton_schulz(a, backend="triton")
    assert torch.equal(out, out.transpose(1, 2))
    assert torch.equal(out, matrix_sqrt_newton_schulz(a, backend="triton")), "two runs differ"
    reference = newton_schulz_sqrt_reference(a)
    assert_within_twice_torch_error(out, matrix_sqrt_newton_schulz(a, backend="torch"), reference)


def test_nan_stays_in_its_sample():
    a = spd_like(4, 256, 100).cuda()
    poisoned = a.clone()
    poisoned[1, 3, 7] = float("nan")
    out = matrix_sqrt_newton_schulz(poisoned, backend="triton")
    assert torch.isnan(out[1]).all()
    torch.testing.assert_close(
        out[[0, 2, 3]], matrix_sqrt_newton_schulz(a, backend="triton")[[0, 2, 3]]
    )


def test_opcheck_on_cuda():
    a = spd_like(2, 64, 49).cuda().requires_grad_()
    torch.library.opcheck(
        torch.ops.bcnn_triton.matrix_sqrt_newton_schulz.default, (a, 5, 1e-10, True, "triton")
    )


def test_compile_fullgraph_on_cuda():
    def head(x):
        cov = x @ x.transpose(1, 2) / x.shape[2]
        return matrix_sqrt_newton_schulz(cov, triu=True, backend="triton")

    x = torch.randn(4, 64, 49, device="cuda", requires_grad=True)
    torch.compiler.reset()
    compiled = torch.compile(head, fullgraph=True, dynamic=True)
    torch.testing.assert_close(compiled(x), head(x), atol=1e-5, rtol=1e-4)
    compiled(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    torch.testing.assert_close(compiled(x[:3]), head(x[:3]), atol=1e-5, rtol=1e-4)
