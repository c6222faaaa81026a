"""Backbones from timm: any timm model, CNN or ViT, cut at its last spatial map.

A backbone ``"timm/<model name>"`` is named like the model's Hugging Face Hub id
(``"timm/resnet50.a1_in1k"``, ``"timm/convnext_tiny.fb_in22k_ft_in1k"``,
``"timm/vit_small_patch14_dinov2.lvd142m"``). Its map is the last feature of timm's public
``forward_intermediates``, after the model's final norm (as the model's own head reads it):
(N, C, H/r, W/r), with C and the stride r read from the model's ``feature_info``. The classifier
head and every layer after that map are pruned (``prune_intermediate_layers``), so each backbone
parameter gets a gradient (DDP needs no ``find_unused_parameters``).

ViT-style models (patch tokens with class or register tokens in front) give their patch tokens
only, viewed as the patch grid: a strided view of the token tensor, no copy (the pooling ops read
any strides). They are built with ``dynamic_img_size=True`` where they take it, so that any
image size works, as with the CNNs.

timm is an optional dependency: ``pip install 'bcnn-triton[timm]'``.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from bcnn_triton.config import TIMM_PREFIX, is_timm_backbone
from bcnn_triton.errors import UserInputError
from bcnn_triton.models.weights import (
    TIMM_PRETRAINED,
    WeightsSpec,
    resolve_timm_weights,
    timm_weights_unavailable,
)

__all__ = [
    "TimmArchitecture",
    "TimmFeatures",
    "TimmUnavailableError",
    "build_timm_backbone",
    "convert_sync_batchnorm",
    "timm_architecture",
    "timm_min_input_size",
    "timm_preprocessing",
]


class TimmUnavailableError(UserInputError, ImportError):
    """A timm backbone was asked for, but timm is not installed."""


def import_timm(backbone: str) -> ModuleType:
    """The ``timm`` module, or TimmUnavailableError saying which extra to install."""
    try:
        import timm
    except ImportError:
        raise TimmUnavailableError(
            f"backbone {backbone!r} needs timm: pip install 'bcnn-triton[timm]'"
        ) from None
    return timm


@dataclass(frozen=True)
class TimmArchitecture:
    """What a timm model's architecture says of its last map and of its inputs."""

    channels: int  # C of the last map (after the final norm)
    reduction: int  # stride r of the last map: an image side of S gives about S / r
    patch_tokens: bool  # ViT-style: the map is the patch tokens, reshaped to the patch grid
    dynamic_img_size: bool  # the model takes dynamic_img_size=True (any image size)
    has_pretrained: bool  # timm knows pretrained weights for this name (its tag)
    data_config: dict[str, Any]  # timm.data.resolve_model_data_config of the model


def _model_name(backbone: str) -> str:
    name = backbone[len(TIMM_PREFIX) :]
    if not name:
        raise ValueError(f"backbone {backbone!r} names no model: pass timm/<model name>")
    return name


def _has_patch_tokens(model: nn.Module) -> bool:
    patch_embed = getattr(model, "patch_embed", None)
    return hasattr(model, "num_prefix_tokens") and hasattr(patch_embed, "dynamic_feat_size")


@functools.lru_cache(maxsize=32)
def timm_architecture(backbone: str) -> TimmArchitecture:
    """Read channels, stride, kind and pretrained config of ``backbone`` from the timm model.

    The model is built on the meta device (no memory, no init) where it can be, once per name
    and process.

    Raises:
        ValueError: timm has no such model or tag.
        TimmUnavailableError: timm is not installed.

    Example:
        >>> timm_architecture("timm/resnet18").channels
        512
    """
    timm = import_timm(backbone)
    name = _model_name(backbone)
    if not timm.is_model(name):
        raise ValueError(f"timm has no model {name!r} (timm.list_models() lists them)")
    try:
        with torch.device("meta"):
            model = timm.create_model(name)
    except Exception:
        # Some models compute with tensors while they are built (e.g. .item() in timm 1.0.3),
        # which the meta device refuses: the CPU gives the same answer, more slowly.
        try:
            model = timm.create_model(name)
        except RuntimeError as error:  # e.g. "Invalid pretrained tag (foo) for resnet50."
            raise ValueError(str(error)) from None
    info = model.feature_info[-1]
    pretrained_cfg = model.pretrained_cfg
    return TimmArchitecture(
        channels=int(info.get("num_chs_norm", info["num_chs"])),
        reduction=int(info["reduction"]),
        patch_tokens=_has_patch_tokens(model),
        dynamic_img_size="dynamic_img_size" in inspect.signature(type(model).__init__).parameters,
        has_pretrained=any(pretrained_cfg.get(key) for key in ("hf_hub_id", "url", "file")),
        data_config=dict(timm.data.resolve_model_data_config(model)),
    )


def check_timm_backbone(name: str, argument: str = "backbone") -> str:
    """``name`` if timm has that model, else ValueError naming ``argument``."""
    try:
        timm_architecture(name)
    except ValueError as error:
        raise ValueError(f"{argument} {name!r}: {error}") from None
    return name


def timm_min_input_size(backbone: str) -> int:
    """Smallest image side for ``backbone``: its stride (a ViT's patch size), for a 1×1 map."""
    return timm_architecture(backbone).reduction


def timm_preprocessing(backbone: str) -> dict[str, Any]:
    """The pretrained config's ``image_size``, ``mean``, ``std`` and ``interpolation``.

    Example:
        >>> timm_preprocessing("timm/vit_small_patch14_dinov2.lvd142m")["image_size"]
        518
    """
    config = timm_architecture(backbone).data_config
    return {
        "image_size": int(config["input_size"][-1]),
        "mean": tuple(float(value) for value in config["mean"]),
        "std": tuple(float(value) for value in config["std"]),
        "interpolation": str(config["interpolation"]),
    }


class TimmFeatures(nn.Module):
    """A timm model cut at its last spatial map: images (N, 3, H, W) → (N, C, H', W').

    ``model`` is pruned here (classifier head and anything after the last map). For a
    ViT-style model the map is a view of its (N, prefix + H'·W', C) tokens: strides
    (T·C, 1, W'·C, C), channels last in memory.

    Attributes:
        channels: C. reduction: the stride (H ≈ H'·reduction). patch_tokens: ViT-style.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.patch_tokens = _has_patch_tokens(model)
        # The final norm stays: the map is read as the model's own head reads it (a ViT's
        # residual stream before it carries a few huge channels that would swamp a covariance).
        model.prune_intermediate_layers(indices=1, prune_norm=False, prune_head=True)
        self.model = model
        info = model.feature_info[-1]
        self.channels = int(info.get("num_chs_norm", info["num_chs"]))
        self.reduction = int(info["reduction"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.patch_tokens:
            (features,) = self.model.forward_intermediates(
                images, indices=1, norm=True, intermediates_only=True
            )
            return features
        # timm's own NCHW output is a contiguous copy; this is a view of the tokens.
        (tokens,) = self.model.forward_intermediates(
            images, indices=1, norm=True, output_fmt="NLC", intermediates_only=True
        )
        height, width = self.model.patch_embed.dynamic_feat_size(tuple(images.shape[-2:]))
        return tokens.unflatten(1, (height, width)).permute(0, 3, 1, 2)


def build_timm_backbone(backbone: str, weights: WeightsSpec = None) -> TimmFeatures:
    """The last-map extractor of ``backbone`` (``"timm/<model name>"``) with ``weights``.

    ``weights``: None (random init), ``"DEFAULT"`` (the pretrained weights of the model's tag,
    from the Hugging Face cache or downloaded there), or a local file (the timm model's state
    dict, ``.safetensors`` or a torch file), loaded strictly by timm's own loader (which also
    converts a model's original checkpoint format where timm knows it).

    Raises:
        ValueError: unknown model, weights that do not fit or cannot be read.
        WeightsUnavailableError: pretrained weights neither cached nor downloadable, or a
            missing file.

    Example:
        >>> build_timm_backbone("timm/resnet18")(torch.rand(2, 3, 64, 64)).shape
        torch.Size([2, 512, 2, 2])
    """
    architecture = timm_architecture(backbone)
    source = resolve_timm_weights(backbone, weights, architecture.has_pretrained)
    options: dict[str, Any] = {"pretrained": source is not None}
    if architecture.dynamic_img_size:
        options["dynamic_img_size"] = True
    if isinstance(source, Path):
        options["pretrained_cfg_overlay"] = {"file": str(source)}
    timm = import_timm(backbone)
    try:
        model = timm.create_model(_model_name(backbone), **options)
    except Exception as error:
        if isinstance(source, Path):
            # Whatever reading or loading the file raised (a truncated file raises struct.error).
            raise _unfit_file(backbone, source, error) from error
        if source == TIMM_PRETRAINED and isinstance(error, OSError):
            raise timm_weights_unavailable(backbone, error) from error
        raise
    return TimmFeatures(model)


def _unfit_file(backbone: str, path: Path, error: Exception) -> ValueError:
    # load_state_dict's message starts with a header line; the next one names the problem.
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    detail = " ".join(lines[:2])
    if len(detail) > 300:
        detail = detail[:300] + "..."
    return ValueError(
        f"weights file {str(path)!r} does not fit backbone {backbone!r} or cannot be read "
        f"(expected the state dict of timm's {_model_name(backbone)}, a .safetensors or torch "
        f"file): {type(error).__name__}: {detail}"
    )


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` with SyncBatchNorm for its BatchNorms: timm's conversion where a backbone is
    from timm (it keeps the activation that timm's BatchNormAct2d applies, which torch's
    ``nn.SyncBatchNorm.convert_sync_batchnorm`` silently drops), torch's otherwise."""
    config = getattr(model, "config", {})
    backbones = (config.get("backbone"), config.get("second_backbone"))
    if not any(is_timm_backbone(name) for name in backbones):
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return import_timm(str(config["backbone"])).layers.convert_sync_batchnorm(model)
