"""Which implementation runs an op call — the Triton kernels or the torch path — and why.

``backend=None``/``"auto"`` runs the Triton kernels only where they compile to tensor-core
(matrix-core) code and fit, as the compile test checks for every target
(tests/kernels/test_kernel_compile_targets.py, bench/compile_report.py):

- NVIDIA, compute capability 8.0 and up (A100, RTX 30xx/40xx/50xx, L4, H100, B200): float16,
  bfloat16, and float32 where torch allows TF32 (``torch.set_float32_matmul_precision("high")``).
  float32 at torch's default "highest" precision stays on the torch path: the kernels would
  multiply with FMA instead of tensor cores, no faster than cuBLAS, and they spill.
- NVIDIA below 8.0 (P100, V100, T4): the torch path. Triton emits no tensor-core instructions
  there (its ``tl.dot`` becomes FMA), while cuBLAS does use the V100's and T4's.
- AMD (ROCm builds of torch report AMD GPUs as CUDA devices): gfx90a (MI250), gfx942 (MI300)
  and gfx950 (MI350), every dtype — all three have bfloat16 and float32 matrix cores; other
  ROCm targets (not compile-checked) the torch path.
- float64, and tensors on any other device: the torch path.

``backend="triton"`` runs the kernels wherever they compile (slower than the torch path below
sm_80) and raises what fails. Under "auto" a kernel that fails to compile or launch does not
fail the call: :func:`run_dispatched` warns once (:class:`KernelFallbackWarning`, naming the
GPU, the kernel and the error) and the torch path runs that op for that device and dtype from
then on. The GPU is asked what it is at the first call on it, never at import.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import torch

from bcnn_triton.kernels.common import gpu_arch, interpreter_enabled, tf32_allowed

__all__ = [
    "BACKENDS",
    "ROCM_TARGETS",
    "Backend",
    "BackendChoice",
    "GpuInfo",
    "KernelFallbackWarning",
    "auto_support",
    "explain_backend",
    "gpu_info",
    "resolve_backend",
    "run_dispatched",
    "triton_available",
]

Backend = Literal["torch", "triton"]
#: The implementations a ``backend`` argument can name; ``None`` or "auto" choose one at run time.
BACKENDS: tuple[str, ...] = ("torch", "triton")

#: The ROCm targets whose compiled kernels the compile test checks.
ROCM_TARGETS: tuple[str, ...] = ("gfx90a", "gfx942", "gfx950")

_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_SHORT_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}

T = TypeVar("T")


class KernelFallbackWarning(RuntimeWarning):
    """A Triton kernel failed under ``backend="auto"``; the torch path runs instead."""


@functools.cache
def triton_available() -> bool:
    """Whether the Triton kernels can run here: False only where the ``triton`` package is not
    installed. Any other import error — a broken Triton install, an error in our kernels —
    propagates instead of silently sending CUDA tensors down the torch path."""
    try:
        import triton  # noqa: F401
    except ModuleNotFoundError as error:
        if error.name == "triton":
            return False
        raise
    from bcnn_triton.kernels import bilinear_bwd, bilinear_fwd  # noqa: F401

    return True


def _nvidia_capability(arch: str) -> tuple[int, int]:
    """ "sm_86" → (8, 6), "sm_100" → (10, 0)."""
    digits = arch.removeprefix("sm_")
    return int(digits[:-1]), int(digits[-1])


@functools.cache  # asked at every call of an op: the answer, reason included, is computed once
def auto_support(arch: str | None, dtype: torch.dtype, *, tf32_allowed: bool) -> tuple[bool, str]:
    """Whether ``backend="auto"`` runs the Triton kernels for ``dtype`` operands on the GPU
    target ``arch`` ("sm_90", "gfx942"; None: not a GPU), and the reason, as a sentence.
    ``tf32_allowed``: torch's float32 matmul precision allows TF32."""
    if dtype not in _TRITON_DTYPES:
        return False, f"{dtype} has no Triton kernel (float16, bfloat16 and float32 do)"
    name = _SHORT_NAMES[dtype]
    if arch is None:
        return False, "not a GPU tensor: the Triton kernels run on GPUs"
    if arch.startswith("gfx"):
        if arch not in ROCM_TARGETS:
            return False, (
                f"{arch} is not among the ROCm targets whose compiled kernels are checked "
                f"({', '.join(ROCM_TARGETS)})"
            )
        kind = "xf32" if dtype == torch.float32 and tf32_allowed and arch == "gfx942" else name
        return True, f"{arch}: {kind} products on matrix cores (MFMA)"
    if _nvidia_capability(arch) < (8, 0):
        return False, (
            f"{arch}: below sm_80 Triton emits no tensor-core instructions (tl.dot becomes FMA), "
            "so torch's cuBLAS is faster; backend='triton' forces the kernels"
        )
    if dtype == torch.float32 and not tf32_allowed:
        return False, (
            f"{arch}: float32 at torch's 'highest' matmul precision would multiply with FMA, not "
            "tensor cores; torch.set_float32_matmul_precision('high') lets the kernels use TF32"
        )
    kind = "TF32" if dtype == torch.float32 else name
    return True, f"{arch}: {kind} products on tensor cores"


@dataclass(frozen=True)
class GpuInfo:
    """What a GPU is: its name, compile target ("sm_90", "gfx942"), shared memory a block may
    use (bytes), multiprocessors and memory (bytes)."""

    name: str
    arch: str
    shared_memory: int
    multiprocessors: int
    total_memory: int


@functools.cache
def _gpu_info_of(index: int) -> GpuInfo:
    properties = torch.cuda.get_device_properties(index)
    shared = getattr(properties, "shared_memory_per_block_optin", 0)
    return GpuInfo(
        name=properties.name,
        arch=gpu_arch(torch.device("cuda", index)),
        shared_memory=int(shared),
        multiprocessors=properties.multi_processor_count,
        total_memory=properties.total_memory,
    )


def gpu_info(device: torch.device) -> GpuInfo | None:
    """The GPU behind a CUDA (or ROCm) device, asked once per device; None for other devices."""
    if device.type != "cuda":
        return None
    return _gpu_info_of(device.index if device.index is not None else torch.cuda.current_device())


@dataclass(frozen=True)
class BackendChoice:
    """The backend ``"auto"`` picks for a call, and why."""

    backend: Backend
    reason: str


#: (device, dtype, op) whose kernel failed under "auto", and the failure.
_FAILED: dict[tuple[str, torch.dtype, str], str] = {}


def explain_backend(x: torch.Tensor, op: str = "bilinear_pool") -> BackendChoice:
    """The backend ``"auto"`` picks for ``op`` on tensors like ``x``, and why."""
    failure = _FAILED.get((str(x.device), x.dtype, op))
    if failure is not None:
        return BackendChoice("torch", f"the Triton kernel failed here earlier ({failure})")
    supported, reason = auto_support(gpu_arch(x.device), x.dtype, tf32_allowed=tf32_allowed())
    if supported and not triton_available():
        return BackendChoice("torch", "the triton package is not installed")
    return BackendChoice("triton" if supported else "torch", reason)


def resolve_backend(backend: str | None, x: torch.Tensor, op: str = "bilinear_pool") -> Backend:
    """The backend that will run ``op`` for ``x``.

    ``None`` and ``"auto"`` choose by GPU, dtype and earlier failures (:func:`explain_backend`).
    Raises ValueError for an unknown name, and for ``"triton"`` where it cannot run (no
    Triton, float64, or CPU tensors without ``TRITON_INTERPRET=1``).
    """
    if backend == "torch":
        return "torch"
    if backend in (None, "auto"):
        return explain_backend(x, op).backend
    if not triton_available():
        raise ValueError("backend='triton' needs the triton package, which cannot be imported")
    if x.dtype not in _TRITON_DTYPES:
        raise ValueError(
            f"backend='triton' supports float16, bfloat16 and float32; got x of dtype {x.dtype}"
        )
    if not x.is_cuda and not interpreter_enabled():
        raise ValueError(
            f"backend='triton' needs CUDA tensors (got x on {x.device}); on CPU it runs only "
            "through the Triton interpreter, with TRITON_INTERPRET=1 set before triton is imported"
        )
    return "triton"


def _fall_back(op: str, kernel: str, x: torch.Tensor, error: Exception) -> None:
    """Record that ``op`` failed for (device, dtype) and say so, once."""
    info = gpu_info(x.device)
    where = f"{info.name} ({info.arch})" if info else f"{x.device} (Triton interpreter)"
    summary = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[-1][:300]}"
    _FAILED[(str(x.device), x.dtype, op)] = summary
    warnings.warn(
        f"bcnn_triton: the Triton kernel {kernel} failed on {where} for {x.dtype}: {summary}. "
        f"{op} runs on the torch path for {x.dtype} on {x.device} from now on in this process "
        "(backend='triton' raises the error instead; please report it with the output of "
        "`bcnn-triton doctor`).",
        KernelFallbackWarning,
        stacklevel=3,
    )


def run_dispatched(
    op: str,
    kernel: str,
    backend: str,
    x: torch.Tensor,
    triton_path: Callable[[], T],
    torch_path: Callable[[], T],
) -> T:
    """``triton_path()`` where :func:`resolve_backend` picks Triton for ``op`` and ``x``, else
    ``torch_path()``.

    Under ``"auto"`` an exception from the Triton path (a compile error, a ptxas or resource
    error, a failed launch — anything but running out of GPU memory, which the torch path would
    meet too) warns once, naming ``kernel``, and sends (device, dtype, ``op``) down the torch
    path from this call on. The torch path recomputes everything from the inputs, which the
    kernels never write, so partial outputs of the failed launch are never seen.
    """
    if resolve_backend(backend, x, op) != "triton":
        return torch_path()
    if backend == "triton":
        return triton_path()
    try:
        return triton_path()
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as error:
        _fall_back(op, kernel, x, error)
    return torch_path()
