"""docs/backbones.md: its Python examples pass, and its commands parse into valid runs."""

from __future__ import annotations

import doctest
import re
import shlex
from pathlib import Path

import pytest

from bcnn_triton.cli import build_parser
from bcnn_triton.cli.train import build_train_configs

pytest.importorskip("timm")

DOC = Path(__file__).resolve().parents[1] / "docs" / "backbones.md"


def test_examples_pass(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = doctest.testfile(str(DOC), module_relative=False, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_train_commands_make_checked_configs(tmp_path):
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S)
    commands = [c for b in blocks for c in b.replace("\\\n", " ").splitlines() if "train" in c]
    assert commands
    for command in commands:
        words = shlex.split(command.split("  #")[0])[1:]
        # The data folder is the reader's; the rest (backbone, head, sizes) is checked as given.
        data = words.index("--data")
        words[data + 1 : data + 2] = ["synthetic"]
        words[words.index("--out") + 1] = str(tmp_path)
        [config] = build_train_configs(build_parser().parse_args(words))
        assert config.backbone.startswith("timm/") and config.data.image_size == 448
