"""isqrt_cov_pool: covariance op + Newton–Schulz op against a float64 reference, on both paths."""

from __future__ import annotations

import pytest
import torch
from reference import feature_like, isqrt_cov_pool_reference

from bcnn_triton import ISqrtCovPool, isqrt_cov_pool

# (N, C, spatial): spatial is (H, W) or L
SHAPES = [
    (2, 16, (7, 7)),
    (3, 37, (5, 11)),  # primes
    (2, 24, (3, 3)),  # L = 9 < C: a rank-8 covariance
    (1, 1, 6),  # one channel: the root of its variance
    (2, 131, (4, 5)),  # odd C above the torch path's panel threshold, L < C
]
SHAPE_IDS = ["16x7x7", "37x5x11", "24x3x3", "1xL6", "131x4x5"]
TOLERANCES = {
    torch.float64: 1e-11,
    torch.float32: 1e-5,
    torch.float16: 2e-3,
    torch.bfloat16: 1.6e-2,
}
GRAD_TOLERANCES = {
    torch.float64: 1e-10,
    torch.float32: 2e-5,
    torch.float16: 4e-3,
    torch.bfloat16: 3e-2,
}
OPTIONS = [dict(), dict(triu=False), dict(center=False), dict(iterations=1)]
OPTION_IDS = ["default", "full", "uncentred", "one-step"]


def assert_close_scaled(actual, expected, rel):
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(
        actual.to(torch.float64), expected, atol=rel * scale + 1e-12, rtol=0.0
    )


def make_input(shape, dtype, dead=0.0):
    num, channels, spatial = shape
    spatial = spatial if isinstance(spatial, tuple) else (spatial,)
    return feature_like(num, channels, *spatial, dtype=dtype, dead=dead)


@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_matches_reference(shape, dtype, options):
    # Dead channels: zero rows and columns in the covariance.
    x = make_input(shape, dtype, dead=0.25).requires_grad_()
    out = isqrt_cov_pool(x, backend="torch", **options)
    x_ref = x.detach().to(torch.float64).requires_grad_()
    expected = isqrt_cov_pool_reference(x_ref, **options)
    assert out.dtype == dtype and out.shape == expected.shape
    assert_close_scaled(out, expected, TOLERANCES[dtype])

    weights = torch.randn(out.shape, dtype=torch.float64)
    (out.to(torch.float64) * weights).sum().backward()
    (expected * weights).sum().backward()
    assert x.grad.dtype == dtype and x.grad.shape == x.shape
    assert_close_scaled(x.grad, x_ref.grad, GRAD_TOLERANCES[dtype])


@pytest.mark.parametrize("options", OPTIONS[:3], ids=OPTION_IDS[:3])
def test_gradcheck_float64(options):
    x = make_input((2, 5, (2, 3)), torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: isqrt_cov_pool(t, **options), (x,))


def test_channels_last_input():
    x = make_input((2, 16, (7, 7)), torch.float32).to(memory_format=torch.channels_last)
    assert_close_scaled(isqrt_cov_pool(x), isqrt_cov_pool_reference(x), TOLERANCES[torch.float32])


@pytest.mark.parametrize("fill", [0.0, 3.0], ids=["zero", "constant"])
def test_zero_covariance_gives_zeros_and_zero_gradient(fill):
    # Constant features centre to zero, like all-zero ones.
    x = torch.full((2, 6, 3, 3), fill, requires_grad=True)
    out = isqrt_cov_pool(x)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_nan_stays_in_its_sample():
    x = make_input((3, 7, (4, 4)), torch.float32).requires_grad_()
    poisoned = x.detach().clone()
    poisoned[1, 2, 0, 3] = float("nan")
    poisoned.requires_grad_()
    weights = torch.randn(3, 28)
    clean = isqrt_cov_pool(x)
    out = isqrt_cov_pool(poisoned)
    assert torch.equal(out[0], clean[0]) and torch.isnan(out[1]).all()
    (out * weights).sum().backward()
    (clean * weights).sum().backward()
    assert torch.equal(poisoned.grad[0], x.grad[0])


def test_backward_keeps_the_features_and_three_small_tensors():
    # The covariance op keeps the map alone (its gradient does not depend on the covariance);
    # the square root one (N, C, C) matrix (here the eigenvectors), one (N, C) and one (N,).
    num, channels = 4, 32
    x = make_input((num, channels, (7, 7)), torch.float32).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        isqrt_cov_pool(x)
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in saved}
    matrices = num * channels * channels * 4
    assert sum(storages.values()) == x.numel() * 4 + matrices + num * (channels + 1) * 4


def test_iterations_are_checked():
    with pytest.raises(ValueError, match="iterations must be >= 1; got 0"):
        isqrt_cov_pool(torch.rand(1, 2, 3), iterations=0)
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        isqrt_cov_pool("features")


@pytest.mark.interpreter
@pytest.mark.parametrize("options", OPTIONS[:2], ids=OPTION_IDS[:2])
def test_triton_path_matches_reference(options):
    x = make_input((2, 40, (5, 6)), torch.float32, dead=0.2).requires_grad_()
    out = isqrt_cov_pool(x, backend="triton", **options)
    x_ref = x.detach().to(torch.float64).requires_grad_()
    expected = isqrt_cov_pool_reference(x_ref, **options)
    assert_close_scaled(out, expected, TOLERANCES[torch.float32])
    out.sum().backward()
    expected.sum().backward()
    assert_close_scaled(x.grad, x_ref.grad, GRAD_TOLERANCES[torch.float32])


@pytest.mark.slow
def test_compile_fullgraph_matches_eager():
    torch.compiler.reset()
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), ISqrtCovPool(), torch.nn.Linear(36, 4)
    )
    images = torch.randn(3, 3, 9, 9)
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(images), model(images))
    compiled(images).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(images).sum().backward()
    for grad, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(grad, p.grad)


def test_many_channels_over_few_locations_stay_finite():
    # A 2×2 map of 512 channels, a third of them constant (dead): a covariance of rank 3 with
    # ~500 equal eigenvalues, on which float32 LAPACK eigh failed (LinAlgError, or NaN for a
    # single sample) on CPU; the torch path then decomposes in float64.
    # Seed 3 gave NaN with MKL's float32 eigh (torch 2.14.1, 2 CPU cores).
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(1, 512, 2, 2, generator=generator).relu()
    x[torch.rand(1, 512, generator=generator) < 0.35] = 0.5
    out = isqrt_cov_pool(x, backend="torch")
    assert_close_scaled(out, isqrt_cov_pool_reference(x), TOLERANCES[torch.float32])
