"""The op contract: checks, dispatch, the torch path and the torch.library registration."""

from bcnn_triton.ops.bilinear_pool import (
    BACKENDS,
    bilinear_pool,
    check_options,
    descriptor_size,
    resolve_backend,
    triton_available,
)
from bcnn_triton.ops.dispatch import KernelFallbackWarning, explain_backend
from bcnn_triton.ops.isqrt_cov_pool import isqrt_cov_pool, isqrt_descriptor_size
from bcnn_triton.ops.matrix_sqrt import matrix_sqrt_newton_schulz

__all__ = [
    "BACKENDS",
    "KernelFallbackWarning",
    "bilinear_pool",
    "check_options",
    "descriptor_size",
    "explain_backend",
    "isqrt_cov_pool",
    "isqrt_descriptor_size",
    "matrix_sqrt_newton_schulz",
    "resolve_backend",
    "triton_available",
]
