"""Helpers shared by the kernels and the op layer; this module itself never imports Triton.

The interpreter switch, the float32 matmul precision, the CUDA device guard, autotune pruning by
shared memory, and the row-alignment copy all live here, so the op layer can ask about the
interpreter without Triton installed.
"""

from __future__ import annotations

import contextlib
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
    "interpreter_enabled",
    "shared_memory_pruner",
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


def _cuda_matmul_allows_tf32() -> bool:
    try:
        return bool(torch.backends.cuda.matmul.allow_tf32)
    except RuntimeError:
        # torch >= 2.9 refuses the legacy flag once the new per-backend API was used.
        return torch.backends.cuda.matmul.fp32_precision == "tf32"


def dot_input_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision for operands of ``dtype``, following PyTorch's CUDA setting.

    float32 gets "tf32" where PyTorch lets cuBLAS use TF32 (``set_float32_matmul_precision``
    "high"/"medium", or ``torch.backends.cuda.matmul.fp32_precision = "tf32"``), else "ieee".
    Half types ignore it; they get Triton's default.
    """
    if dtype == torch.float32 and not _cuda_matmul_allows_tf32():
        return "ieee"
    return "tf32"


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


def shared_memory_pruner(
    estimate: Callable[[Any, dict[str, Any]], int], reference_arg: str
) -> Callable[..., list]:
    """An ``early_config_prune`` hook: drop configurations whose shared memory exceeds the GPU's.

    ``estimate(config, args)`` is an upper bound of a configuration's shared memory in bytes
    (the compile test checks that it bounds what Triton allocates); ``reference_arg`` names the
    tensor argument whose device is launched on. The smallest configuration always stays, so a
    GPU with little shared memory still runs (each kernel's smallest one fits
    ``CONSUMER_SHARED_MEMORY``).
    """

    def prune(configs: Sequence, named_args: dict[str, Any], **kwargs: Any) -> list:
        args = {**named_args, **kwargs}
        limit = _max_shared_memory(args[reference_arg].device)
        if limit is None:
            return list(configs)
        sizes = [estimate(config, args) for config in configs]
        kept = [c for c, size in zip(configs, sizes, strict=True) if size <= limit]
        return kept or [configs[sizes.index(min(sizes))]]

    return prune
