"""Benchmark configuration: a time budget for the whole session (BCNN_BENCH_BUDGET_S).

Benchmarks run in the order they are declared, the most important cases first; once the budget
is spent the remaining ones are skipped with a reason, so a one-shot GPU check always finishes
and writes what it measured.
"""

import os
import time

import pytest

_START = time.monotonic()


@pytest.fixture(autouse=True)
def _within_budget():
    budget = os.environ.get("BCNN_BENCH_BUDGET_S")
    if budget is not None and time.monotonic() - _START > float(budget):
        pytest.skip(f"benchmark budget of {budget} s spent")
