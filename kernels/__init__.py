"""Triton kernels of bcnn-triton (installed as ``bcnn_triton.kernels``).

Kernels and thin launchers only: tensors in, tensors out; no autograd, no nn, no torch.library.
Importing this package compiles nothing and queries no GPU.
"""

from .bilinear_bwd import bilinear_pool_bwd, rowwise_dot
from .bilinear_fwd import bilinear_pool_fwd

__all__ = ["bilinear_pool_bwd", "bilinear_pool_fwd", "rowwise_dot"]
