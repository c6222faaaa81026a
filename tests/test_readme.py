"""README.md, the front door: its two commands come first and are the ones CI runs, what they
name exists, and it stays short enough to read in five minutes (the manual is docs/)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_README_LINES = 250


def _readme_commands() -> list[str]:
    first_block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [line.split("  #")[0].strip() for line in first_block.group(1).splitlines()]


def test_readme_starts_with_the_main_job_and_the_test_command():
    main_job, tests = _readme_commands()
    assert main_job == "pip install -e '.[plot]' && bcnn-triton train"
    assert tests == "pip install -e '.[test]' && python -m pytest"


def test_readme_is_short():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines; keep it within {MAX_README_LINES} and move detail to docs/"
    )


def test_ci_runs_the_readme_test_command():
    install, run = _readme_commands()[1].split(" && ")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install in ci and run in ci


def test_readme_extras_and_console_script_exist():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {"plot", "test"} <= set(project["optional-dependencies"])
    assert project["scripts"]["bcnn-triton"] == "bcnn_triton.cli:main"


def test_no_dependency_caps_a_future_release():
    """A resolver must be able to pair the project with a newer torch (or anything else): lower
    bounds only; a private API that changes is guarded in the code instead."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [
        r for extra in project["optional-dependencies"].values() for r in extra
    ]
    capped = [r for r in requirements if re.search(r"<|==|~=|!=", r.split(";")[0])]
    assert not capped
