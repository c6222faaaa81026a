"""bcnn-triton: Bilinear CNN pooling for fine-grained recognition, fused in Triton kernels.

``import bcnn_triton`` does not import torch, so that the command line (``bcnn_triton.cli``)
answers ``--help`` at once: the names below load on first use (PEP 562). The operators
``torch.ops.bcnn_triton.*`` are registered by ``import bcnn_triton.ops``, which every module
that uses them imports (layers, models, deploy) and which the first use of any name below
triggers. Load an exported ``.pt2`` with ``bcnn_triton.deploy.load_pt2``, or with
``torch.export.load`` after ``import bcnn_triton.ops``.
"""

import importlib

__all__ = [
    "BilinearCNN",
    "BilinearPool",
    "ISqrtCovPool",
    "bilinear_pool",
    "isqrt_cov_pool",
    "matrix_sqrt_newton_schulz",
]
__version__ = "0.1.0"

_HOMES = {
    "BilinearCNN": "bcnn_triton.models",
    "BilinearPool": "bcnn_triton.layers",
    "ISqrtCovPool": "bcnn_triton.layers",
    "bilinear_pool": "bcnn_triton.ops",
    "isqrt_cov_pool": "bcnn_triton.ops",
    "matrix_sqrt_newton_schulz": "bcnn_triton.ops",
}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'bcnn_triton' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
