"""Summarize a pytest-benchmark JSON of bench/ into summary.json, summary.md and summary.png.

    python bench/summarize.py RESULTS.json [--out DIR]

One record per case (op, mode, dtype, N, C, L) with, for each implementation, its median ``ms``
and ``peak_mb`` (GPU) or ``saved_mb`` (CPU), and the case's ``floor_ms`` where known. GPU
timings come from CUDA events (``extra_info["ms"]``), CPU ones from pytest-benchmark's median.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

CASE_KEYS = ("op", "mode", "dtype", "N", "C", "L")
IMPL_ORDER = (
    "eager",
    "fast_mpn_cov",
    "iterate",
    "compile",
    "bmm",
    "torch_path",
    "spectral",
    "fused",
    "registered",
    "bypass",
)


def load_cases(results: dict) -> list[dict]:
    """Group benchmark entries by case; implementations become sub-records."""
    cases: dict[tuple, dict] = {}
    for bench in results["benchmarks"]:
        info = {"op": "bilinear_pool", **bench["extra_info"]}  # runs from before iSQRT-COV
        key = tuple(info[k] for k in CASE_KEYS)
        case = cases.setdefault(key, {**dict(zip(CASE_KEYS, key, strict=True)), "impls": {}})
        if "floor_ms" in info:
            case["floor_ms"] = info["floor_ms"]
        record = {"ms": info.get("ms", bench["stats"]["median"] * 1e3)}
        for field in ("peak_mb", "saved_mb", "tflops", "gbs", "floor_ratio"):
            if field in info:
                record[field] = info[field]
        case["impls"][info["impl"]] = record
    return sorted(cases.values(), key=lambda c: (c["op"], c["mode"], c["dtype"], c["N"], c["L"]))


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


#: Our implementations, by preference: a row's "ours" is the first one it has.
OURS = ("fused", "torch_path", "spectral", "bypass")


def markdown_table(cases: list[dict], machine: str) -> str:
    """A table of times, speed-ups of ours (per row: the first of ``OURS`` it has) over the
    others, and memory."""
    impls = [i for i in IMPL_ORDER if any(i in c["impls"] for c in cases)]
    others = [i for i in impls if i not in OURS and i != "bmm"]
    memory = (
        "peak_mb" if any("peak_mb" in r for c in cases for r in c["impls"].values()) else "saved_mb"
    )
    header = ["op", "mode", "dtype", "N", "C", "L"] + [f"{i} ms" for i in impls]
    header += [f"ours vs {o}" for o in others]
    if any("floor_ms" in c for c in cases):
        header += ["floor ms", "ours / floor", "ours TFLOP/s", "ours GB/s"]
    header += [f"{i} {memory.replace('_', ' ').replace('mb', 'MB')}" for i in impls]
    lines = [
        f"Machine: {machine}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for case in cases:
        rows = case["impls"]
        ours = next((i for i in OURS if i in rows), None)
        ms = {i: rows[i]["ms"] if i in rows else None for i in impls}
        cells = [case[k] if k in ("op", "mode", "dtype") else str(case[k]) for k in CASE_KEYS]
        cells += [_fmt(ms[i]) for i in impls]
        for other in others:
            ratio = ms[other] / rows[ours]["ms"] if ms[other] and ours else None
            cells.append("—" if ratio is None else f"{ratio:.2f}×")
        if "floor ms" in header:
            mine = rows.get(ours, {})
            cells += [
                _fmt(case.get("floor_ms")),
                _fmt(mine.get("floor_ratio")),
                _fmt(mine.get("tflops")),
                _fmt(mine.get("gbs"), 4),
            ]
        cells += [_fmt(rows.get(i, {}).get(memory), 4) for i in impls]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(cases: list[dict], path: Path, machine: str) -> bool:
    """Bar chart of median times per case; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    impls = [i for i in IMPL_ORDER if any(i in c["impls"] for c in cases)]
    labels = [
        f"{c['op'].split('_')[0]} {c['mode']}\n{c['dtype']}\nN={c['N']} C={c['C']} L={c['L']}"
        for c in cases
    ]
    width = 0.8 / len(impls)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(cases)), 4.5))
    for k, impl in enumerate(impls):
        heights = [c["impls"].get(impl, {}).get("ms", 0.0) for c in cases]
        ax.bar([i + k * width for i in range(len(cases))], heights, width, label=impl)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))], labels, fontsize=7)
    ax.set_ylabel("median time (ms), lower is better")
    ax.set_yscale("log")
    ax.set_title(machine, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def machine_name(results: dict) -> str:
    cases = results["benchmarks"]
    info = cases[0]["extra_info"] if cases else {}
    if "device" in info and info["device"] != "cpu":
        return f"{info['device']}, torch {info.get('torch', '?')}, triton {info.get('triton', '?')}"
    machine = results.get("machine_info", {})
    threads = info.get("threads", "?")
    return f"{machine.get('cpu', {}).get('brand_raw', 'CPU')}, {threads} threads"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="pytest-benchmark JSON file")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: beside)")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    out = args.out or args.results.parent
    out.mkdir(parents=True, exist_ok=True)
    cases = load_cases(results)
    machine = machine_name(results)
    (out / "summary.json").write_text(json.dumps({"machine": machine, "cases": cases}, indent=1))
    table = markdown_table(cases, machine)
    (out / "summary.md").write_text(table)
    plot(cases, out / "summary.png", machine)
    print(table)


if __name__ == "__main__":
    main()
