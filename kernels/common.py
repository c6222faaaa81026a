"""Helpers shared by the kernels: interpreter detection and float32 matmul precision."""

from __future__ import annotations

import os

import torch

__all__ = ["INTERPRETER", "dot_input_precision"]

#: True when Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1). Read once:
#: triton.jit itself decides interpreted or compiled when the kernels are defined.
INTERPRETER = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


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
