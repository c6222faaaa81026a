"""docs/run-folders.md: its Python examples run as written, its commands parse."""

from __future__ import annotations

import doctest
import re
import shlex
from pathlib import Path

from bcnn_triton.cli import build_parser

DOC = Path(__file__).resolve().parents[1] / "docs" / "run-folders.md"


def test_python_examples_pass():
    result = doctest.testfile(str(DOC), module_relative=False, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_commands_are_valid_command_lines():
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S)
    commands = [line.split("  #")[0] for block in blocks for line in block.splitlines()]
    assert commands
    for command in commands:
        words = shlex.split(command)
        assert words[0] == "bcnn-triton"
        build_parser().parse_args(words[1:])  # exits (failing the test) on an unknown flag
