"""TrainConfig.check(): every option it refuses is named, with what was given."""

from __future__ import annotations

from pathlib import Path

import pytest

from bcnn_triton.config import DataConfig, TrainConfig
from bcnn_triton.errors import UserInputError


def _config(**overrides) -> TrainConfig:
    return TrainConfig(data=DataConfig(), out=Path("run"), **overrides)


@pytest.mark.parametrize("factor", [0, 1.0, 1.5, -0.1, float("nan"), "0.1", True])
def test_plateau_factor_outside_0_and_1_is_refused(factor):
    with pytest.raises(UserInputError, match=r"plateau_factor must be a number between 0 and 1"):
        _config(plateau_factor=factor).check()


def test_a_plateau_factor_between_0_and_1_is_accepted():
    _config(plateau_factor=0.5).check()


def test_an_unknown_resume_mode_names_the_flag():
    with pytest.raises(UserInputError, match=r"^--resume must be one of never, required, auto"):
        _config(resume="sometimes").check()
