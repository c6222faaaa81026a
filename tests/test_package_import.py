"""Every public module imports first in a fresh process, before or after torch, and the
operators are registered exactly when ``bcnn_triton.ops`` has been imported — no import hooks."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

# Each module, and whether importing it registers the operators (it imports bcnn_triton.ops).
MODULES = {
    "bcnn_triton": False,
    "bcnn_triton.cli": False,
    "bcnn_triton.config": False,
    "bcnn_triton.kernels": False,
    "bcnn_triton.kernels.common": False,
    "bcnn_triton.kernels.bilinear_fwd": False,
    "bcnn_triton.kernels.bilinear_bwd": False,
    "bcnn_triton.kernels.newton_schulz": False,
    "bcnn_triton.ops": True,
    "bcnn_triton.layers": True,
    "bcnn_triton.models": True,
    "bcnn_triton.data": False,
    "bcnn_triton.train": True,
    "bcnn_triton.deploy": True,
}

FIRST = """
import sys
import {module}
light = {module!r} in ("bcnn_triton", "bcnn_triton.cli", "bcnn_triton.config")
assert not light or "torch" not in sys.modules, "import {module} imported torch"
import torch
registered = hasattr(torch.ops.bcnn_triton, "bilinear_pool")
assert registered == {registers}, f"operators registered: {{registered}}"
import bcnn_triton
z = bcnn_triton.bilinear_pool(torch.rand(2, 3, 4))
assert hasattr(torch.ops.bcnn_triton, "matrix_sqrt_newton_schulz")
print(tuple(z.shape))
"""

TORCH_FIRST = """
import torch
import importlib
for module in {modules!r}:
    importlib.import_module(module)
for name in ("bilinear_pool", "matrix_sqrt_newton_schulz"):
    getattr(torch.ops.bcnn_triton, name).default
    getattr(torch.ops.bcnn_triton, name + "_backward").default
print("ok")
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


@pytest.mark.slow
def test_each_module_imports_first_in_a_fresh_process():
    codes = [FIRST.format(module=name, registers=ops) for name, ops in MODULES.items()]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(_run, codes))
    failures = {
        name: result.stderr.strip().splitlines()[-1]
        for name, result in zip(MODULES, results, strict=True)
        if result.returncode != 0 or result.stdout.strip() != "(2, 9)"
    }
    assert not failures


@pytest.mark.slow
def test_every_module_imports_after_torch():
    result = _run(TORCH_FIRST.format(modules=list(MODULES)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_no_import_hook_is_installed():
    import bcnn_triton  # noqa: F401

    assert not [f for f in sys.meta_path if type(f).__module__.startswith("bcnn_triton")]
