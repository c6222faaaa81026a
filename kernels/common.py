"""Helpers shared by the kernels and the op layer; this module itself never imports Triton.

The interpreter switch, the GPU's architecture, the ``tl.dot`` input precision, the CUDA device
guard, autotune pruning by shared memory, and the row-alignment copy all live here, so the op
layer can ask about the interpreter and the GPU without Triton installed.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = [
    "CONSUMER_SHARED_MEMORY",
    "INTERPRETER",
    "aligned_rows",
    "batch_bucket",
    "device_guard",
    "dot_input_precision",
    "dot_precision",
    "gpu_arch",
    "interpreter_enabled",
    "pipeline_shared_memory",
    "shared_memory_pruner",
    "supports_tf32",
    "tf32_allowed",
]


def interpreter_enabled() -> bool:
    """Whether ``TRITON_INTERPRET`` asks Triton to run kernels through its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


#: The interpreter switch as it was when the kernels were defined: triton.jit decides interpreted
#: or compiled at definition time, so a later change of the variable does not reach them.
INTERPRETER = interpreter_enabled()

#: Shared memory a block may opt in to on sm_86/sm_89 (RTX 30xx/40xx, A10, L4): every kernel
#: keeps at least one configuration within it.
CONSUMER_SHARED_MEMORY = 101376


def tf32_allowed() -> bool:
    """Whether PyTorch lets float32 matmuls use TF32 (``set_float32_matmul_precision`` "high" or
    "medium", or ``torch.backends.cuda.matmul.fp32_precision = "tf32"``)."""
    try:
        return bool(torch.backends.cuda.matmul.allow_tf32)
    except RuntimeError:
        # torch >= 2.9 refuses the legacy flag once the new per-backend API was used.
        return torch.backends.cuda.matmul.fp32_precision == "tf32"


@functools.cache
def _arch_of_device(index: int) -> str:
    properties = torch.cuda.get_device_properties(index)
    if torch.version.hip:
        # ROCm builds of torch report AMD GPUs as CUDA devices; "gfx942:sramecc+:xnack-".
        return properties.gcnArchName.split(":")[0]
    return f"sm_{properties.major}{properties.minor}"


def gpu_arch(device: torch.device) -> str | None:
    """The compile target of a GPU device: "sm_90" (NVIDIA), "gfx942" (AMD, ROCm builds of
    torch); None for any other device. Asked of the driver once per device, at first use."""
    if device.type != "cuda":
        return None
    return _arch_of_device(
        device.index if device.index is not None else torch.cuda.current_device()
    )


def supports_tf32(arch: str | None) -> bool:
    """Whether Triton accepts ``input_precision="tf32"`` for ``arch``: every NVIDIA target
    (tensor cores from sm_80), on AMD only gfx942 (CDNA3's xf32); gfx90a and gfx950 refuse it.
    None (the interpreter on CPU, which ignores the precision) counts as yes."""
    return arch is None or arch.startswith("sm_") or arch == "gfx942"


def dot_precision(dtype: torch.dtype, arch: str | None, allow_tf32: bool) -> str:
    """``tl.dot`` input precision for operands of ``dtype`` on the target ``arch``.

    16-bit operands get "ieee" (exact products accumulated in float32, which is what tensor
    cores do for them; the ROCm targets without TF32 refuse "tf32" even there). float32 gets
    "tf32" where ``allow_tf32`` and the target supports it (:func:`supports_tf32`), else "ieee".
    """
    if dtype != torch.float32:
        return "ieee"
    return "tf32" if allow_tf32 and supports_tf32(arch) else "ieee"


def dot_input_precision(
    dtype: torch.dtype, device: torch.device | None = None, *, allow_tf32: bool | None = None
) -> str:
    """:func:`dot_precision` for a launch on ``device``; ``allow_tf32`` defaults to PyTorch's
    CUDA float32 setting (:func:`tf32_allowed`)."""
    arch = gpu_arch(device) if device is not None else None
    return dot_precision(dtype, arch, tf32_allowed() if allow_tf32 is None else allow_tf32)


def device_guard(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Make ``tensor``'s CUDA device current while kernels launch (a no-op off CUDA).

    Triton launches on the current device; a custom op body gets no device guard, so without
    this a map on ``cuda:1`` in a process whose current device is 0 would run on the wrong GPU.
    """
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def batch_bucket(num_samples: int) -> int:
    """The batch size as the autotuner sees it: powers of two up to 64, so a ragged last batch
    reuses its neighbour's tuning instead of starting a new one."""
    return min(64, 1 << max(0, num_samples - 1).bit_length())


def aligned_rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` (N, C, L), or a copy whose rows the compiler can prove 16-byte aligned.

    Tiles are loaded along the dimension of stride 1. Triton vectorizes those loads (16-byte
    asynchronous copies) only when it knows every row starts on a 16-byte boundary, which it
    learns from a launch argument divisible by 16: a row stride of L = 196 elements (392-byte
    rows in bfloat16) gets one load per element instead. A copy into a buffer whose rows are
    padded to a multiple of 16 elements (the padding is never read) costs one pass over the map.
    """
    num, channels, locations = t.shape
    if t.stride(2) == 1 and locations > 1:
        row_stride = t.stride(1)
    elif t.stride(1) == 1 and channels > 1:
        row_stride = t.stride(2)
    else:
        return t
    if row_stride % 16 == 0 and t.data_ptr() % 16 == 0:
        return t
    if t.stride(2) == 1:
        padded = -(-locations // 16) * 16
        buffer = torch.empty((num, channels, padded), dtype=t.dtype, device=t.device)
        view = buffer[:, :, :locations]
    else:
        padded = -(-channels // 16) * 16
        buffer = torch.empty((num, locations, padded), dtype=t.dtype, device=t.device)
        view = buffer[:, :, :channels].transpose(1, 2)
    return view.copy_(t)


def _max_shared_memory(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    import triton

    index = device.index if device.index is not None else torch.cuda.current_device()
    return triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"]


def _pipeline_class(arch: str | None) -> str:
    """How Triton's software pipeline uses shared memory on ``arch`` (see
    :func:`pipeline_shared_memory`): "ampere", "hopper", "blackwell", "cdna" (gfx90a, gfx942),
    "gfx950" or "unknown"."""
    if arch is not None and arch.startswith("sm_"):
        major = int(arch.removeprefix("sm_")[:-1])
        return {8: "ampere", 12: "ampere", 9: "hopper", 10: "blackwell", 11: "blackwell"}.get(
            major, "unknown"
        )
    return {"gfx90a": "cdna", "gfx942": "cdna", "gfx950": "gfx950"}.get(arch, "unknown")


def pipeline_shared_memory(
    num_stages: int,
    stage_bytes: int,
    arch: str | None,
    *,
    element_size: int = 4,
    through_registers: bool = False,
) -> int:
    """Shared memory of a main loop pipelined over ``num_stages`` steps whose operand tiles
    take ``stage_bytes``, on the target ``arch`` — as the compile test measures it (Triton 3.8):

    - sm_8x, sm_12x (cp.async): ``num_stages − 1`` buffers — the tile being multiplied waits
      in registers — unless the operands pass through registers on their way to ``tl.dot``
      anyway (``through_registers``: shifted, centred), then ``num_stages``;
    - gfx90a, gfx942: ``num_stages − 1`` buffers, operands through registers or not;
    - sm_90: ``num_stages`` buffers; sm_10x/sm_11x the same plus a few bytes of barriers
      (16 B seen, 1 KiB allowed); gfx950: ``num_stages`` buffers, 16-bit tiles padded against
      bank conflicts (up to 6.1 % seen, 1/8 allowed);
    - an unknown target (None included): the most of these.
    """
    buffers = num_stages * stage_bytes
    kind = _pipeline_class(arch)
    if kind == "cdna" or (kind == "ampere" and not through_registers):
        return buffers - stage_bytes
    if kind == "ampere":
        return buffers
    padding = buffers // 8 if element_size < 4 else 0
    barriers = 1024
    return buffers + {"hopper": 0, "blackwell": barriers, "gfx950": padding}.get(
        kind, barriers + padding
    )


def shared_memory_pruner(
    estimate: Callable[[Any, dict[str, Any], str | None], int], reference_arg: str
) -> Callable[..., list]:
    """An ``early_config_prune`` hook: drop configurations whose shared memory exceeds the GPU's.

    ``estimate(config, args, arch)`` is an upper bound of a configuration's shared memory in
    bytes on the target ``arch`` (the compile test checks that it bounds what Triton allocates
    on every target it compiles for); ``reference_arg`` names the tensor argument whose device
    is launched on. The smallest configuration always stays, so a GPU with little shared memory
    still runs (each kernel's smallest one fits ``CONSUMER_SHARED_MEMORY``).
    """

    def prune(configs: Sequence, named_args: dict[str, Any], **kwargs: Any) -> list:
        args = {**named_args, **kwargs}
        device = args[reference_arg].device
        limit = _max_shared_memory(device)
        if limit is None:
            return list(configs)
        arch = gpu_arch(device)
        sizes = [estimate(config, args, arch) for config in configs]
        kept = [c for c, size in zip(configs, sizes, strict=True) if size <= limit]
        return kept or [configs[sizes.index(min(sizes))]]

    return prune
