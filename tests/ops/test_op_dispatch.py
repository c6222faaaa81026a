"""Dispatch: which backend "auto" picks on each GPU and why, and the fallback of failing kernels.

No GPU is needed: the table is a function of the compile target, and the fallback tests pose
the CPU as an sm_90 GPU (the kernels then run through the interpreter) with a launcher that
fails the way a compile or launch does on a real GPU.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from types import SimpleNamespace

import pytest
import torch
from bcnn_triton.kernels import common
from reference import feature_like, spd_like

from bcnn_triton import bilinear_pool, matrix_sqrt_newton_schulz
from bcnn_triton.ops import dispatch
from bcnn_triton.ops.dispatch import KernelFallbackWarning, auto_support

F16, BF16, F32, F64 = torch.float16, torch.bfloat16, torch.float32, torch.float64


@pytest.mark.parametrize(
    ("arch", "dtype", "tf32", "runs_triton", "reason"),
    [
        ("sm_61", F16, True, False, "below sm_80"),  # P100
        ("sm_70", F16, True, False, "below sm_80"),  # V100: cuBLAS has tensor cores, Triton not
        ("sm_75", F16, True, False, "below sm_80"),  # T4
        ("sm_75", BF16, True, False, "below sm_80"),  # no bfloat16 tensor cores
        ("sm_80", BF16, False, True, "bfloat16 products on tensor cores"),  # A100
        ("sm_80", F32, True, True, "TF32"),
        ("sm_80", F32, False, False, "'highest'"),  # IEEE float32 would be FMA
        ("sm_86", F16, False, True, "float16 products on tensor cores"),  # RTX 30xx
        ("sm_89", BF16, False, True, "tensor cores"),  # RTX 40xx, L4
        ("sm_90", BF16, False, True, "tensor cores"),  # H100
        ("sm_90", F32, False, False, "'highest'"),
        ("sm_100", F16, False, True, "tensor cores"),  # B200
        ("sm_120", F32, True, True, "TF32"),  # RTX 50xx
        ("gfx90a", BF16, False, True, "matrix cores"),  # MI250
        ("gfx90a", F32, True, True, "float32 products"),  # no TF32 there: IEEE MFMA
        ("gfx942", F32, True, True, "xf32"),  # MI300
        ("gfx942", F32, False, True, "float32 products"),
        ("gfx950", F16, False, True, "matrix cores"),  # MI350
        ("gfx1100", F16, False, False, "not among the ROCm targets"),  # RDNA3, not checked
        ("gfx908", BF16, False, False, "not among the ROCm targets"),  # MI100
        ("sm_90", F64, False, False, "no Triton kernel"),
        (None, F16, False, False, "not a GPU tensor"),
    ],
)
def test_auto_runs_triton_only_where_tensor_cores_do_the_work(
    arch, dtype, tf32, runs_triton, reason
):
    runs, why = auto_support(arch, dtype, tf32_allowed=tf32)
    assert runs is runs_triton
    assert reason in why


def test_the_gpu_is_asked_once_per_device_and_rocm_by_its_gfx_name(monkeypatch):
    asked = []

    def properties(index):
        asked.append(index)
        return SimpleNamespace(major=9, minor=4, gcnArchName="gfx942:sramecc+:xnack-")

    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
    monkeypatch.setattr(torch.version, "hip", "6.2.0", raising=False)
    common._arch_of_device.cache_clear()
    try:
        assert common.gpu_arch(torch.device("cuda", 1)) == "gfx942"
        assert common.gpu_arch(torch.device("cuda", 1)) == "gfx942"
        monkeypatch.setattr(torch.version, "hip", None, raising=False)
        assert common.gpu_arch(torch.device("cuda", 0)) == "sm_94"
    finally:
        common._arch_of_device.cache_clear()
    assert asked == [1, 0]
    assert common.gpu_arch(torch.device("cpu")) is None


@pytest.mark.parametrize(
    ("dtype", "arch", "allow_tf32", "expected"),
    [
        (F16, "sm_90", True, "ieee"),  # 16-bit operands: exact products on tensor cores
        (BF16, "gfx90a", True, "ieee"),  # gfx90a refuses "tf32" for any operand
        (F32, "sm_90", True, "tf32"),
        (F32, "sm_90", False, "ieee"),
        (F32, "gfx942", True, "tf32"),
        (F32, "gfx950", True, "ieee"),
    ],
)
def test_dot_precision_is_what_the_target_accepts(dtype, arch, allow_tf32, expected):
    assert common.dot_precision(dtype, arch, allow_tf32) == expected


def test_importing_the_ops_asks_no_gpu():
    code = (
        "import torch\n"
        "def refuse(*args):\n"
        "    raise AssertionError('the GPU was queried')\n"
        "torch.cuda.get_device_properties = refuse\n"
        "import bcnn_triton.ops\n"
        "print(bcnn_triton.ops.bilinear_pool(torch.rand(1, 2, 3)).shape)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "torch.Size([1, 4])"


# ------------------------------------------------------------------------------ fallback


@pytest.fixture
def cpu_as_sm90(monkeypatch):
    """Pose CPU tensors as an sm_90 GPU's, in a process where no kernel has failed yet."""
    monkeypatch.setattr(dispatch, "gpu_arch", lambda device: "sm_90")
    monkeypatch.setattr(dispatch, "_FAILED", {})


def _broken(error: Exception, calls: list):
    def launcher(*args, **kwargs):
        calls.append(1)
        raise error

    return launcher


def _compile_error() -> Exception:
    from triton.runtime.errors import OutOfResources

    return OutOfResources(232448 + 16, 232448, "shared memory")


def _fallbacks(caught) -> list:
    return [w for w in caught if issubclass(w.category, KernelFallbackWarning)]


@pytest.mark.parametrize(
    "error",
    [_compile_error, lambda: RuntimeError("PassManager::run failed")],
    ids=["out-of-resources", "mlir-pass"],
)
def test_a_failing_forward_kernel_warns_once_and_the_torch_path_takes_over(
    cpu_as_sm90, monkeypatch, error
):
    from bcnn_triton.kernels import bilinear_fwd

    calls = []
    monkeypatch.setattr(bilinear_fwd, "bilinear_pool_fwd", _broken(error(), calls))
    x = feature_like(2, 24, 9, dtype=F16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outputs, grads = [], []
        for _ in range(2):
            leaf = x.clone().requires_grad_()
            outputs.append(bilinear_pool(leaf))
            outputs[-1].sum().backward()
            grads.append(leaf.grad)
    leaf = x.clone().requires_grad_()
    expected = bilinear_pool(leaf, backend="torch")
    expected.sum().backward()
    for out, grad in zip(outputs, grads, strict=True):
        assert torch.equal(out, expected) and torch.equal(grad, leaf.grad)
    assert calls == [1], "after the failure the kernel is not tried again"
    (warning,) = _fallbacks(caught)
    message = str(warning.message)
    assert "bilinear_pool forward" in message and "cpu" in message and "float16" in message
    assert type(error()).__name__ in message


def test_a_failing_backward_kernel_falls_back_after_a_triton_forward(cpu_as_sm90, monkeypatch):
    from bcnn_triton.kernels import bilinear_bwd

    monkeypatch.setattr(bilinear_bwd, "bilinear_pool_bwd", _broken(_compile_error(), []))
    x = feature_like(2, 24, 9, dtype=F16).requires_grad_()
    with pytest.warns(KernelFallbackWarning, match="bilinear_pool backward"):
        bilinear_pool(x).sum().backward()
    reference = x.detach().clone().requires_grad_()
    bilinear_pool(reference, backend="torch").sum().backward()
    torch.testing.assert_close(x.grad, reference.grad, atol=1e-4, rtol=1e-2)


def test_backend_triton_raises_what_fails(cpu_as_sm90, monkeypatch):
    from bcnn_triton.kernels import bilinear_fwd

    monkeypatch.setattr(bilinear_fwd, "bilinear_pool_fwd", _broken(_compile_error(), []))
    with warnings.catch_warnings():
        warnings.simplefilter("error", KernelFallbackWarning)
        with pytest.raises(Exception, match="shared memory"):
            bilinear_pool(feature_like(2, 8, 5), backend="triton")
    assert dispatch._FAILED == {}


def test_the_fallback_is_per_device_dtype_and_op(cpu_as_sm90, monkeypatch):
    from bcnn_triton.kernels import bilinear_fwd

    monkeypatch.setattr(bilinear_fwd, "bilinear_pool_fwd", _broken(_compile_error(), []))
    with pytest.warns(KernelFallbackWarning):
        bilinear_pool(feature_like(2, 8, 5, dtype=F16))
    half, bf16 = torch.zeros(1, dtype=F16), torch.zeros(1, dtype=BF16)
    assert dispatch.explain_backend(half).backend == "torch"
    assert "failed here earlier" in dispatch.explain_backend(half).reason
    assert dispatch.explain_backend(bf16).backend == "triton"
    assert dispatch.explain_backend(half, "matrix_sqrt_newton_schulz").backend == "triton"


def test_a_failing_matrix_sqrt_kernel_falls_back(cpu_as_sm90, monkeypatch):
    from bcnn_triton.kernels import newton_schulz

    monkeypatch.setattr(
        newton_schulz, "matrix_sqrt_newton_schulz_fwd", _broken(_compile_error(), [])
    )
    torch.set_float32_matmul_precision("high")
    try:
        a = spd_like(2, 12, 20).requires_grad_()
        with pytest.warns(KernelFallbackWarning, match="matrix_sqrt_newton_schulz forward"):
            out = matrix_sqrt_newton_schulz(a, triu=True)
        out.sum().backward()
    finally:
        torch.set_float32_matmul_precision("highest")
    reference = a.detach().clone().requires_grad_()
    expected = matrix_sqrt_newton_schulz(reference, triu=True, backend="torch")
    expected.sum().backward()
    assert torch.equal(out, expected) and torch.equal(a.grad, reference.grad)


def test_a_failing_matrix_sqrt_backward_iterates_from_the_kernels_saved_matrix(
    cpu_as_sm90, monkeypatch
):
    from bcnn_triton.kernels import newton_schulz

    monkeypatch.setattr(
        newton_schulz, "matrix_sqrt_newton_schulz_bwd", _broken(_compile_error(), [])
    )
    torch.set_float32_matmul_precision("high")
    try:
        a = spd_like(2, 12, 20).requires_grad_()
        with pytest.warns(KernelFallbackWarning, match="matrix_sqrt_newton_schulz backward"):
            matrix_sqrt_newton_schulz(a).sum().backward()
    finally:
        torch.set_float32_matmul_precision("highest")
    reference = a.detach().clone().requires_grad_()
    matrix_sqrt_newton_schulz(reference, backend="torch").sum().backward()
    torch.testing.assert_close(a.grad, reference.grad, atol=1e-4, rtol=1e-3)
