#!/usr/bin/env bash
# One-shot GPU check (≤ 6 min on a bare H100/H200): install, GPU tests, GPU benchmarks, summary.
#
#   bash bench/gpu_check.sh [OUT_DIR]        (default: $OUT, else bench/results/<date>-local)
#
# Needs torch, triton, pytest and pytest-benchmark already installed (no network is used).
# Writes into OUT_DIR: env.txt, gpu_tests.log, bench.log, benchmark.json (raw pytest-benchmark),
# summary.json, summary.md and summary.png. Commit them under bench/results/<date>-<gpu>/.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-bench/results/$(date +%Y-%m-%d)-local}}"
mkdir -p "$out"
export TRITON_INTERPRET=0
started=$(date +%s)
step() { echo "== $1 ($(($(date +%s) - started)) s)"; }

step "install"
if ! pip install --no-deps --no-build-isolation -e . > "$out/install.log" 2>&1; then
    tail -n 30 "$out/install.log"
    exit 1
fi
rm -f "$out/install.log"

step "environment"
{
    date -u +%Y-%m-%dT%H:%M:%SZ
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python -c "import sys, torch, triton; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda); print('triton', triton.__version__); print('device', torch.cuda.get_device_name())"
} | tee "$out/env.txt"

step "gpu tests"
timeout 150 python -m pytest -p no:cacheprovider -m gpu -q -rs \
    tests/kernels/test_kernel_bilinear_pool_gpu.py 2>&1 | tee "$out/gpu_tests.log"
tests_status=${PIPESTATUS[0]}

step "gpu benchmarks"
BCNN_BENCH_BUDGET_S=120 timeout 210 python -m pytest -p no:cacheprovider -q \
    bench/test_bench_gpu.py --benchmark-only --benchmark-json="$out/benchmark.json" \
    --benchmark-columns=median,iqr,rounds 2>&1 | tail -n 60 > "$out/bench.log"
bench_status=${PIPESTATUS[0]}
tail -n 5 "$out/bench.log"

step "summary"
if [ -s "$out/benchmark.json" ]; then
    python bench/summarize.py "$out/benchmark.json" --out "$out"
fi
step "done: tests exit $tests_status, benchmarks exit $bench_status"
[ "$tests_status" -eq 0 ] && [ "$bench_status" -eq 0 ]
