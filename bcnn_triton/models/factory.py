"""Build a model by head name, or rebuild one from its ``config`` to load a checkpoint."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from torch import nn

from bcnn_triton.config import HEAD_SPECS, HEADS

__all__ = ["HEADS", "create_model", "model_class", "model_from_config"]


def model_class(head: str) -> type[nn.Module]:
    """The model class registered for ``head`` in ``bcnn_triton.config.HEAD_SPECS``.

    Example:
        >>> model_class("gap").__name__
        'GlobalPoolCNN'
    """
    if head not in HEAD_SPECS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}; got {head!r}")
    module_name, class_name = HEAD_SPECS[head].model.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def create_model(head: str = "bilinear", **kwargs: Any) -> nn.Module:
    """The model of ``head`` (``BilinearCNN`` for "bilinear", ``GlobalPoolCNN`` for "gap"...).

    Example:
        >>> create_model("gap", backbone="tiny", num_classes=5)(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 5])
    """
    return model_class(head)(**kwargs)


def model_from_config(config: Mapping[str, Any]) -> nn.Module:
    """The architecture a model's ``config`` describes, freshly initialised.

    Load the trained weights into it with ``load_state_dict``.

    Example:
        >>> model = create_model("bilinear", backbone="tiny", num_classes=5)
        >>> clone = model_from_config(model.config)
        >>> clone.load_state_dict(model.state_dict())
        <All keys matched successfully>
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict; got {type(config).__name__}")
    kwargs = dict(config)
    head = kwargs.pop("head", "bilinear")
    return create_model(head, **kwargs)
