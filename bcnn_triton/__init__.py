"""bcnn-triton: Bilinear CNN pooling for fine-grained recognition, fused in Triton kernels.

``import bcnn_triton`` does not import torch, so that the command line (``bcnn_triton.cli``)
answers ``--help`` at once: the names below load on first use (PEP 562), and the operators
``torch.ops.bcnn_triton.*`` are registered as soon as torch is imported (at once if it already
is). ``import bcnn_triton`` is therefore all that ``torch.export.load`` of our programs needs,
in either import order.
"""

import importlib
import importlib.abc
import importlib.util
import sys

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


class _RegisterOpsAfterTorch(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when torch is first imported, lets torch's own loader run, then
    imports ``bcnn_triton.ops`` (which registers the operators)."""

    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        load_torch = spec.loader.exec_module

        def load_torch_then_register(module) -> None:
            load_torch(module)
            importlib.import_module("bcnn_triton.ops")

        spec.loader.exec_module = load_torch_then_register
        return spec


if "torch" in sys.modules:
    importlib.import_module("bcnn_triton.ops")
elif not any(isinstance(finder, _RegisterOpsAfterTorch) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterOpsAfterTorch())
