"""nn.Module wrappers of the ops."""

from bcnn_triton.layers.bilinear_pool import BilinearPool
from bcnn_triton.layers.isqrt_cov_pool import ISqrtCovPool

__all__ = ["BilinearPool", "ISqrtCovPool"]
