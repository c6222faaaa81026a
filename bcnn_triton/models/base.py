"""What every classifier on a backbone shares, built in one place: checked arguments, the
backbone(s), the optional 1×1 reduction, the classifier, the split into pretrained backbone and
new head, a backbone freeze that also stops BatchNorm statistics, and checked images.

A model class says only what is its own (as timm's ``build_model_with_cfg`` lets a model say
only its config): its ``head`` name, its constructor's options, their checks, its pooling module
with the descriptor size, and how it pools. :class:`BackboneClassifier` builds the rest.
"""

from __future__ import annotations

import abc
import inspect
import itertools
import numbers
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from bcnn_triton.models.backbones import (
    build_backbone,
    check_backbone,
    feature_channels,
    min_input_size,
    reduction_block,
)

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


def _check_common_arguments(arguments: Mapping[str, Any]) -> None:
    check_backbone(arguments["backbone"])
    second_backbone = arguments.get("second_backbone")
    second_weights = arguments.get("second_weights")
    if second_backbone is not None:
        check_backbone(second_backbone, "second_backbone")
    elif second_weights is not None:
        raise ValueError(
            f"second_weights needs a second_backbone; got second_weights={second_weights!r} "
            "with second_backbone=None"
        )
    check_positive_int("num_classes", arguments["num_classes"])
    check_positive_int("reduce_dim", arguments["reduce_dim"], optional=True)


def _optional_reduction(backbone: str | None, reduce_dim: int | None) -> nn.Sequential | None:
    if backbone is None or reduce_dim is None:
        return None
    return reduction_block(feature_channels(backbone), reduce_dim)


class BackboneClassifier(nn.Module, abc.ABC):
    """Base of the models: one or two backbones (``features``, ``second_features``) and a head.

    A subclass sets ``head``, lists its options in its constructor's signature (``backbone``,
    ``num_classes``, ``weights``, ``reduce_dim``, ``freeze_backbone``, optionally
    ``second_backbone`` and ``second_weights``, then its own), and passes them on with
    ``super().__init__(locals())``. It overrides :meth:`_check_head_options` (its own options,
    checked before any backbone is built), :meth:`_build_pool` (its pooling modules and the
    descriptor size) and :meth:`_pool` (feature maps → descriptor).

    Built in this order, which fixes the order of ``parameters()`` (and so of optimizer state in
    checkpoints): ``features``, ``second_features``, ``reduction``, ``second_reduction`` (1×1
    conv + BN + ReLU to ``reduce_dim`` channels, or None), the pool, ``fc``.

    Parameters of ``features`` and ``second_features`` are the backbone; every other parameter
    is the head. While frozen, the backbone's parameters have ``requires_grad=False`` and the
    backbone stays in eval mode through ``model.train()``, so BatchNorm uses and keeps its
    running statistics.
    """

    features: nn.Module
    second_features: nn.Module | None
    reduction: nn.Module | None
    second_reduction: nn.Module | None
    fc: nn.Linear
    #: The head name of the subclass (a key of ``bcnn_triton.config.HEAD_SPECS``).
    head: ClassVar[str]

    def __init__(self, arguments: Mapping[str, Any]) -> None:
        """Build the model from the subclass constructor's arguments (its ``locals()``)."""
        super().__init__()
        self._backbone_frozen = False
        self._record_config(arguments)
        # Arguments are checked before the backbones, slow to build (or to download), are built.
        _check_common_arguments(arguments)
        self._check_head_options(arguments)

        backbone, reduce_dim = arguments["backbone"], arguments["reduce_dim"]
        second_backbone = arguments.get("second_backbone")
        self.features = build_backbone(backbone, arguments["weights"])
        self.second_features = (
            None
            if second_backbone is None
            else build_backbone(second_backbone, arguments.get("second_weights"))
        )
        self.reduction = _optional_reduction(backbone, reduce_dim)
        self.second_reduction = _optional_reduction(second_backbone, reduce_dim)
        channels = reduce_dim or feature_channels(backbone)
        second_channels = None
        if second_backbone is not None:
            second_channels = reduce_dim or feature_channels(second_backbone)
        descriptor_size = self._build_pool(arguments, channels, second_channels)
        self.fc = linear_classifier(descriptor_size, arguments["num_classes"])

        self._min_input_size = max(
            min_input_size(name) for name in (backbone, second_backbone) if name is not None
        )
        self.set_backbone_frozen(arguments["freeze_backbone"])

    def _check_head_options(self, arguments: Mapping[str, Any]) -> None:
        """Raise ValueError naming a bad option of the head (the subclass's own arguments)."""

    @abc.abstractmethod
    def _build_pool(
        self, arguments: Mapping[str, Any], channels: int, second_channels: int | None
    ) -> int:
        """Register the head's pooling modules; return the descriptor size D.

        ``channels`` (and ``second_channels`` with a second stream) are those of the maps the
        pool receives, after any reduction.
        """

    @abc.abstractmethod
    def _pool(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Feature map(s) (N, C, h, w) [and (N, C2, h, w)] → descriptor (N, D)."""

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments as a JSON-serialisable dict, for ``model_from_config``.

        ``weights`` are None (a checkpoint carries them), ``freeze_backbone`` is the current
        state, and ``head`` says which model (``"bilinear"`` or ``"gap"``).
        """
        return {**self._config, "freeze_backbone": self.backbone_frozen}

    def _record_config(self, arguments: Mapping[str, Any]) -> None:
        """Keep the constructor's arguments (its ``locals()``) for :attr:`config`.

        The names come from the subclass's ``__init__`` signature, so a new argument is recorded
        without restating it; numbers become plain ints and floats, and arguments naming
        weights become None (the checkpoint carries the weights).
        """
        parameters = inspect.signature(type(self).__init__).parameters
        self._config = {"head": self.head}
        for name in parameters:
            if name != "self":
                self._config[name] = _plain_value(name, arguments[name])

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
        """Logits: (N, 3, H, W) → (N, num_classes): ``fc`` on the :meth:`descriptor`."""
        return self.fc(self.descriptor(images))

    def descriptor(self, images: torch.Tensor) -> torch.Tensor:
        """The pooled descriptor before the classifier: (N, 3, H, W) → (N, D).

        Each stream is its backbone's map, reduced if ``reduce_dim`` is set; a second stream's
        map is resized (bilinear, ``align_corners=False``) to the first one's h×w.
        """
        self._check_images(images)
        x = self._stream(self.features, self.reduction, images)
        if self.second_features is None:
            return self._pool(x, None)
        y = self._stream(self.second_features, self.second_reduction, images)
        if y.shape[-2:] != x.shape[-2:]:
            y = nn.functional.interpolate(
                y, size=x.shape[-2:], mode="bilinear", align_corners=False
            )
        return self._pool(x, y)

    @staticmethod
    def _stream(
        features: nn.Module, reduction: nn.Module | None, images: torch.Tensor
    ) -> torch.Tensor:
        x = features(images)
        return x if reduction is None else reduction(x)

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
