#!/usr/bin/env bash
# One-shot GPU check (at most 7 min on a bare H100/H200): install, doctor, GPU tests, tuning
# sweep, benchmarks, summary. Every step writes its own files and prints its timing; a step that
# fails, hangs or runs out of time does not stop the next one.
#
#   bash bench/gpu_check.sh [OUT_DIR] [STEP ...]
#
# OUT_DIR defaults to $OUT, else bench/results/<date>-local. STEPs (default: all, in this
# order): doctor, tests, tune, bench. A rerun after fixes names only what changed, e.g.
#   bash bench/gpu_check.sh "$OUT" tests bench
#
# Needs torch, triton, pytest and pytest-benchmark installed (no network is used); uses
# pytest-xdist (parallel compiles) and pytest-timeout (a hang becomes a failed test) when present.
# Writes into OUT_DIR: env.txt, doctor.json + doctor.log, gpu_tests.log, tune.jsonl + tune.md +
# tune.log, bench.log, benchmark.json (raw pytest-benchmark), summary.json, summary.md and
# summary.png.
# Commit them under bench/results/<date>-<gpu>/.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-bench/results/$(date +%Y-%m-%d)-local}}"
shift || true
steps="${*:-doctor tests tune bench}"
mkdir -p "$out"
export TRITON_INTERPRET=0
started=$(date +%s)
step() { echo "== $1 ($(($(date +%s) - started)) s)"; }
wants() { [[ " $steps " == *" $1 "* ]]; }
# SIGINT first, so pytest finishes its session and pytest-benchmark writes its JSON; SIGKILL
# 20 s later if it does not stop.
bounded() { local seconds=$1; shift; timeout -s INT -k 20 "$seconds" "$@"; }
status=0

step "install"
if ! pip install --no-deps --no-build-isolation -e . > "$out/install.log" 2>&1; then
    tail -n 30 "$out/install.log"
    exit 1
fi
rm -f "$out/install.log"

step "environment"
{
    date -u +%Y-%m-%dT%H:%M:%SZ
    echo "command: bash bench/gpu_check.sh $out $steps"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
    python -c "import sys, torch, triton; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda); print('triton', triton.__version__); print('device', torch.cuda.get_device_name())"
} | tee "$out/env.txt"

pytest_extra=()
python -c "import xdist" 2> /dev/null && pytest_extra+=(-n 8)
python -c "import pytest_timeout" 2> /dev/null && pytest_extra+=(--timeout 120)

if wants doctor; then
    # First: what auto picks on this GPU and whether each kernel it picks is right, as data.
    # Its workers compile the kernels into Triton's cache, which the tests then reuse.
    step "doctor"
    bounded 100 python -m bcnn_triton doctor --json "$out/doctor.json" --workers 8 \
        > "$out/doctor.log" 2>&1
    code=$?
    tail -n 8 "$out/doctor.log"
    [ "$code" -eq 0 ] || status=1
fi

if wants tests; then
    step "gpu tests (${pytest_extra[*]:-serial})"
    bounded 110 python -m pytest -p no:cacheprovider -m gpu -q -rs "${pytest_extra[@]}" tests \
        > "$out/gpu_tests.log" 2>&1
    code=$?
    tail -n 25 "$out/gpu_tests.log"
    [ "$code" -eq 0 ] || status=1
fi

if wants tune; then
    step "tuning sweep"
    bounded 100 python bench/tune_kernels.py --out "$out" --budget-s 75 > "$out/tune.log" 2>&1
    code=$?
    tail -n 40 "$out/tune.log"
    [ "$code" -eq 0 ] || status=1
fi

if wants bench; then
    step "gpu benchmarks"
    BCNN_BENCH_BUDGET_S=70 bounded 100 python -m pytest -p no:cacheprovider -q \
        bench/test_bench_gpu.py --benchmark-only --benchmark-json="$out/benchmark.json" \
        --benchmark-columns=median,iqr,rounds > "$out/bench.log" 2>&1
    code=$?
    tail -n 5 "$out/bench.log"
    [ "$code" -eq 0 ] || status=1
    step "summary"
    if [ -s "$out/benchmark.json" ]; then
        python bench/summarize.py "$out/benchmark.json" --out "$out"
    fi
fi
step "done: exit $status"
exit "$status"
