"""nn.Module wrappers of the ops."""

from bcnn_triton.layers.bilinear_pool import BilinearPool

__all__ = ["BilinearPool"]
