"""Summarize bench/test_bench_predict.py's JSON: images/s per backbone and runtime.

    python bench/summarize_predict.py RESULTS.json [--out DIR]

Writes ``predict_summary.md`` and ``predict_summary.json``: images/s from the fastest call
(best of the rounds, what the machine gives when no other job competes for its cores) and
from the median call.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RUNTIMES = ("eager", "eager_channels_last", "compile", "onnxruntime", "end_to_end")


def throughput(results: dict) -> dict[str, dict[str, dict[str, float]]]:
    """backbone → runtime → {"best": images/s of the fastest call, "median": of the median}."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for bench in results["benchmarks"]:
        info, stats = bench["extra_info"], bench["stats"]
        table.setdefault(info["backbone"], {})[info["runtime"]] = {
            "best": info["images_per_call"] / stats["min"],
            "median": info["images_per_call"] / stats["median"],
        }
    return table


def markdown(table: dict[str, dict[str, dict[str, float]]], machine: str) -> str:
    lines = [
        f"Machine: {machine}. Images/s: best call (median call).",
        "",
        "| backbone | " + " | ".join(RUNTIMES) + " |",
        "|---|" + "---|" * len(RUNTIMES),
    ]
    for backbone, row in table.items():
        cells = [
            f"{row[r]['best']:.1f} ({row[r]['median']:.1f})" if r in row else "—" for r in RUNTIMES
        ]
        lines.append(f"| {backbone} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--out", type=Path, help="folder for the summary (default: beside)")
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    machine_info = results["machine_info"]
    machine = f"{machine_info['cpu']['brand_raw']}, {machine_info['cpu']['count']} threads"
    table = throughput(results)
    out = args.out or args.results.parent
    out.mkdir(parents=True, exist_ok=True)
    (out / "predict_summary.json").write_text(json.dumps(table, indent=2) + "\n")
    (out / "predict_summary.md").write_text(markdown(table, machine))
    print(markdown(table, machine), end="")


if __name__ == "__main__":
    main()
