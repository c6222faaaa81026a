"""bcnn-triton: Bilinear CNN pooling for fine-grained recognition, fused in Triton kernels."""

from bcnn_triton.layers import BilinearPool
from bcnn_triton.models import BilinearCNN
from bcnn_triton.ops import bilinear_pool

__all__ = ["BilinearCNN", "BilinearPool", "bilinear_pool"]
__version__ = "0.1.0"
