"""The Triton kernels on CPU tensors through the interpreter (TRITON_INTERPRET=1).

The interpreter checks the arithmetic, masking and indexing of the kernels — not races, TF32
or bfloat16, which only a GPU shows (see test_kernel_bilinear_pool_gpu.py). Every buffer the
launchers allocate starts out as NaN (tests/kernels/conftest.py), so a missing or unmasked store
cannot pass unnoticed.
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
    # centred: eps away from the kink of the square root at the near-zero covariances
    dict(center=True, eps=1e-3),
    dict(center=True, signed_sqrt=False, normalize=False, triu=True),  # iSQRT-COV's input
]
OPTION_IDS = ["default", "triu", "no-sqrt", "no-norm", "gram-only-triu", "center", "cov-triu"]
TOLERANCES = {
    torch.float32: dict(atol=1e-6, rtol=1e-5),
    torch.float16: dict(atol=1e-5, rtol=2e-3),
}
GRAD_TOLERANCES = {torch.float32: 2e-5, torch.float16: 1e-2}


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
    args = (x, None, True, True, 1e-10, False, False, "triton")
    torch.library.opcheck(torch.ops.bcnn_triton.bilinear_pool.default, args)


# ------------------------------------------------------- normalization strategies and centring


@pytest.mark.parametrize("strategy", ["stage", "recompute"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    "options",
    [dict(), dict(triu=True), dict(center=True, eps=1e-3)],
    ids=["default", "triu", "center"],
)
def test_both_normalization_strategies_match_reference(strategy, dtype, options):
    from bcnn_triton.kernels import bilinear_pool_fwd

    x, _ = make_inputs(SHAPES[0], dtype)
    out, norm = bilinear_pool_fwd(x.flatten(2), norm_strategy=strategy, **options)
    expected = bilinear_pool_reference(x, **options)
    torch.testing.assert_close(out.to(torch.float64), expected, **TOLERANCES[dtype])
    unnormalized = bilinear_pool_reference(x, normalize=False, **options)
    torch.testing.assert_close(norm.to(torch.float64), unnormalized.norm(dim=1), rtol=1e-5, atol=0)


@pytest.mark.parametrize("strategy", ["stage", "recompute"])
def test_nan_stays_in_its_sample_with_either_strategy(strategy):
    from bcnn_triton.kernels import bilinear_pool_fwd

    x = feature_like(3, 40, 16).to(torch.float16)
    poisoned = x.clone()
    poisoned[1, 2, 3] = float("nan")
    out, norm = bilinear_pool_fwd(poisoned, norm_strategy=strategy)
    assert torch.isnan(out[1]).all() and torch.isnan(norm[1])
    clean, _ = bilinear_pool_fwd(x, norm_strategy=strategy)
    assert torch.equal(out[[0, 2]], clean[[0, 2]])


def _centring_error(x, backend, **options):
    out = bilinear_pool(x, center=True, backend=backend, **options)
    return (out.to(torch.float64) - bilinear_pool_reference(x, center=True, **options)).abs().max()


# (dtype, mean / spread, allowed error beyond twice the torch path's, relative to the result)
CENTRING_CASES = [
    (torch.float32, 0.0, 1e-7),  # ReLU-like
    (torch.float32, 1.0, 1e-7),
    (torch.float32, 100.0, 1e-7),
    (torch.float16, 0.0, 1e-5),
    (torch.float16, 1.0, 1e-5),
    # Shifted channels are centred in float32 and rounded to float16: a few float16 ulps.
    (torch.float16, 100.0, 2.0**-9),
]


@pytest.mark.parametrize(("dtype", "mean_over_spread", "floor"), CENTRING_CASES)
def test_centring_is_as_precise_as_the_torch_path(dtype, mean_over_spread, floor):
    """A rank-1 correction alone would cancel catastrophically at 100× (float32 and float16);
    rounding every centred value to float16 would miss twice the torch path's error at 0 and 1."""
    spread = torch.randn(2, 40, 50, dtype=torch.float64)
    base = torch.relu(spread) if mean_over_spread == 0 else spread
    x = (base + mean_over_spread * (1 + torch.rand(2, 40, 1, dtype=torch.float64))).to(dtype)
    for options in (dict(eps=1e-3), dict(signed_sqrt=False, normalize=False)):
        ours = _centring_error(x, "triton", **options)
        torch_path = _centring_error(x, "torch", **options)
        scale = bilinear_pool_reference(x, center=True, **options).abs().max()
        assert ours <= 2 * torch_path + floor * scale, (options, ours.item(), torch_path.item())


# ------------------------------------------------------------------------ float16 gradients


def test_float16_gradients_of_realistic_size_do_not_underflow():
    """A classifier's gradient on a 1600-d descriptor is about 1e-4 per entry; the backward's
    per-sample scale 1/(2r²L) must not meet it in float16 (it flushed dX to zero once)."""
    x = feature_like(2, 40, 7, 7, dtype=torch.float16).requires_grad_()
    weights = 1e-4 * torch.randn(2, 1600, dtype=torch.float64)
    (bilinear_pool(x, backend="triton").to(torch.float64) * weights).sum().backward()
    x_ref = x.detach().to(torch.float64).requires_grad_()
    (bilinear_pool_reference(x_ref) * weights).sum().backward()
    x_torch = x.detach().clone().requires_grad_()
    (bilinear_pool(x_torch, backend="torch").to(torch.float64) * weights).sum().backward()
    ours = (x.grad.to(torch.float64) - x_ref.grad).abs().max()
    torch_path = (x_torch.grad.to(torch.float64) - x_ref.grad).abs().max()
    assert x.grad.abs().max() > 0.5 * x_ref.grad.abs().max()
    assert ours <= 2 * torch_path + 1e-3 * x_ref.grad.abs().max()


# ------------------------------------------------------------- launches, guard, row alignment


@pytest.fixture
def launches(monkeypatch):
    """Names of the Triton kernels launched while the test runs, in order."""
    from triton.runtime.interpreter import InterpretedFunction

    names = []
    run = InterpretedFunction.run

    def counting_run(self, *args, **kwargs):
        names.append(self.fn.__name__)
        return run(self, *args, **kwargs)

    monkeypatch.setattr(InterpretedFunction, "run", counting_run)
    return names


@pytest.mark.parametrize(
    ("dtype", "options", "forward", "backward"),
    [
        (torch.float32, dict(), 2, 3),  # Gram + normalize; ⟨z,g⟩ + M + GEMM
        (torch.float16, dict(), 2, 3),  # Σs² pass + normalized pass
        (torch.float32, dict(normalize=False), 1, 2),
        (torch.float32, dict(center=True), 3, 4),  # + channel shifts
    ],
)
def test_launches_per_call(launches, dtype, options, forward, backward):
    x = feature_like(2, 48, 64, dtype=dtype).requires_grad_()
    out = bilinear_pool(x, backend="triton", **options)
    assert len(launches) == forward, launches
    launches.clear()
    out.sum().backward()
    assert len(launches) == backward, launches


def test_every_launch_runs_under_the_input_device_guard(monkeypatch):
    from bcnn_triton.kernels import bilinear_bwd, bilinear_fwd, common

    guarded = []

    def recording_guard(tensor):
        guarded.append(tensor.device)
        return common.device_guard(tensor)

    monkeypatch.setattr(bilinear_fwd, "device_guard", recording_guard)
    monkeypatch.setattr(bilinear_bwd, "device_guard", recording_guard)
    x = feature_like(2, 40, 9).requires_grad_()
    bilinear_pool(x, backend="triton").sum().backward()
    assert guarded == [x.device, x.device]


def test_device_guard_switches_to_the_tensor_device(monkeypatch):
    from bcnn_triton.kernels.common import device_guard

    entered = []

    class FakeDeviceContext:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *exc):
            return False

    class FakeCudaTensor:
        is_cuda = True
        device = torch.device("cuda", 1)

    monkeypatch.setattr(torch.cuda, "device", FakeDeviceContext)
    with device_guard(FakeCudaTensor()):
        pass
    assert entered == [torch.device("cuda", 1)]
    with device_guard(torch.zeros(1)):  # CPU: nothing to switch
        pass
    assert entered == [torch.device("cuda", 1)]


@pytest.mark.parametrize(
    ("dtype", "shape", "make"),
    [
        (torch.float16, (2, 5, 13), lambda t: t),  # 26-byte rows
        (torch.float32, (2, 5, 13), lambda t: t),  # 52-byte rows
        (torch.float16, (2, 6, 3, 3), lambda t: t.to(memory_format=torch.channels_last)),
        (torch.float32, (2, 5, 17), lambda t: t[:, :, 1:]),  # offset start
        (torch.float32, (2, 5, 12), lambda t: t),  # 48-byte rows, no hint of 16 elements
    ],
    ids=["fp16-L13", "fp32-L13", "fp16-channels-last-C6", "fp32-offset", "fp32-L12"],
)
def test_aligned_rows_copies_misaligned_maps_with_equal_values(dtype, shape, make):
    from bcnn_triton.kernels.common import aligned_rows

    t = make(torch.randn(*shape).to(dtype)).flatten(2)
    aligned = aligned_rows(t)
    assert torch.equal(aligned, t)
    inner = 2 if aligned.stride(2) == 1 else 1
    outer = 3 - inner
    assert aligned.stride(inner) == 1
    assert aligned.stride(outer) % 16 == 0  # the launch's divisibility hint
    assert aligned.data_ptr() % 16 == 0


def test_aligned_rows_keeps_aligned_maps():
    from bcnn_triton.kernels.common import aligned_rows

    t = torch.randn(2, 5, 16)
    assert aligned_rows(t) is t


@pytest.mark.parametrize("align_rows", [True, False])
def test_misaligned_rows_give_the_same_gradients_either_way(align_rows):
    from bcnn_triton.kernels import bilinear_pool_bwd, bilinear_pool_fwd

    x = feature_like(2, 40, 13).to(torch.float16)
    out, norm = bilinear_pool_fwd(x, center=True, align_rows=align_rows)
    grad = torch.randn_like(out)
    dx, _ = bilinear_pool_bwd(grad, x, None, out, norm, center=True, align_rows=align_rows)
    reference_out, reference_norm = bilinear_pool_fwd(x, center=True)
    reference_dx, _ = bilinear_pool_bwd(grad, x, None, reference_out, reference_norm, center=True)
    assert torch.equal(out, reference_out) and torch.equal(dx, reference_dx)


def test_shared_memory_pruner_keeps_what_fits_and_always_one(monkeypatch):
    import triton
    from bcnn_triton.kernels import common

    configs = [triton.Config({"SIZE": size}) for size in (96, 200, 40, 150)]
    archs = []

    def estimate(config, args, arch):
        archs.append(arch)
        return config.kwargs["SIZE"] * 1024

    prune = common.shared_memory_pruner(estimate, "x")
    x = torch.zeros(1)
    assert prune(configs, {"x": x}) == configs  # CPU: no limit to apply
    monkeypatch.setattr(common, "_max_shared_memory", lambda device: 99 * 1024)
    monkeypatch.setattr(common, "gpu_arch", lambda device: "sm_86")
    assert [c.kwargs["SIZE"] for c in prune(configs, {"x": x})] == [96, 40]
    assert set(archs) == {"sm_86"}  # the estimate is asked for the launch's target
    monkeypatch.setattr(common, "_max_shared_memory", lambda device: 8 * 1024)
    assert [c.kwargs["SIZE"] for c in prune(configs, {"x": x})] == [40]


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("sm_80", 2 * 32768),  # cp.async: one stage fewer in shared memory
        ("sm_86", 2 * 32768),
        ("sm_120", 2 * 32768),
        ("gfx942", 2 * 32768),
        ("sm_90", 3 * 32768),
        ("sm_100", 3 * 32768 + 1024),  # barriers
        ("gfx950", 3 * 32768 + 3 * 32768 // 8),  # padded 16-bit rows
        (None, 3 * 32768 + 1024 + 3 * 32768 // 8),  # unknown: the most of all
    ],
)
def test_pipeline_shared_memory_follows_the_target(arch, expected):
    from bcnn_triton.kernels.common import pipeline_shared_memory

    assert pipeline_shared_memory(3, 32768, arch, element_size=2) == expected
    # Operands shifted in registers keep every stage in shared memory on sm_8x, not on CDNA.
    shifted = pipeline_shared_memory(3, 32768, arch, through_registers=True)
    if arch == "sm_80":
        assert shifted == 3 * 32768
    if arch == "gfx942":
        assert shifted == 2 * 32768
