"""``import bcnn_triton`` is light, yet registers the operator whenever torch gets imported."""

import subprocess
import sys

import pytest

AFTER_TORCH = """
import sys
import bcnn_triton
assert "torch" not in sys.modules, "import bcnn_triton imported torch"
import torch
print(torch.ops.bcnn_triton.bilinear_pool.default.name())
print(bcnn_triton.bilinear_pool.__module__)
"""


@pytest.mark.slow
def test_operator_registered_when_torch_comes_after():
    result = subprocess.run([sys.executable, "-c", AFTER_TORCH], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["bcnn_triton::bilinear_pool", "bcnn_triton.ops.bilinear_pool"]
