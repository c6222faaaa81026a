"""bilinear_pool on the torch path: values, gradients, registration, compile and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from reference import bilinear_pool_reference, feature_like, seed_bilinear_pool

import bcnn_triton
from bcnn_triton import BilinearPool, bilinear_pool

# (N, Cx, Cy or None, spatial): spatial is (H, W) for 4-d inputs or L for 3-d ones.
SHAPES = [
    (2, 16, None, (7, 7)),
    (3, 37, None, (5, 11)),  # primes
    (1, 1, None, (1, 1)),  # N = C = L = 1
    (2, 5, None, (1, 1)),  # one location
    (1, 64, None, 30),  # (N, C, L) input
    (2, 131, None, (3, 5)),  # odd C above the torch path's threshold for a symmetric Gram
    (2, 23, 9, (4, 6)),  # two streams, Cx != Cy
    (1, 1, 3, 13),  # two streams, a single channel in x
]
SHAPE_IDS = ["16x7x7", "37x5x11", "1x1x1", "5x1x1", "64xL30", "131x3x5", "23+9x4x6", "1+3xL13"]

# Output tolerance per dtype: the computation runs in float32 (float64) and rounds once.
TOLERANCES = {
    torch.float64: dict(atol=1e-12, rtol=1e-10),
    torch.float32: dict(atol=1e-6, rtol=1e-5),
    torch.float16: dict(atol=1e-5, rtol=2e-3),
    torch.bfloat16: dict(atol=1e-4, rtol=1.6e-2),
}
# Gradient tolerance relative to the largest entry: low-precision z feeds the backward.
GRAD_TOLERANCES = {
    torch.float64: 1e-10,
    torch.float32: 2e-5,
    torch.float16: 1e-2,
    torch.bfloat16: 6e-2,
}
OPTIONS = [
    dict(),
    dict(signed_sqrt=False),
    dict(normalize=False),
    dict(signed_sqrt=False, normalize=False),
    # covariance; eps keeps the square root away from its kink at near-zero covariances
    dict(center=True, eps=1e-3),
]
OPTION_IDS = ["default", "no-sqrt", "no-norm", "gram-only", "center"]


def make_inputs(shape, dtype=torch.float32, layout="contiguous", dead=0.0):
    num, channels_x, channels_y, spatial = shape
    spatial = tuple(spatial) if isinstance(spatial, tuple) else (spatial,)

    def one(channels):
        t = feature_like(num, channels, *spatial, dtype=dtype, dead=dead)
        if layout == "channels_last" and t.dim() == 4:
            t = t.to(memory_format=torch.channels_last)
        elif layout == "strided":
            # every other channel of a wider map: no dense layout, strides read in place
            wide = feature_like(num, 2 * channels, *spatial, dtype=dtype, dead=dead)
            t = wide[:, ::2]
        return t

    return one(channels_x), (None if channels_y is None else one(channels_y))


def assert_close_scaled(actual, expected, rel):
    """|actual − expected| <= rel · max|expected| + 1e-12 (the floor for gradients that are 0
    up to float64 rounding, such as those of a one-entry normalized descriptor)."""
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(
        actual.to(torch.float64), expected, atol=rel * scale + 1e-12, rtol=0.0
    )


@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_forward_matches_reference(shape, dtype, options):
    x, y = make_inputs(shape, dtype)
    out = bilinear_pool(x, y, backend="torch", **options)
    expected = bilinear_pool_reference(x, y, **options)
    assert out.dtype == dtype
    assert out.shape == expected.shape
    torch.testing.assert_close(out.to(torch.float64), expected, **TOLERANCES[dtype])


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("shape", SHAPES[:2] + SHAPES[5:7], ids=SHAPE_IDS[:2] + SHAPE_IDS[5:7])
def test_non_contiguous_inputs(shape, layout):
    x, y = make_inputs(shape, torch.float32, layout)
    assert not x.is_contiguous()
    out = bilinear_pool(x, y, backend="torch")
    torch.testing.assert_close(
        out.to(torch.float64), bilinear_pool_reference(x, y), **TOLERANCES[torch.float32]
    )


@pytest.mark.parametrize("shape", [(2, 16, None, (7, 7)), (3, 37, None, (5, 11))])
def test_triu_keeps_norms_and_dot_products(shape):
    x, _ = make_inputs(shape, torch.float64)
    full = bilinear_pool(x, normalize=False, backend="torch")
    upper = bilinear_pool(x, normalize=False, triu=True, backend="torch")
    channels = shape[1]
    assert upper.shape == (shape[0], channels * (channels + 1) // 2)
    torch.testing.assert_close(upper.norm(dim=1), full.norm(dim=1))
    torch.testing.assert_close(upper @ upper.T, full @ full.T)
    torch.testing.assert_close(
        bilinear_pool(x, triu=True, backend="torch"), bilinear_pool_reference(x, triu=True)
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_defaults_equal_the_seed_formula(dtype):
    """The seed's bmm / (28·28), sign·sqrt(|·| + 1e-10), F.normalize — to rounding."""
    x = feature_like(2, 512, 28, 28, dtype=dtype)
    out = bilinear_pool(x)
    torch.testing.assert_close(out, seed_bilinear_pool(x), **TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_centring_a_mean_far_above_the_spread(dtype):
    """Means 100× the spread: the mean is taken out of every value before the product."""
    x = (torch.randn(2, 20, 40, dtype=torch.float64) + 100.0).to(dtype)
    for options in (dict(signed_sqrt=False, normalize=False), dict(eps=1e-3)):
        out = bilinear_pool(x, center=True, **options)
        expected = bilinear_pool_reference(x, center=True, **options)
        assert_close_scaled(out, expected, 1e-5 if dtype == torch.float32 else 1e-12)


def test_centred_streams_each_use_their_own_mean():
    x, y = feature_like(2, 5, 30) + 3.0, feature_like(2, 4, 30) - 7.0
    out = bilinear_pool(x, y, center=True, signed_sqrt=False, normalize=False)
    xc, yc = x - x.mean(2, keepdim=True), y - y.mean(2, keepdim=True)
    torch.testing.assert_close(out, (xc @ yc.transpose(1, 2) / 30).flatten(1))


def test_float16_gram_beyond_float16_range_stays_finite():
    # Entries near 300 give Gram values near 9e4 > 65504, the float16 maximum.
    x = (300 + 10 * torch.rand(2, 8, 5, 5)).to(torch.float16)
    for options in OPTIONS[:4]:
        out = bilinear_pool(x, **options)
        expected = bilinear_pool_reference(x, **options)
        assert torch.isfinite(out).all() or options == dict(signed_sqrt=False, normalize=False)
        if torch.isfinite(expected.to(torch.float16)).all():
            torch.testing.assert_close(out.to(torch.float64), expected, **TOLERANCES[torch.float16])


@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_gradients_match_reference(shape, dtype, options):
    # A quarter of dead channels: exact zeros in G, where the gradient must be 0, not 0/0.
    x, y = make_inputs(shape, dtype, dead=0.25)
    grad = torch.randn(shape[0], 1, dtype=torch.float64)
    inputs = [x] if y is None else [x, y]
    inputs = [t.detach().requires_grad_() for t in inputs]
    out = bilinear_pool(*inputs, backend="torch", **options)
    weights = torch.randn(out.shape, dtype=torch.float64) * grad
    (out.to(torch.float64) * weights).sum().backward()

    ref_inputs = [t.detach().to(torch.float64).requires_grad_() for t in inputs]
    (bilinear_pool_reference(*ref_inputs, **options) * weights).sum().backward()
    for ours, ref in zip(inputs, ref_inputs, strict=True):
        assert ours.grad.dtype == dtype
        assert ours.grad.shape == ours.shape
        assert_close_scaled(ours.grad, ref.grad, GRAD_TOLERANCES[dtype])


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_gradients_of_non_contiguous_inputs(layout):
    x, y = make_inputs((2, 5, 3, (3, 2)), torch.float64, layout)
    for a, b in ((x, None), (x, y)):
        a = a.detach().requires_grad_()
        b = None if b is None else b.detach().requires_grad_()
        assert torch.autograd.gradcheck(lambda a, b: bilinear_pool(a, b), (a, b))


def _gradcheck_inputs(shape, generator):
    num, channels_x, channels_y, spatial = shape
    x = generator(num, channels_x, spatial).requires_grad_()
    y = None if channels_y is None else generator(num, channels_y, spatial).requires_grad_()
    return x, y


@pytest.mark.parametrize("center", [False, True], ids=["", "center"])
@pytest.mark.parametrize("options", OPTIONS[:4], ids=OPTION_IDS[:4])
@pytest.mark.parametrize(
    ("shape", "triu"),
    [
        ((2, 5, None, 4), False),
        ((2, 5, None, 4), True),
        ((1, 3, 4, 6), False),  # two streams
        ((2, 1, None, 1), False),  # one channel, one location
        ((2, 1, None, 1), True),
    ],
)
def test_gradcheck_float64(shape, triu, options, center):
    # Positive features at the default eps, and signed ones with eps away from the kink at 0;
    # centred ones are signed.
    options = dict(options, triu=triu, center=center)
    if not center:
        x, y = _gradcheck_inputs(shape, lambda *s: feature_like(*s, dtype=torch.float64))
        assert torch.autograd.gradcheck(lambda a, b: bilinear_pool(a, b, **options), (x, y))
    x, y = _gradcheck_inputs(shape, lambda *s: torch.randn(*s, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda a, b: bilinear_pool(a, b, eps=1e-2, **options), (x, y))


def test_all_zero_input_has_finite_zero_gradient():
    x = torch.zeros(2, 6, 3, 3, requires_grad=True)
    out = bilinear_pool(x)
    assert torch.equal(out, torch.zeros(2, 36))
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_nan_stays_in_its_sample():
    x = feature_like(3, 7, 4, 4, dtype=torch.float64).requires_grad_()
    poisoned = x.detach().clone()
    poisoned[1, 2, 0, 3] = float("nan")
    poisoned[2, 0, 1, 1] = float("inf")
    poisoned.requires_grad_()
    weights = torch.randn(3, 49, dtype=torch.float64)
    clean_out = bilinear_pool(x)
    out = bilinear_pool(poisoned)
    assert torch.equal(out[0], clean_out[0])
    assert torch.isnan(out[1]).all()
    assert torch.isnan(out[2]).any()
    torch.testing.assert_close(out, bilinear_pool_reference(poisoned), equal_nan=True)
    (out * weights).sum().backward()
    (clean_out * weights).sum().backward()
    assert torch.equal(poisoned.grad[0], x.grad[0])


@pytest.mark.parametrize("y_channels", [None, 3])
def test_empty_batch(y_channels):
    x = torch.rand(0, 5, 2, 2, requires_grad=True)
    y = None if y_channels is None else torch.rand(0, y_channels, 4, requires_grad=True)
    out = bilinear_pool(x, y)
    assert out.shape == (0, 5 * (y_channels or 5))
    out.sum().backward()
    assert x.grad.shape == x.shape


def test_y_is_x_is_the_single_stream_case():
    x = feature_like(2, 6, 3, 3)
    torch.testing.assert_close(bilinear_pool(x, x), bilinear_pool(x))
    assert bilinear_pool(x, x, triu=True).shape == (2, 21)


def test_backward_keeps_only_inputs_output_and_norm():
    x = feature_like(4, 32, 7, 7).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = bilinear_pool(x)
    saved_bytes = sum(t.numel() * t.element_size() for t in saved)
    kept = x.numel() * x.element_size() + out.numel() * out.element_size() + 4 * 4
    assert saved_bytes == kept


# ---------------------------------------------------------------- registration and compile


def _op_samples():
    samples = []
    for channels_y, triu in ((None, False), (None, True), (4, False)):
        x = feature_like(2, 6, 5).requires_grad_()
        y = None if channels_y is None else feature_like(2, channels_y, 5).requires_grad_()
        for signed_sqrt, normalize in ((True, True), (False, True), (True, False)):
            for center, backend in ((False, "torch"), (True, "auto")):
                samples.append((x, y, signed_sqrt, normalize, 1e-10, triu, center, backend))
    return samples


@pytest.mark.parametrize("args", _op_samples())
def test_opcheck_forward(args):
    torch.library.opcheck(torch.ops.bcnn_triton.bilinear_pool.default, args)


@pytest.mark.parametrize("two_streams", [False, True])
def test_opcheck_backward(two_streams):
    x = feature_like(2, 6, 5)
    y = feature_like(2, 4, 5) if two_streams else None
    out, norm = torch.ops.bcnn_triton.bilinear_pool(
        x, y, True, True, 1e-10, False, two_streams, "auto"
    )
    grad = torch.randn_like(out)
    args = (grad, x, y, out, norm, True, True, False, two_streams, "auto", True, True)
    torch.library.opcheck(torch.ops.bcnn_triton.bilinear_pool_backward.default, args)


class _TinyBCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.pool = BilinearPool()
        self.fc = torch.nn.Linear(64, 5)

    def forward(self, images):
        return self.fc(self.pool(torch.relu(self.conv(images))))


@pytest.mark.slow
def test_compile_fullgraph_matches_eager():
    torch.compiler.reset()
    model = _TinyBCNN()
    images = torch.randn(3, 3, 9, 9)
    compiled = torch.compile(model, fullgraph=True)
    eager_logits = model(images)
    compiled_logits = compiled(images)
    torch.testing.assert_close(compiled_logits, eager_logits)
    eager_logits.sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled(images).sum().backward()
    for eager_grad, p in zip(eager_grads, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, eager_grad)


@pytest.mark.slow
def test_compile_dynamic_batch_does_not_recompile():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch.compiler.reset()
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(lambda x: bilinear_pool(x).sum(1), backend=counter, dynamic=True)
    x = feature_like(2, 8, 4, 4)
    torch.testing.assert_close(compiled(x), bilinear_pool(x).sum(1))
    compilations = counter.frame_count
    for batch in (3, 7):
        x = feature_like(batch, 8, 4, 4)
        torch.testing.assert_close(compiled(x), bilinear_pool(x).sum(1))
    assert counter.frame_count == compilations


# --------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: bilinear_pool(torch.rand(2, 3)),
            ValueError,
            r"x must have shape .* 2-d shape \(2, 3\)",
        ),
        (lambda: bilinear_pool(torch.rand(1, 2, 3, 4, 5)), ValueError, r"x .* 5-d"),
        (lambda: bilinear_pool([1.0]), TypeError, "x must be a torch.Tensor; got list"),
        (
            lambda: bilinear_pool(torch.ones(1, 2, 3, dtype=torch.int64)),
            TypeError,
            "x .* torch.int64",
        ),
        (lambda: bilinear_pool(torch.ones(1, 2, 3, dtype=torch.bool)), TypeError, "torch.bool"),
        (lambda: bilinear_pool(torch.ones(1, 2, 3, dtype=torch.complex64)), TypeError, "complex64"),
        (
            lambda: bilinear_pool(torch.rand(1, 2, 3), torch.rand(1, 2, 3, dtype=torch.float64)),
            TypeError,
            "one dtype",
        ),
        (lambda: bilinear_pool(torch.rand(1, 2, 3), torch.rand(2, 2, 3)), ValueError, r"N=1.*N=2"),
        (lambda: bilinear_pool(torch.rand(1, 2, 3), torch.rand(1, 2, 4)), ValueError, r"L=3.*L=4"),
        (
            lambda: bilinear_pool(torch.rand(1, 2, 6), torch.rand(1, 2, 2, 2)),
            ValueError,
            r"L=6.*L=4",
        ),
        (lambda: bilinear_pool(torch.rand(1, 0, 3)), ValueError, "at least one channel"),
        (lambda: bilinear_pool(torch.rand(1, 2, 0, 4)), ValueError, "one location"),
        (lambda: bilinear_pool(torch.rand(1, 2, 3), torch.rand(1, 0, 3)), ValueError, "y needs"),
        (lambda: bilinear_pool(torch.rand(1, 2, 3), eps=-1e-3), ValueError, "eps must be"),
        (lambda: bilinear_pool(torch.rand(1, 2, 3), eps=math.inf), ValueError, "eps must be"),
        (lambda: bilinear_pool(torch.rand(1, 2, 3), eps="1e-5"), TypeError, "eps must be a float"),
        (
            lambda: bilinear_pool(torch.rand(1, 2, 3), torch.rand(1, 2, 3), triu=True),
            ValueError,
            "triu",
        ),
        (lambda: bilinear_pool(torch.rand(1, 2, 3), backend="cuda"), ValueError, "backend must be"),
        (
            lambda: bilinear_pool(torch.rand(1, 2, 3, dtype=torch.float64), backend="triton"),
            ValueError,
            "float64",
        ),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_x_and_y_on_different_devices(monkeypatch):
    x = torch.rand(1, 2, 3)
    y = torch.rand(1, 2, 3, device="meta")
    with pytest.raises(ValueError, match="one device"):
        bilinear_pool(x, y)


def test_triton_backend_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        bilinear_pool(torch.rand(1, 2, 3), backend="triton")


def test_automatic_backend_on_cpu_is_torch():
    assert bcnn_triton.ops.resolve_backend(None, torch.rand(1, 2, 3)) == "torch"
    assert bcnn_triton.ops.resolve_backend("auto", torch.rand(1, 2, 3)) == "torch"


def test_the_registered_op_resolves_auto_when_it_runs():
    """The backend a graph carries is "auto" unless the caller chose one: an exported or
    compiled graph must not hard-wire the backend of the machine that traced it."""
    x = feature_like(2, 6, 5)
    graph = torch.fx.experimental.proxy_tensor.make_fx(lambda t: bilinear_pool(t))(x)
    calls = [
        n for n in graph.graph.nodes if n.target == torch.ops.bcnn_triton.bilinear_pool.default
    ]
    assert len(calls) == 1 and calls[0].args[-1] == "auto"
    torch.testing.assert_close(graph(x), bilinear_pool(x, backend="torch"))


def _fail_import(monkeypatch, error):
    import builtins

    real_import = builtins.__import__

    def failing_import(name, *args, **kwargs):
        if name == "triton" or name.startswith("triton."):
            raise error
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing_import)
    monkeypatch.delitem(__import__("sys").modules, "triton", raising=False)
    bcnn_triton.ops.triton_available.cache_clear()


def test_triton_is_unavailable_only_when_the_package_is_missing(monkeypatch):
    _fail_import(monkeypatch, ModuleNotFoundError("No module named 'triton'", name="triton"))
    try:
        assert bcnn_triton.ops.triton_available() is False
    finally:
        bcnn_triton.ops.triton_available.cache_clear()


def test_a_broken_triton_install_is_not_silently_ignored(monkeypatch):
    _fail_import(monkeypatch, ImportError("libcuda.so.1: cannot open shared object file"))
    try:
        with pytest.raises(ImportError, match="libcuda"):
            bcnn_triton.ops.triton_available()
    finally:
        bcnn_triton.ops.triton_available.cache_clear()


@pytest.mark.parametrize("center", [False, True])
def test_a_plain_gram_keeps_only_its_input_for_backward(center):
    """Without the square root and the normalization the gradient does not depend on the
    descriptor: a covariance for iSQRT-COV keeps the map alone (8 MB less at N = 32, C = 256)."""
    x = feature_like(4, 32, 7, 7).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = bilinear_pool(x, signed_sqrt=False, normalize=False, center=center)
    assert sum(t.numel() * t.element_size() for t in saved) == x.numel() * x.element_size()
    weights = torch.randn(out.shape, dtype=torch.float64)
    (out.to(torch.float64) * weights).sum().backward()
    x_ref = x.detach().to(torch.float64).requires_grad_()
    options = dict(signed_sqrt=False, normalize=False, center=center)
    (bilinear_pool_reference(x_ref, **options) * weights).sum().backward()
    assert_close_scaled(x.grad, x_ref.grad, GRAD_TOLERANCES[torch.float32])
