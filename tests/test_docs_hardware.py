"""docs/hardware.md: its Python examples run, and its commands exist with the flags they use.

What the commands do is tested where they live: ``bcnn-triton doctor`` in
tests/cli/test_cli_doctor.py, ``bench/compile_report.py`` in
tests/kernels/test_kernel_compile_targets.py.
"""

from __future__ import annotations

import doctest
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "hardware.md"


def _commands() -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line]


def test_the_python_examples_run():
    result = doctest.testfile(str(DOC), module_relative=False, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("words", _commands(), ids=lambda words: " ".join(words))
def test_each_command_exists_with_its_flags(words):
    if words[0] == "bcnn-triton":
        from bcnn_triton.cli import build_parser

        build_parser().parse_args(words[1:])  # SystemExit on an unknown command or flag
    else:
        assert words[:2] == ["TRITON_INTERPRET=0", "python"], words
        assert words[2] == "bench/compile_report.py"
        sys.path.insert(0, str(ROOT / "bench"))
        from compile_report import build_parser

        build_parser().parse_args(words[3:])


def test_the_doc_names_every_target_the_compile_test_checks():
    sys.path.insert(0, str(ROOT / "bench"))
    from compile_report import TARGETS

    text = DOC.read_text()
    assert all(arch in text for arch in TARGETS)
