"""Build a model by head name, or rebuild one from its ``config`` to load a checkpoint."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from bcnn_triton.models.bilinear_cnn import BilinearCNN
from bcnn_triton.models.global_pool_cnn import GlobalPoolCNN

__all__ = ["HEADS", "create_model", "model_from_config"]

_MODELS: dict[str, type[nn.Module]] = {"bilinear": BilinearCNN, "gap": GlobalPoolCNN}

#: Head names accepted by :func:`create_model`: bilinear pooling, or global average pooling.
HEADS: tuple[str, ...] = tuple(_MODELS)


def create_model(head: str = "bilinear", **kwargs: Any) -> nn.Module:
    """``BilinearCNN(**kwargs)`` for ``head="bilinear"``, ``GlobalPoolCNN(**kwargs)`` for "gap".

    Example:
        >>> create_model("gap", backbone="tiny", num_classes=5)(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 5])
    """
    if head not in _MODELS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}; got {head!r}")
    return _MODELS[head](**kwargs)


def model_from_config(config: Mapping[str, Any]) -> nn.Module:
    """The architecture a model's ``config`` describes, freshly initialised.

    Load the trained weights into it with ``load_state_dict``.

    Example:
        >>> model = BilinearCNN("tiny", num_classes=5)
        >>> clone = model_from_config(model.config)
        >>> clone.load_state_dict(model.state_dict())
        <All keys matched successfully>
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict; got {type(config).__name__}")
    kwargs = dict(config)
    head = kwargs.pop("head", "bilinear")
    return create_model(head, **kwargs)
