"""The Triton kernels on CPU tensors through the interpreter (TRITON_INTERPRET=1).

The interpreter checks the arithmetic, masking and indexing of the kernels — not races, TF32
or bfloat16, which only a GPU shows (see test_kernel_bilinear_pool_gpu.py). Every buffer the
launchers allocate starts out as NaN, so a missing or unmasked store cannot pass unnoticed.
The interpreter's tile is 32×32: the shapes below give several tiles and ragged edges.
"""

from __future__ import annotations

import pytest
import torch
from reference import bilinear_pool_reference, feature_like

from bcnn_triton import bilinear_pool

pytestmark = [
    pytest.mark.interpreter,
    # The backward divides by |z| and then selects 0 where z = 0; numpy warns about the
    # discarded quotients, a GPU does not.
    pytest.mark.filterwarnings("ignore:.*encountered in divide:RuntimeWarning"),
]

# (N, Cx, Cy or None, spatial)
SHAPES = [
    (2, 45, None, (5, 10)),  # 2×2 tiles, ragged; L = 50 spans two K steps
    (1, 70, None, 29),  # 3×3 tiles (6 computed); (N, C, L) input
    (3, 32, None, (4, 8)),  # exactly one tile
    (1, 1, None, (1, 1)),  # N = C = L = 1
    (2, 70, 33, (3, 7)),  # two streams, 3×2 tiles
    (1, 5, 40, 17),  # two streams, Cx < Cy
]
SHAPE_IDS = ["45x5x10", "70xL29", "32x4x8", "1x1x1", "70+33x3x7", "5+40xL17"]
OPTIONS = [
    dict(),
    dict(triu=True),
    dict(signed_sqrt=False),
    dict(normalize=False),
    dict(signed_sqrt=False, normalize=False, triu=True),
]
OPTION_IDS = ["default", "triu", "no-sqrt", "no-norm", "gram-only-triu"]
TOLERANCES = {
    torch.float32: dict(atol=1e-6, rtol=1e-5),
    torch.float16: dict(atol=1e-5, rtol=2e-3),
}
GRAD_TOLERANCES = {torch.float32: 2e-5, torch.float16: 1e-2}


@pytest.fixture(autouse=True)
def nan_filled_allocations(monkeypatch):
    """Make torch.empty / empty_like return NaN-filled floating tensors during the test."""
    empty, empty_like = torch.empty, torch.empty_like

    def poison(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poison(empty_like(*a, **k)))


def make_inputs(shape, dtype, layout="contiguous"):
    num, channels_x, channels_y, spatial = shape
    spatial = tuple(spatial) if isinstance(spatial, tuple) else (spatial,)

    def one(channels):
        t = feature_like(num, channels, *spatial, dtype=dtype, dead=0.2)
        if layout == "channels_last" and t.dim() == 4:
            return t.to(memory_format=torch.channels_last)
        if layout == "strided":
            return feature_like(num, channels, 2 * spatial[0], *spatial[1:], dtype=dtype)[:, :, ::2]
        return t

    return one(channels_x), (None if channels_y is None else one(channels_y))


def _valid(shape, options):
    return not (options.get("triu") and shape[2] is not None)


CASES = [
    pytest.param(shape, options, id=f"{sid}-{oid}")
    for shape, sid in zip(SHAPES, SHAPE_IDS, strict=True)
    for options, oid in zip(OPTIONS, OPTION_IDS, strict=True)
    if _valid(shape, options)
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("shape", "options"), CASES)
def test_forward_matches_reference(shape, options, dtype):
    x, y = make_inputs(shape, dtype)
    out = bilinear_pool(x, y, backend="triton", **options)
    expected = bilinear_pool_reference(x, y, **options)
    assert out.dtype == dtype and out.shape == expected.shape
    torch.testing.assert_close(out.to(torch.float64), expected, **TOLERANCES[dtype])


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[4]], ids=[SHAPE_IDS[0], SHAPE_IDS[4]])
def test_non_contiguous_inputs_are_read_in_place(shape, layout):
    x, y = make_inputs(shape, torch.float32, layout)
    assert not x.is_contiguous()
    x.requires_grad_()
    out = bilinear_pool(x, y, backend="triton")
    torch.testing.assert_close(
        out.to(torch.float64), bilinear_pool_reference(x, y), **TOLERANCES[torch.float32]
    )
    out.sum().backward()
    if layout == "channels_last":
        assert x.grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("shape", "options"), CASES)
def test_gradients_match_reference(shape, options, dtype):
    x, y = make_inputs(shape, dtype)
    inputs = [t.requires_grad_() for t in (x, y) if t is not None]
    out = bilinear_pool(*inputs, backend="triton", **options)
    weights = torch.randn(out.shape, dtype=torch.float64)
    (out.to(torch.float64) * weights).sum().backward()

    ref_inputs = [t.detach().to(torch.float64).requires_grad_() for t in inputs]
    (bilinear_pool_reference(*ref_inputs, **options) * weights).sum().backward()
    for ours, ref in zip(inputs, ref_inputs, strict=True):
        assert ours.grad.dtype == dtype
        scale = ref.grad.abs().max().item()
        torch.testing.assert_close(
            ours.grad.to(torch.float64),
            ref.grad,
            atol=GRAD_TOLERANCES[dtype] * scale + 1e-12,
            rtol=0.0,
        )


def test_only_one_stream_needs_a_gradient():
    x, y = make_inputs(SHAPES[4], torch.float32)
    y.requires_grad_()
    bilinear_pool(x, y, backend="triton").sum().backward()
    y_ref = y.detach().to(torch.float64).requires_grad_()
    bilinear_pool_reference(x, y_ref).sum().backward()
    assert x.grad is None
    torch.testing.assert_close(y.grad.to(torch.float64), y_ref.grad, atol=1e-6, rtol=1e-4)


def test_descriptor_is_exactly_symmetric_and_deterministic():
    x, _ = make_inputs(SHAPES[1], torch.float32)
    first = bilinear_pool(x, backend="triton").view(1, 70, 70)
    second = bilinear_pool(x, backend="triton").view(1, 70, 70)
    assert torch.equal(first, first.transpose(1, 2))
    assert torch.equal(first, second)


def test_launcher_returns_the_norm_before_normalization():
    from bcnn_triton.kernels import bilinear_pool_fwd

    x, _ = make_inputs(SHAPES[0], torch.float32)
    out, norm = bilinear_pool_fwd(x.flatten(2))
    unnormalized = bilinear_pool_reference(x, normalize=False)
    torch.testing.assert_close(norm.to(torch.float64), unnormalized.norm(dim=1), rtol=1e-6, atol=0)
    assert norm.dtype == torch.float32
    torch.testing.assert_close(
        out.to(torch.float64), bilinear_pool_reference(x), **TOLERANCES[torch.float32]
    )


def test_float16_gram_beyond_float16_range():
    x = (300 + 10 * torch.rand(2, 40, 6, 6)).to(torch.float16)
    for options in (dict(), dict(signed_sqrt=False), dict(normalize=False)):
        out = bilinear_pool(x, backend="triton", **options)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(
            out.to(torch.float64),
            bilinear_pool_reference(x, **options),
            **TOLERANCES[torch.float16],
        )


def test_nan_stays_in_its_sample():
    x = feature_like(3, 40, 4, 4)
    poisoned = x.clone()
    poisoned[1, 2, 0, 3] = float("nan")
    out = bilinear_pool(poisoned, backend="triton")
    assert torch.isnan(out[1]).all()
    torch.testing.assert_close(out[[0, 2]], bilinear_pool(x, backend="triton")[[0, 2]])


def test_all_zero_input_has_zero_gradient():
    x = torch.zeros(2, 40, 3, 3, requires_grad=True)
    out = bilinear_pool(x, backend="triton")
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_expanded_gradient_is_read_through_its_strides():
    # out.sum() sends back a stride-0 gradient of ones.
    x, _ = make_inputs(SHAPES[0], torch.float32)
    x.requires_grad_()
    bilinear_pool(x, backend="triton", triu=True).sum().backward()
    x_ref = x.detach().to(torch.float64).requires_grad_()
    bilinear_pool_reference(x_ref, triu=True).sum().backward()
    torch.testing.assert_close(x.grad.to(torch.float64), x_ref.grad, atol=1e-6, rtol=1e-4)


def test_opcheck_on_the_triton_path():
    x = feature_like(2, 40, 9).requires_grad_()
    args = (x, None, True, True, 1e-10, False, "triton")
    torch.library.opcheck(torch.ops.bcnn_triton.bilinear_pool.default, args)
