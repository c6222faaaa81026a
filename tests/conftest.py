"""Test configuration: the Triton interpreter on CPU machines, and the gpu/interpreter markers.

A plain ``python -m pytest`` tests the compiled kernels where there is a GPU and the kernels
through Triton's interpreter where there is none; ``TRITON_INTERPRET`` set by the caller wins.
"""

import os

import torch  # imports no Triton

# Must precede any import of triton: triton.jit decides interpreted or compiled at definition.
os.environ.setdefault("TRITON_INTERPRET", "0" if torch.cuda.is_available() else "1")

import pytest
from bcnn_triton.kernels.common import interpreter_enabled

INTERPRETER = interpreter_enabled()


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    elif INTERPRETER:
        skip_gpu = pytest.mark.skip(
            reason="TRITON_INTERPRET=1: run `TRITON_INTERPRET=0 pytest -m gpu` for compiled kernels"
        )
    else:
        skip_gpu = None
    skip_interpreter = pytest.mark.skip(reason="needs TRITON_INTERPRET=1 (Triton on CPU tensors)")
    for item in items:
        if skip_gpu is not None and "gpu" in item.keywords:
            item.add_marker(skip_gpu)
        if not INTERPRETER and "interpreter" in item.keywords:
            item.add_marker(skip_interpreter)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
