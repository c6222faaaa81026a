"""docs/deploy.md: its commands and Python blocks, run as written (smaller training), in one
fresh folder. From the main job to onnxruntime, ``predict`` and the onnxruntime script (which
needs no torch) give the same top-1 classes; the Python API predicts the same images; the pt2
file exported by its command loads both ways the page shows."""

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
MAIN_JOB = "## From the main job to onnxruntime"
PYTHON_API = "## From Python"
PT2 = "## Loading a pt2 program"


def section(heading: str) -> str:
    """The text of docs/deploy.md from ``heading`` to the next section (or the end)."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    start = text.index(heading)
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def blocks(language: str, heading: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section(heading), re.S)


def shims(folder: Path) -> Path:
    """``python`` and ``bcnn-triton`` on PATH that run this interpreter and this package."""
    folder.mkdir()
    # Scripts, not symlinks: a virtual environment's python is found by the path it is run as.
    for name, command in (("python", ""), ("bcnn-triton", " -m bcnn_triton")):
        shim = folder / name
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}"{command} "$@"\n')
        shim.chmod(0o755)
    return folder


def run(command: list[str], work: Path, env: dict[str, str] | None = None) -> str:
    """stdout of ``command`` run in ``work``; fails the test with its stderr if it fails."""
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def top1_of_onnx_script(lines: str) -> dict[str, tuple[str, float]]:
    """path → (class, probability in %) from the script's ``path  class  12.3%`` lines."""
    rows = (line.split("  ") for line in lines.splitlines())
    return {path: (name, float(percent.rstrip("%"))) for path, name, percent in rows}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The main job's section run as written up to onnxruntime: (folder, PATH env, the onnx
    script's output)."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    commands = blocks("bash", MAIN_JOB)[0]
    assert TRAIN in commands
    base = tmp_path_factory.mktemp("deploy")
    work = base / "work"
    work.mkdir()
    (work / "predict_onnx.py").write_text(blocks("python", MAIN_JOB)[0])
    env = {**os.environ, "PATH": f"{shims(base / 'bin')}{os.pathsep}{os.environ['PATH']}"}
    *steps, last = commands.replace(TRAIN, TRAIN + SMALL).strip().splitlines()
    assert last.startswith("python predict_onnx.py demo.onnx")
    run(["bash", "-euo", "pipefail", "-c", "\n".join(steps)], work, env)
    return work, env, run(["bash", "-euo", "pipefail", "-c", last], work, env)


@pytest.mark.slow
def test_train_predict_export_and_onnxruntime_agree(demo):
    work, _, onnx_output = demo
    with (work / "predictions.csv").open(newline="") as handle:
        rows = {row["path"]: row for row in csv.DictReader(handle)}
    from_onnx = top1_of_onnx_script(onnx_output)
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
    alone = run([sys.executable, "-c", blocked, "predict_onnx.py", "demo.onnx", *images], work)
    assert top1_of_onnx_script(alone) == from_onnx


@pytest.mark.slow
def test_python_api_predicts_what_the_cli_predicted(demo):
    work, _, _ = demo
    (code,) = blocks("python", PYTHON_API)
    *printed, unreadable = run([sys.executable, "-c", code], work).splitlines()
    with (work / "predictions.csv").open(newline="") as handle:
        top1 = {row["path"]: row["class_1"] for row in csv.DictReader(handle)}
    # "demo-images/0000-pairing+0.png ['pairing+0', ...] [0.85, ...]", in input order.
    from_api = {line.split(" ", 1)[0]: re.search(r"\['([^']+)'", line).group(1) for line in printed}
    assert from_api == top1 and list(from_api) == sorted(top1)
    assert unreadable == "[]"


@pytest.mark.slow
def test_pt2_exports_and_loads_both_ways(demo):
    work, env, _ = demo
    (command,) = blocks("bash", PT2)
    run(["bash", "-euo", "pipefail", "-c", command], work, env)
    with_torch_export, with_load_pt2 = blocks("python", PT2)
    assert run([sys.executable, "-c", with_torch_export], work).strip() == "torch.Size([2, 4])"
    classes = [f"pairing+{k}" for k in range(4)]
    assert run([sys.executable, "-c", with_load_pt2], work).strip() == repr(classes)
