"""Pretrained backbone weights: a torchvision weights enum, its name, or a local state-dict file;
for timm backbones ``"DEFAULT"`` (the pretrained weights of the model's tag) or a local file.

Enum weights are read from torchvision's cache (``$TORCH_HOME/hub/checkpoints``) and downloaded
there when missing, as torchvision does; timm's from the Hugging Face cache. Where that cannot
happen (no network, or a local file that does not exist) one :class:`WeightsUnavailableError`
says how to pass a local file instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torchvision.models import WeightsEnum, get_model_weights

from bcnn_triton.errors import UserInputError

__all__ = [
    "TIMM_PRETRAINED",
    "WeightsSpec",
    "WeightsUnavailableError",
    "load_weights",
    "resolve_timm_weights",
    "resolve_weights",
    "timm_weights_unavailable",
]

#: What the ``weights`` argument of the models accepts.
WeightsSpec = WeightsEnum | str | os.PathLike | None

# A string with one of these endings, or with a path separator, is a file name, never a weight
# name: a missing file then reads as a missing file, not as an unknown enum member.
_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar", ".safetensors")
#: What ``resolve_timm_weights`` returns for the pretrained weights of the model's tag.
TIMM_PRETRAINED = "DEFAULT"


class WeightsUnavailableError(UserInputError, RuntimeError):
    """Pretrained weights that could be neither found locally nor downloaded.

    Its ``command_line`` wording names ``--weights PATH`` where the message names ``weights=``.
    """


def _cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _looks_like_path(name: str) -> bool:
    return os.sep in name or "/" in name or name.lower().endswith(_FILE_SUFFIXES)


def resolve_weights(backbone: str, weights: WeightsSpec) -> WeightsEnum | Path | None:
    """The weights enum member or the local file that ``weights`` names for ``backbone``.

    ``weights`` is None, a member of the backbone's torchvision enum, a name of one
    (``"DEFAULT"``, ``"IMAGENET1K_V1"``, ``"VGG16_Weights.IMAGENET1K_V1"``), or a path to a
    state-dict file. Backbones outside torchvision (``"tiny"``) take only a path.

    Raises:
        ValueError: a name or enum member that does not belong to this backbone.
        WeightsUnavailableError: a path to a file that does not exist.

    Example:
        >>> resolve_weights("vgg16", "DEFAULT")
        VGG16_Weights.IMAGENET1K_V1
    """
    if weights is None:
        return None
    if isinstance(weights, os.PathLike):
        return _existing_file(backbone, Path(weights))
    enum = _weights_enum(backbone)
    if isinstance(weights, WeightsEnum):
        if enum is None or not isinstance(weights, enum):
            raise ValueError(
                f"weights={weights!r} are not weights of backbone {backbone!r}; "
                f"{_accepted_weights(backbone, enum)}"
            )
        return weights
    if not isinstance(weights, str):
        raise TypeError(
            "weights must be None, a torchvision weights enum member, its name or a file path; "
            f"got {type(weights).__name__}"
        )
    if enum is not None and not _looks_like_path(weights):
        try:
            return enum.verify(weights)
        except KeyError:
            pass
    if _looks_like_path(weights) or Path(weights).is_file():
        return _existing_file(backbone, Path(weights))
    raise ValueError(
        f"weights={weights!r} is neither a weight name of backbone {backbone!r} nor an existing "
        f"file; {_accepted_weights(backbone, enum)}"
    )


def load_weights(backbone: str, weights: WeightsEnum | Path) -> dict[str, torch.Tensor]:
    """The state dict of resolved ``weights``: read from the file, the cache, or downloaded.

    Raises:
        WeightsUnavailableError: the enum's file is not cached and cannot be downloaded.
        ValueError: the file cannot be read as a state dict.
    """
    if isinstance(weights, Path):
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as err:
            # Not torch's message: for a file holding Python objects it advises
            # weights_only=False, i.e. running code from the file.
            raise ValueError(
                f"weights file {str(weights)!r} for backbone {backbone!r} cannot be read as a "
                f"state dict: it is corrupt, or not a file saved with torch.save(state_dict) "
                f"({type(err).__name__})"
            ) from err
        if not isinstance(state, dict):
            raise ValueError(
                f"weights file {str(weights)!r} for backbone {backbone!r} holds a "
                f"{type(state).__name__}, not a state dict"
            )
        return state
    try:
        # Called through the module attribute (as torchvision's own loader is not) so the
        # download can be replaced in tests; a cached file is read without any network access.
        return torch.hub.load_state_dict_from_url(weights.url, progress=True, check_hash=True)
    except OSError as err:
        file_name = weights.url.rsplit("/", 1)[-1]
        problem = (
            f"pretrained weights {weights!r} for backbone {backbone!r} could not be had offline: "
            f"{file_name} is not in torchvision's cache ($TORCH_HOME/hub/checkpoints, here "
            f"{_cache_dir()}) and downloading {weights.url} failed ({type(err).__name__}: "
            f"{err}). Copy the file into that folder, or pass a local file: "
        )
        raise WeightsUnavailableError(
            f'{problem}weights="/path/to/{file_name}"',
            command_line=f"{problem}--weights /path/to/{file_name} (or --weights none to start "
            "from random weights)",
        ) from err


def _weights_enum(backbone: str) -> type[WeightsEnum] | None:
    try:
        return get_model_weights(backbone)
    except ValueError:
        return None


def _accepted_weights(backbone: str, enum: type[WeightsEnum] | None) -> str:
    if enum is None:
        return f"backbone {backbone!r} has no torchvision weights: pass a path to a state-dict file"
    names = ", ".join(enum.__members__)
    return f"backbone {backbone!r} accepts {enum.__name__}.{{{names}}}, or a path to a file"


def _existing_file(backbone: str, path: Path, downloads: str | None = None) -> Path:
    path = path.expanduser()
    if not path.is_file():
        downloads = downloads or (
            f"torchvision's downloads are in $TORCH_HOME/hub/checkpoints, here {_cache_dir()}"
        )
        raise WeightsUnavailableError(
            f"weights file {str(path)!r} for backbone {backbone!r} does not exist; pass the path "
            f"of a saved state dict ({downloads})"
        )
    return path


def _hub_cache() -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    return str(HF_HUB_CACHE)


def resolve_timm_weights(backbone: str, weights: object, has_pretrained: bool) -> str | Path | None:
    """:data:`TIMM_PRETRAINED`, the local file, or None (random init) that ``weights`` names.

    ``weights`` is None, ``"DEFAULT"`` (the pretrained weights of the tag in the model's name,
    or of timm's default tag), or a path to a file: the state dict of the timm model (``.pth``,
    ``.bin``...) or a ``.safetensors`` file, as in the model's Hub repository.

    Raises:
        ValueError: ``"DEFAULT"`` for a model without pretrained weights, or another name.
        WeightsUnavailableError: a path to a file that does not exist.
    """
    downloads = f"timm's downloads are in the Hugging Face cache, here {_hub_cache()}"
    if weights is None:
        return None
    if isinstance(weights, os.PathLike):
        return _existing_file(backbone, Path(weights), downloads)
    if not isinstance(weights, str):
        raise TypeError(
            f"weights of timm backbone {backbone!r} must be None, 'DEFAULT' or a file path; got "
            f"{type(weights).__name__}"
        )
    if weights == TIMM_PRETRAINED and not has_pretrained:
        raise ValueError(
            f"backbone {backbone!r} has no pretrained weights in timm; pass a file or None"
        )
    if weights == TIMM_PRETRAINED:
        return TIMM_PRETRAINED
    if _looks_like_path(weights) or Path(weights).is_file():
        return _existing_file(backbone, Path(weights), downloads)
    raise ValueError(
        f"weights={weights!r} is neither 'DEFAULT' nor an existing file; backbone {backbone!r} "
        "takes 'DEFAULT' (the pretrained weights of the tag in its name, e.g. "
        "timm/resnet50.a1_in1k), a state-dict or safetensors file, or None"
    )


def timm_weights_unavailable(backbone: str, error: Exception) -> WeightsUnavailableError:
    """The one-line error for pretrained timm weights neither cached nor downloadable."""
    model_name = backbone.split("/", 1)[1]
    first_sentence = str(error).split(". ")[0].strip()
    problem = (
        f"pretrained weights of backbone {backbone!r} could not be had offline: they are not in "
        f"the Hugging Face cache (here {_hub_cache()}) and downloading them failed "
        f"({type(error).__name__}: {first_sentence}). Pre-download them on a machine with a "
        f"network (python -c \"import timm; timm.create_model('{model_name}', pretrained=True)\")"
        " and copy that cache here, or pass a local file: "
    )
    return WeightsUnavailableError(
        f'{problem}weights="/path/to/model.safetensors"',
        command_line=f"{problem}--weights /path/to/model.safetensors (or --weights none to start "
        "from random weights)",
    )
