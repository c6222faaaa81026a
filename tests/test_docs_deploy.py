"""README.md, "Using a trained model": its commands, run as written (smaller training), give the
same top-1 class from ``predict`` and from the onnxruntime script, which needs no torch."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN = "bcnn-triton train --out runs/demo"
# The demo's flags made small: 32 px, 48 training images, one epoch (a few seconds).
SMALL = (
    " --image-size 32 --train-size 60 --test-size 16 --val-fraction 0.2 --epochs 1"
    " --batch-size 8 --no-progress"
)


def section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Using a trained model: predict, export")
    return text[start : text.index("\n## ", start + 1)]


def first_block(language: str) -> str:
    return re.search(rf"```{language}\n(.*?)```", section(), re.S).group(1)


def shims(folder: Path) -> Path:
    """``python`` and ``bcnn-triton`` on PATH that run this interpreter and this package."""
    folder.mkdir()
    # Scripts, not symlinks: a virtual environment's python is found by the path it is run as.
    for name, command in (("python", ""), ("bcnn-triton", " -m bcnn_triton")):
        shim = folder / name
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}"{command} "$@"\n')
        shim.chmod(0o755)
    return folder


def top1_of_onnx_script(lines: str) -> dict[str, tuple[str, float]]:
    """path → (class, probability in %) from the script's ``path  class  12.3%`` lines."""
    rows = (line.split("  ") for line in lines.splitlines())
    return {path: (name, float(percent.rstrip("%"))) for path, name, percent in rows}


@pytest.mark.slow
def test_train_predict_export_and_onnxruntime_agree(tmp_path):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    commands = first_block("bash")
    assert TRAIN in commands
    work = tmp_path / "work"
    work.mkdir()
    (work / "predict_onnx.py").write_text(first_block("python"))
    env = {**os.environ, "PATH": f"{shims(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}"}
    *steps, last = commands.replace(TRAIN, TRAIN + SMALL).strip().splitlines()
    assert last.startswith("python predict_onnx.py demo.onnx")
    outputs = []
    for script in ("\n".join(steps), last):
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    with (work / "predictions.csv").open(newline="") as handle:
        rows = {row["path"]: row for row in csv.DictReader(handle)}
    from_onnx = top1_of_onnx_script(outputs[-1])
    assert len(rows) == 12 and from_onnx.keys() == rows.keys()
    for path, (name, percent) in from_onnx.items():
        assert name == rows[path]["class_1"]
        assert percent == pytest.approx(100 * float(rows[path]["probability_1"]), abs=0.051)

    # The script runs with torch and bcnn_triton unimportable.
    images = sorted(str(path.relative_to(work)) for path in (work / "demo-images").iterdir())
    blocked = (
        "import runpy, sys; sys.modules['torch'] = sys.modules['bcnn_triton'] = None; "
        "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    alone = subprocess.run(
        [sys.executable, "-c", blocked, "predict_onnx.py", "demo.onnx", *images],
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
    )
    assert top1_of_onnx_script(alone.stdout) == from_onnx
