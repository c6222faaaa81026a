"""The op contract: checks, dispatch, the torch path and the torch.library registration."""

from bcnn_triton.ops.bilinear_pool import (
    BACKENDS,
    bilinear_pool,
    check_options,
    descriptor_size,
    resolve_backend,
    triton_available,
)

__all__ = [
    "BACKENDS",
    "bilinear_pool",
    "check_options",
    "descriptor_size",
    "resolve_backend",
    "triton_available",
]
