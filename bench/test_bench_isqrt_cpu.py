"""CPU benchmark: iSQRT-COV as fast-MPN-COV formulates it against the op's torch path.

    pytest bench/test_bench_isqrt_cpu.py --benchmark-only --benchmark-json=isqrt-cpu.json
    python bench/summarize.py isqrt-cpu.json

N = 32, C = 256 (fast-MPN-COV's reduced width), L = 14×14 and 28×28, float32, forward (under
no_grad) and forward+backward, 5 Newton–Schulz steps, upper-triangular output.
``extra_info["saved_mb"]`` holds the memory autograd keeps between forward and backward (the
input map included: both keep it). ``test_matrix_sqrt_ways`` times the torch path's two ways to
the square root and its gradient (iterating, as on CUDA, and spectral, as on CPU).
"""

import functools

import pytest
import torch
from bench_impls import ISQRT_IMPLEMENTATIONS, saved_for_backward_bytes

from bcnn_triton.ops.matrix_sqrt_torch import (
    newton_schulz_gradient_torch,
    newton_schulz_torch,
    spectral_gradient_torch,
    spectral_newton_schulz_torch,
)

NUM, CHANNELS = 32, 256


@pytest.mark.parametrize("side", [14, 28])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", ["fast_mpn_cov", "torch_path"])
def test_isqrt_cpu(benchmark, impl, mode, side):
    fn = ISQRT_IMPLEMENTATIONS[impl]
    x = torch.relu(torch.randn(NUM, CHANNELS, side, side))
    grad = torch.randn(NUM, CHANNELS * (CHANNELS + 1) // 2)
    benchmark.group = f"isqrt {mode} L={side * side}"
    benchmark.extra_info.update(
        op="isqrt_cov_pool",
        impl=impl,
        mode=mode,
        dtype="float32",
        N=NUM,
        C=CHANNELS,
        L=side * side,
        device="cpu",
        threads=torch.get_num_threads(),
    )
    if mode == "fwd":
        with torch.no_grad():
            benchmark.pedantic(fn, args=(x,), rounds=5, warmup_rounds=1)
        return
    leaf = x.requires_grad_()

    def step():
        fn(leaf).backward(grad)
        leaf.grad = None

    benchmark.pedantic(step, rounds=5, warmup_rounds=1)
    benchmark.extra_info["saved_mb"] = saved_for_backward_bytes(fn, x) / 2**20


def test_baseline_computes_what_the_op_computes():
    """Not a benchmark: the re-implemented baseline agrees with the op (float64)."""
    x = torch.relu(torch.randn(3, 12, 5, 6, dtype=torch.float64)).requires_grad_()
    ours = ISQRT_IMPLEMENTATIONS["torch_path"](x)
    baseline = ISQRT_IMPLEMENTATIONS["fast_mpn_cov"](x)
    # fast-MPN-COV builds its centring matrix in float32: agreement to about 1e-7.
    torch.testing.assert_close(baseline, ours, atol=1e-6, rtol=1e-6)
    weights = torch.randn_like(ours)
    (grad_ours,) = torch.autograd.grad((ours * weights).sum(), x)
    (grad_baseline,) = torch.autograd.grad((baseline * weights).sum(), x)
    torch.testing.assert_close(grad_baseline, grad_ours, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("mode", ["fwd", "bwd"])
@pytest.mark.parametrize("way", ["iterate", "spectral"])
def test_matrix_sqrt_ways(benchmark, way, mode):
    """The torch path's two ways to p(Â) and its gradient (CUDA iterates, CPU goes spectral),
    on covariances of 14×14 locations normalized by their traces."""
    x = torch.relu(torch.randn(NUM, CHANNELS, 196))
    centred = x - x.mean(dim=2, keepdim=True)
    covariance = centred @ centred.transpose(1, 2)
    a_hat = covariance / covariance.diagonal(dim1=1, dim2=2).sum(dim=1).view(-1, 1, 1)
    tangent = torch.randn(NUM, CHANNELS, CHANNELS)
    tangent = tangent + tangent.transpose(1, 2)
    if way == "iterate":
        forward = functools.partial(newton_schulz_torch, a_hat, 5)
        backward = functools.partial(newton_schulz_gradient_torch, a_hat, tangent, 5)
    else:
        forward = functools.partial(spectral_newton_schulz_torch, a_hat, 5)
        _, rows, eigenvalues = forward()
        backward = functools.partial(spectral_gradient_torch, rows, eigenvalues, tangent, 5)
    benchmark.group = f"matrix sqrt {mode}"
    benchmark.extra_info.update(
        op="matrix_sqrt_newton_schulz",
        impl=way,
        mode=mode,
        dtype="float32",
        N=NUM,
        C=CHANNELS,
        L=196,
        device="cpu",
        threads=torch.get_num_threads(),
    )
    benchmark.pedantic(forward if mode == "fwd" else backward, rounds=5, warmup_rounds=1)
