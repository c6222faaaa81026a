"""Triton kernels of bcnn-triton (installed as ``bcnn_triton.kernels``).

Kernels and thin launchers only: tensors in, tensors out; no autograd, no nn, no torch.library.
Importing this package compiles nothing, queries no GPU and does not import Triton: the launchers
load on first use, so ``bcnn_triton.kernels.common`` works where Triton is not installed.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "bilinear_pool_bwd",
    "bilinear_pool_fwd",
    "matrix_sqrt_newton_schulz_bwd",
    "matrix_sqrt_newton_schulz_fwd",
]

_LAUNCHERS = {
    "bilinear_pool_bwd": ".bilinear_bwd",
    "bilinear_pool_fwd": ".bilinear_fwd",
    "matrix_sqrt_newton_schulz_bwd": ".newton_schulz",
    "matrix_sqrt_newton_schulz_fwd": ".newton_schulz",
}


def __getattr__(name: str) -> Any:
    if name not in _LAUNCHERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAUNCHERS[name], __name__), name)
