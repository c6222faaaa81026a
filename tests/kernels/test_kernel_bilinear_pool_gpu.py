"""The compiled Triton kernels on a CUDA GPU: what the interpreter cannot show.

Run on a GPU machine with ``TRITON_INTERPRET=0 pytest -m gpu tests/kernels`` (bench/gpu_check.sh
does). Covers real compilation, bfloat16, TF32 and IEEE float32, races between programs (mirror
stores, the Σs² table), the seed's shape, both normalization strategies, centring, misaligned
rows, a second GPU, opcheck and torch.compile on CUDA. Every buffer the launchers allocate starts
out as NaN (tests/kernels/conftest.py). Each distinct dtype/option set compiles the autotuned
kernels once; the cases are chosen to keep that short.

Low-precision results are held to flash-attention's rule: the error against float64 is at most
twice the error of PyTorch's own computation in the same dtype (the seed's eager formula, or the
torch path where the seed has no counterpart), plus a small floor.
"""

from __future__ import annotations

import pytest
import torch
from reference import bilinear_pool_reference, feature_like, seed_bilinear_pool

from bcnn_triton import BilinearPool, bilinear_pool

pytestmark = pytest.mark.gpu

DTYPES = [
    pytest.param(torch.bfloat16, "highest", id="bf16"),
    pytest.param(torch.float16, "highest", id="fp16"),
    pytest.param(torch.float32, "highest", id="fp32-ieee"),
    pytest.param(torch.float32, "high", id="fp32-tf32"),
]
FLOOR = {torch.bfloat16: 1e-3, torch.float16: 1e-4, torch.float32: 1e-5}


@pytest.fixture
def matmul_precision(request):
    """Set torch's float32 matmul precision for one test (the kernels follow it)."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(request.param)
    yield request.param
    torch.set_float32_matmul_precision(previous)


def triton_pool(*inputs, **options):
    """The op with the kernels forced: these tests check them whatever "auto" would pick
    (float32 at torch's "highest" precision, for one, stays on the torch path)."""
    return bilinear_pool(*inputs, backend="triton", **options)


def test_auto_picks_the_kernels_where_the_gpu_has_tensor_cores():
    from bcnn_triton.ops import explain_backend

    tensor_cores = torch.cuda.get_device_capability() >= (8, 0) or torch.version.hip
    bf16 = explain_backend(torch.zeros(1, device="cuda", dtype=torch.bfloat16))
    assert bf16.backend == ("triton" if tensor_cores else "torch"), bf16.reason


def assert_within_twice_torch_error(ours, torch_same_dtype, reference, floor):
    ours_err = (ours.double() - reference).abs().max().item()
    torch_err = (torch_same_dtype.double() - reference).abs().max().item()
    scale = reference.abs().max().item()
    assert ours_err <= 2 * torch_err + floor * scale, (ours_err, torch_err, scale)


def _grads(fn, *inputs, weights):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    (fn(*leaves).double() * weights).sum().backward()
    return [t.grad for t in leaves]


@pytest.mark.parametrize(("dtype", "matmul_precision"), DTYPES, indirect=["matmul_precision"])
def test_seed_shape_forward_and_backward_against_float64(dtype, matmul_precision):
    x = feature_like(4, 512, 28, 28, dtype=dtype, dead=0.1).cuda()
    out = triton_pool(x)
    seed_out = seed_bilinear_pool(x)
    reference = bilinear_pool_reference(x)
    assert out.dtype == dtype
    assert_within_twice_torch_error(out, seed_out, reference, FLOOR[dtype])

    weights = torch.randn(reference.shape, dtype=torch.float64, device="cuda")
    (ours,) = _grads(triton_pool, x, weights=weights)
    (seeds,) = _grads(seed_bilinear_pool, x, weights=weights)
    (ref,) = _grads(bilinear_pool_reference, x.double(), weights=weights)
    assert_within_twice_torch_error(ours, seeds, ref, FLOOR[dtype])


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(triu=True),
        dict(signed_sqrt=False),
        dict(normalize=False),
        dict(two_streams=True),
        dict(center=True, eps=1e-3),
        dict(center=True, signed_sqrt=False, normalize=False, triu=True),
    ],
    ids=["default", "triu", "no-sqrt", "no-norm", "two-streams", "center", "cov-triu"],
)
def test_ragged_shapes_and_options_in_bfloat16(options):
    """C = 100 and L = 91: partial tiles on every edge."""
    options = dict(options)
    x = feature_like(2, 200, 9, 9, dtype=torch.bfloat16).cuda()
    y = (
        feature_like(2, 70, 9, 9, dtype=torch.bfloat16).cuda()
        if options.pop("two_streams", 0)
        else None
    )
    inputs = (x,) if y is None else (x, y)
    out = triton_pool(*inputs, **options)
    torch_out = bilinear_pool(*inputs, backend="torch", **options)
    reference = bilinear_pool_reference(*inputs, **options)
    assert_within_twice_torch_error(out, torch_out, reference, FLOOR[torch.bfloat16])

    weights = torch.randn(reference.shape, dtype=torch.float64, device="cuda")
    ours = _grads(lambda *t: triton_pool(*t, **options), *inputs, weights=weights)
    torch_grads = _grads(
        lambda *t: bilinear_pool(*t, backend="torch", **options), *inputs, weights=weights
    )
    ref = _grads(
        lambda *t: bilinear_pool_reference(*t, **options),
        *(t.double() for t in inputs),
        weights=weights,
    )
    for a, b, r in zip(ours, torch_grads, ref, strict=True):
        assert_within_twice_torch_error(a, b, r, FLOOR[torch.bfloat16])


def test_channels_last_and_many_samples_match_the_torch_path():
    # 64 samples: many programs in flight at once, so racing mirror stores would show.
    x = feature_like(64, 256, 14, 14).cuda().to(memory_format=torch.channels_last)
    out = triton_pool(x)
    torch.testing.assert_close(out, bilinear_pool(x, backend="torch"), atol=2e-6, rtol=1e-4)
    assert torch.equal(out, triton_pool(x)), "two runs differ: the kernels must be deterministic"


def test_float16_gram_beyond_float16_range():
    x = (300 + 10 * torch.rand(2, 100, 13, 7)).to(torch.float16).cuda()
    for options in (dict(), dict(signed_sqrt=False), dict(normalize=False)):
        out = triton_pool(x, **options)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(
            out.double(), bilinear_pool_reference(x, **options), atol=1e-5, rtol=2e-3
        )


def test_opcheck_on_cuda():
    x = feature_like(2, 64, 49).cuda().requires_grad_()
    for center in (False, True):
        args = (x, None, True, True, 1e-10, False, center, "triton")
        torch.library.opcheck(torch.ops.bcnn_triton.bilinear_pool.default, args)


def test_compile_fullgraph_on_cuda():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 64, 3, padding=1),
        torch.nn.ReLU(),
        BilinearPool(backend="triton"),
        torch.nn.Linear(64 * 64, 10),
    ).cuda()
    images = torch.randn(4, 3, 16, 16, device="cuda")
    torch.compiler.reset()
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    torch.testing.assert_close(compiled(images), model(images), atol=1e-5, rtol=1e-4)
    compiled(images).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    torch.testing.assert_close(compiled(images[:3]), model(images[:3]), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("strategy", ["stage", "recompute"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_both_normalization_strategies(strategy, dtype):
    from bcnn_triton.kernels import bilinear_pool_fwd

    x = feature_like(8, 256, 14, 14, dtype=dtype, dead=0.1).cuda()
    out, norm = bilinear_pool_fwd(x.flatten(2), norm_strategy=strategy)
    torch_out = bilinear_pool(x, backend="torch")
    assert_within_twice_torch_error(out, torch_out, bilinear_pool_reference(x), FLOOR[dtype])
    expected_norm = bilinear_pool_reference(x, normalize=False).norm(dim=1)
    torch.testing.assert_close(norm.double(), expected_norm, rtol=1e-3, atol=0)


def test_float16_gradients_of_realistic_size_do_not_underflow():
    x = feature_like(4, 512, 28, 28, dtype=torch.float16).cuda()
    weights = 1e-4 * torch.randn(4, 512 * 512, dtype=torch.float64, device="cuda")
    (ours,) = _grads(triton_pool, x, weights=weights)
    (torch_path,) = _grads(lambda t: bilinear_pool(t, backend="torch"), x, weights=weights)
    (ref,) = _grads(bilinear_pool_reference, x.double(), weights=weights)
    assert ours.abs().max() > 0.5 * ref.abs().max()
    assert_within_twice_torch_error(ours, torch_path, ref, FLOOR[torch.float16])


@pytest.mark.parametrize("align_rows", [True, False])
def test_misaligned_rows_in_bfloat16(align_rows):
    """L = 196 (14×14): 392-byte rows, copied to aligned ones or read as they are."""
    from bcnn_triton.kernels import bilinear_pool_bwd, bilinear_pool_fwd

    x = feature_like(8, 256, 196, dtype=torch.bfloat16).cuda()
    out, norm = bilinear_pool_fwd(x, align_rows=align_rows)
    grad = torch.randn_like(out)
    dx, _ = bilinear_pool_bwd(grad, x, None, out, norm, align_rows=align_rows)
    assert_within_twice_torch_error(
        out, bilinear_pool(x, backend="torch"), bilinear_pool_reference(x), FLOOR[torch.bfloat16]
    )
    x64 = x.double().requires_grad_()
    (bilinear_pool_reference(x64) * grad.double()).sum().backward()
    x_torch = x.detach().requires_grad_()
    bilinear_pool(x_torch, backend="torch").backward(grad)
    assert_within_twice_torch_error(dx, x_torch.grad, x64.grad, FLOOR[torch.bfloat16])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_a_map_on_the_second_gpu_runs_there():
    """The current device stays 0; the kernels must follow the tensors to GPU 1."""
    torch.cuda.set_device(0)
    x = feature_like(2, 64, 7, 7).to("cuda:1").requires_grad_()
    out = triton_pool(x)
    assert out.device == x.device
    torch.testing.assert_close(out.cpu(), bilinear_pool(x.detach().cpu()), atol=2e-6, rtol=1e-4)
    out.sum().backward()
    assert x.grad.device == x.device and torch.isfinite(x.grad).all()
