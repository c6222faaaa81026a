"""What every classifier on a backbone shares: checked arguments and images, the split into
pretrained backbone and new head, and a backbone freeze that also stops BatchNorm statistics.
"""

from __future__ import annotations

import inspect
import itertools
import numbers
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from bcnn_triton.models.backbones import min_input_size

__all__ = ["BackboneClassifier", "check_positive_int", "linear_classifier"]


def check_positive_int(name: str, value: object, *, optional: bool = False) -> None:
    """ValueError naming ``name`` unless ``value`` is an integer >= 1 (or None if optional)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        expected = "None or an integer >= 1" if optional else "an integer >= 1"
        raise ValueError(f"{name} must be {expected}; got {value!r}")


def linear_classifier(in_features: int, num_classes: int) -> nn.Linear:
    """``Linear(in_features, num_classes)`` with the seed's init: Kaiming-normal weight, zero bias.

    Example:
        >>> linear_classifier(512 * 512, 200).bias.abs().sum().item()
        0.0
    """
    fc = nn.Linear(in_features, num_classes)
    nn.init.kaiming_normal_(fc.weight)
    nn.init.zeros_(fc.bias)
    return fc


def _plain_value(name: str, value: Any) -> Any:
    if name.endswith("weights"):
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return value
    return int(value) if isinstance(value, numbers.Integral) else float(value)


class BackboneClassifier(nn.Module):
    """Base of the models: one or two backbones (``features``, ``second_features``) and a head.

    Subclasses build their modules, then call :meth:`set_backbone_frozen`. Parameters of
    ``features`` and ``second_features`` are the backbone; every other parameter is the head.
    While frozen, the backbone's parameters have ``requires_grad=False`` and the backbone stays
    in eval mode through ``model.train()``, so BatchNorm uses and keeps its running statistics.
    """

    features: nn.Module
    second_features: nn.Module | None
    fc: nn.Linear
    #: The head name of the subclass (a key of ``bcnn_triton.config.HEAD_SPECS``).
    head: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        self._backbone_frozen = False
        self._min_input_size = 1

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments as a JSON-serialisable dict, for ``model_from_config``.

        ``weights`` are None (a checkpoint carries them), ``freeze_backbone`` is the current
        state, and ``head`` says which model (``"bilinear"`` or ``"gap"``).
        """
        return {**self._config, "freeze_backbone": self.backbone_frozen}

    def _record_config(self, arguments: Mapping[str, Any]) -> None:
        """Keep the constructor's arguments (pass ``locals()``) for :attr:`config`.

        The names come from the subclass's ``__init__`` signature, so a new argument is recorded
        without restating it; numbers become plain ints and floats, and arguments naming
        weights become None (the checkpoint carries the weights).
        """
        parameters = inspect.signature(type(self).__init__).parameters
        self._config = {"head": self.head}
        for name in parameters:
            if name != "self":
                self._config[name] = _plain_value(name, arguments[name])

    def _set_min_input_size(self, *backbones: str | None) -> None:
        self._min_input_size = max(min_input_size(name) for name in backbones if name is not None)

    def _backbones(self) -> list[nn.Module]:
        if self.second_features is None:
            return [self.features]
        return [self.features, self.second_features]

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the backbone(s): the pretrained part, fine-tuned at a small rate."""
        return itertools.chain.from_iterable(m.parameters() for m in self._backbones())

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters initialised here: reduction layers (if any) and the classifier."""
        backbone_ids = {id(p) for p in self.backbone_parameters()}
        return (p for p in self.parameters() if id(p) not in backbone_ids)

    @property
    def backbone_frozen(self) -> bool:
        """Whether the backbone is frozen (see :meth:`set_backbone_frozen`)."""
        return self._backbone_frozen

    def set_backbone_frozen(self, frozen: bool) -> None:
        """Freeze (``True``) or unfreeze the backbone.

        Frozen: ``requires_grad=False`` on every backbone parameter, and the backbone in eval
        mode (BatchNorm running statistics neither used from the batch nor updated) even after
        ``model.train()``. Unfrozen: trainable again, in the model's own mode.
        """
        self._backbone_frozen = bool(frozen)
        for parameter in self.backbone_parameters():
            parameter.requires_grad_(not self._backbone_frozen)
        for backbone in self._backbones():
            backbone.train(self.training and not self._backbone_frozen)

    def train(self, mode: bool = True) -> BackboneClassifier:
        super().train(mode)
        if self._backbone_frozen:
            for backbone in self._backbones():
                backbone.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits: (N, 3, H, W) → (N, num_classes): ``fc`` on the subclass's ``descriptor``."""
        return self.fc(self.descriptor(images))

    def _check_images(self, images: object) -> None:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor; got {type(images).__name__}")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images must have shape (N, 3, H, W); got shape {tuple(images.shape)}"
            )
        if not images.is_floating_point():
            raise TypeError(
                f"images must be a floating-point tensor (normalised images); got {images.dtype}"
            )
        if min(images.shape[-2:]) < self._min_input_size:
            raise ValueError(
                f"images must be at least {self._min_input_size}×{self._min_input_size} for this "
                f"backbone; got H×W = {images.shape[-2]}×{images.shape[-1]}"
            )
