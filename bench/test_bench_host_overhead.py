"""Host overhead of one op call: the eager bypass against the registered custom op.

    pytest bench/test_bench_host_overhead.py --benchmark-only --benchmark-json=host.json

A tiny input (N = 2, C = 8, 7×7; 8×8 matrices for the square root) so that the time is the
host's work per call: argument checks, dispatch and autograd bookkeeping. ``way="bypass"`` is
what plain eager calls take (``bcnn_triton.ops.registration``); ``way="registered"`` is the
custom op that torch.compile and torch.export record, forced here by hiding the private torch
function the bypass relies on. On a GPU this cost is paid per call on the CPU while the kernels
run asynchronously: it bounds the op's speed wherever the GPU work per call is a few tens of
microseconds.
"""

import pytest
import torch

from bcnn_triton import bilinear_pool, matrix_sqrt_newton_schulz
from bcnn_triton.ops import registration

# op → (function, input, L); the square root takes C×C matrices, with no locations (L = 0).
OPS = {
    "bilinear_pool": (bilinear_pool, lambda: torch.rand(2, 8, 7, 7), 49),
    "matrix_sqrt_newton_schulz": (
        matrix_sqrt_newton_schulz,
        lambda: torch.eye(8).expand(2, 8, 8).contiguous(),
        0,
    ),
}


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("way", ["bypass", "registered"])
@pytest.mark.parametrize("op", list(OPS))
def test_host_overhead(benchmark, monkeypatch, op, way, mode):
    function, make_input, locations = OPS[op]
    if way == "registered":
        monkeypatch.setattr(registration, "_get_current_dispatch_mode", None)
    benchmark.group = f"host {op} {mode}"
    benchmark.extra_info.update(
        op=op,
        impl=way,
        mode=mode,
        dtype="float32",
        N=2,
        C=8,
        L=locations,
        device="cpu",
        threads=torch.get_num_threads(),
    )
    inputs = make_input()
    if mode == "fwd":
        with torch.no_grad():
            benchmark(function, inputs)
        return
    leaf = inputs.requires_grad_()

    def step():
        function(leaf).sum().backward()
        leaf.grad = None

    benchmark(step)
