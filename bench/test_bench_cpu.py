"""CPU benchmark: the seed's eager pooling against the op's torch path (C = 512, 28×28).

    pytest bench/test_bench_cpu.py --benchmark-only --benchmark-json=cpu.json
    python bench/summarize.py cpu.json

``extra_info["saved_mb"]`` holds the memory autograd keeps between forward and backward (the
input map included: both keep it).
"""

import pytest
import torch
from bench_impls import IMPLEMENTATIONS, saved_for_backward_bytes

CHANNELS, SIDE = 512, 28


@pytest.mark.parametrize("n", [8, 1, 32])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", ["eager", "torch_path"])
def test_cpu(benchmark, impl, mode, n):
    fn = IMPLEMENTATIONS[impl]
    x = torch.relu(torch.randn(n, CHANNELS, SIDE, SIDE))
    grad = torch.randn(n, CHANNELS * CHANNELS)
    benchmark.group = f"{mode} N={n}"
    benchmark.extra_info.update(
        impl=impl,
        mode=mode,
        dtype="float32",
        N=n,
        C=CHANNELS,
        L=SIDE * SIDE,
        device="cpu",
        threads=torch.get_num_threads(),
    )
    rounds = 15 if n <= 8 else 5
    if mode == "fwd":
        with torch.no_grad():
            benchmark.pedantic(fn, args=(x,), rounds=rounds, warmup_rounds=1)
        return
    leaf = x.requires_grad_()

    def step():
        fn(leaf).backward(grad)
        leaf.grad = None

    benchmark.pedantic(step, rounds=rounds, warmup_rounds=1)
    benchmark.extra_info["saved_mb"] = saved_for_backward_bytes(fn, x) / 2**20
