"""TrainConfig.check: each option is checked before anything is built, named as the user gave it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bcnn_triton.config import DataConfig, TrainConfig
from bcnn_triton.errors import UserInputError


def _config(**overrides) -> TrainConfig:
    return TrainConfig(data=DataConfig(), out=Path("unused"), backbone="tiny", **overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            dict(plateau_factor=1.0),
            r"^plateau_factor must be between 0 and 1 \(exclusive\); got 1.0$",
        ),
        (dict(plateau_factor=0), "^plateau_factor must be between 0 and 1"),
        (dict(plateau_factor="0.5"), "^plateau_factor must be between 0 and 1"),
        (dict(plateau_factor=float("nan")), "^plateau_factor must be between 0 and 1"),
        (dict(plateau_factor=True), "^plateau_factor must be between 0 and 1"),
        (dict(plateau_factor=-0.1), "^plateau_factor must be between 0 and 1"),
        (
            dict(resume="sometimes"),
            "^--resume must be one of never, required, auto; got 'sometimes'$",
        ),
        (dict(plateau_patience=-1), "^--plateau-patience must be an integer >= 0"),
    ],
)
def test_bad_options_are_named(overrides, message):
    with pytest.raises(UserInputError, match=message):
        _config(**overrides).check()


def test_the_defaults_pass():
    _config().check()
