"""The options of a run, defined once: names the command line offers, data and training configs.

Nothing here imports torch. The command line builds its parser from these definitions (so
``bcnn-triton --help`` and argument errors answer at once), and the library takes its names
and defaults from here: models (BACKBONE_SPECS, HEAD_SPECS), data (DATASETS, DataConfig) and
training (TrainConfig, whose defaults are the published recipe; DEMO for the synthetic demo).
Adding a backbone, head, dataset or run option is one entry here plus its implementation.
"""

from __future__ import annotations

import math
import os
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bcnn_triton.errors import UserInputError

if TYPE_CHECKING:
    from bcnn_triton.data.transforms import Preprocessing

__all__ = [
    "AMP_MODES",
    "BACKBONES",
    "BACKBONE_SPECS",
    "DATASETS",
    "DEMO",
    "EXPORT_FORMATS",
    "HEADS",
    "HEAD_SPECS",
    "MIN_IMAGE_SIZE",
    "RESUME_MODES",
    "STAGES",
    "TIMM_PREFIX",
    "BackboneSpec",
    "DataConfig",
    "HeadSpec",
    "TrainConfig",
    "default_of",
    "is_timm_backbone",
    "min_image_size",
]


@dataclass(frozen=True)
class BackboneSpec:
    """What is known of a backbone before it is built."""

    channels: int  # C of its feature map
    min_input_size: int  # smallest image side that still leaves a feature map of at least 1×1
    pretrained: bool = True  # has torchvision weights (``weights="DEFAULT"`` loads them)


BACKBONE_SPECS: dict[str, BackboneSpec] = {
    # conv5_3 + ReLU after four 2×2 max-pools (the fifth, last one is cut off as in the seed).
    "vgg16": BackboneSpec(512, 16),
    "vgg19": BackboneSpec(512, 16),
    "resnet18": BackboneSpec(512, 1),
    "resnet34": BackboneSpec(512, 1),
    "resnet50": BackboneSpec(2048, 1),
    "resnet101": BackboneSpec(2048, 1),
    # Four conv-BN-ReLU blocks, random init: the CPU demo and the tests.
    "tiny": BackboneSpec(64, 1, pretrained=False),
}
#: Backbone names accepted by the models and ``--backbone``, besides ``timm/<model name>``.
BACKBONES: tuple[str, ...] = tuple(BACKBONE_SPECS)
#: Prefix of a timm backbone: ``timm/<model name>``, the model's Hugging Face Hub id (e.g.
#: ``timm/resnet50.a1_in1k``); needs the ``[timm]`` extra.
TIMM_PREFIX = "timm/"


def is_timm_backbone(name: object) -> bool:
    """Whether ``name`` has the form ``timm/<model name>`` (whether timm has it is not checked)."""
    return isinstance(name, str) and name.startswith(TIMM_PREFIX)


@dataclass(frozen=True)
class HeadSpec:
    """A classifier head: its model class (imported when first built) and how it pools."""

    model: str  # "module:Class"; the class takes (backbone, num_classes, *, weights, reduce_dim)
    pooling: str  # shown in the demo's table and in ``--help``


HEAD_SPECS: dict[str, HeadSpec] = {
    "bilinear": HeadSpec("bcnn_triton.models.bilinear_cnn:BilinearCNN", "Gram, signed sqrt, L2"),
    "isqrt": HeadSpec("bcnn_triton.models.isqrt_cov_cnn:ISqrtCovCNN", "covariance, matrix sqrt"),
    "gap": HeadSpec("bcnn_triton.models.global_pool_cnn:GlobalPoolCNN", "global average"),
}
#: Head names accepted by ``create_model`` and ``--head``.
HEADS: tuple[str, ...] = tuple(HEAD_SPECS)

#: ``--dataset`` names: generated images, CUB's native layout, image folders, torchvision's sets.
DATASETS: tuple[str, ...] = ("synthetic", "cub", "folder", "aircraft", "cars", "flowers")
#: ``--amp`` choices: full precision, or autocast to bfloat16 / float16 (with a GradScaler).
AMP_MODES: tuple[str, ...] = ("off", "bf16", "fp16")
#: ``bcnn-triton export`` formats → file extension.
EXPORT_FORMATS: dict[str, str] = {"onnx": ".onnx", "pt2": ".pt2"}
#: Stages of the B-CNN recipe: "fc" trains the head on a frozen backbone, "all" fine-tunes all.
STAGES: tuple[str, ...] = ("fc", "all")
#: "never": refuse an ``out`` that already holds checkpoints; "required": continue from them
#: (error if none); "auto": continue if there are any, else start fresh (for torchrun restarts).
RESUME_MODES: tuple[str, ...] = ("never", "required", "auto")
#: Smallest image side the data pipeline takes (the synthetic images need a few pixels per cell).
MIN_IMAGE_SIZE = 8


def min_image_size(backbone: str) -> int:
    """The smallest ``image_size`` a run with ``backbone`` accepts (data and backbone alike)."""
    spec = BACKBONE_SPECS.get(backbone)
    return max(MIN_IMAGE_SIZE, spec.min_input_size if spec else 1)


@dataclass
class DataConfig:
    """What to load. ``root`` is ignored for ``dataset="synthetic"``.

    ``val_fraction`` of the training pool (per class) is held out for model selection and the
    LR schedule; ``test_fraction`` is used only for a single-tree image folder, which has no
    test split of its own. The ``synthetic_*`` fields size the built-in synthetic dataset.
    """

    dataset: str = "synthetic"
    root: str | None = None
    image_size: int = 448
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0
    download: bool = False
    bbox_crop: bool = False
    synthetic_classes: int = 4
    synthetic_train_size: int = 2048
    synthetic_test_size: int = 1024
    synthetic_options: dict = field(default_factory=dict)
    # None: what torchvision's backbones expect (ImageNet's mean and std, bilinear resizing).
    # Training fills them from a timm backbone's pretrained config.
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    interpolation: str | None = None

    @property
    def preprocessing(self) -> Preprocessing:
        """How evaluation images are prepared: resize, centre crop, normalization.

        ``mean``, ``std`` and ``interpolation`` where set, else ImageNet's mean and std and
        bilinear resizing. Synthetic images are generated at ``image_size`` with the same
        normalization, which is what this preprocessing gives for an image file of that size
        (resize and crop are then no-ops).
        """
        # Imported on use: this module must import without torch (the parser is built from it).
        from bcnn_triton.data.transforms import Preprocessing

        given = {name: getattr(self, name) for name in ("mean", "std", "interpolation")}
        return Preprocessing(
            self.image_size, **{name: value for name, value in given.items() if value is not None}
        )


def _default_workers() -> int:
    return min(8, os.cpu_count() or 1)


@dataclass
class TrainConfig:
    """Everything a training run needs; the defaults are the published B-CNN recipe
    (HaoMood/bilinear-cnn: VGG-16 with ImageNet weights, 448 px, SGD with momentum 0.9,
    stage fc 55 epochs at lr 1.0, stage all 25 epochs at lr 1e-2, batch 64).

    ``epochs``/``lr``/``weight_decay`` map stage → value. ``weights="DEFAULT"`` loads
    torchvision's default weights for backbones that have them (``tiny`` starts at random).
    ``batch_size`` is the global batch, split evenly over torchrun processes. ``init``: weights
    (a best.pt or checkpoint) for stage "all" when it runs without stage "fc" in the same call;
    by default ``out/fc/best.pt``.
    """

    data: DataConfig
    out: Path
    head: str = "bilinear"
    backbone: str = "vgg16"
    weights: str | None = "DEFAULT"
    reduce_dim: int | None = None
    stages: tuple[str, ...] = STAGES
    epochs: dict[str, int] = field(default_factory=lambda: {"fc": 55, "all": 25})
    lr: dict[str, float] = field(default_factory=lambda: {"fc": 1.0, "all": 1e-2})
    weight_decay: dict[str, float] = field(default_factory=lambda: {"fc": 1e-8, "all": 1e-5})
    momentum: float = 0.9
    batch_size: int = 64
    plateau_factor: float = 0.1
    plateau_patience: int = 3
    workers: int = field(default_factory=_default_workers)
    amp: str = "off"
    channels_last: bool = False
    sync_bn: bool = False
    seed: int = 0
    skip_bad_images: bool = False
    resume: str = "never"
    init: Path | None = None
    progress: bool = True

    def model_weights(self) -> str | None:
        """``weights`` as the model takes it: "DEFAULT" means none for a backbone without any.

        For a timm backbone "DEFAULT" means the pretrained weights of its tag.
        """
        spec = BACKBONE_SPECS.get(self.backbone)
        if self.weights == "DEFAULT" and spec is not None and not spec.pretrained:
            return None
        return self.weights

    def with_backbone_preprocessing(self) -> TrainConfig:
        """This config, with the data's unset mean, std and interpolation taken from a timm
        backbone's pretrained config (torchvision's backbones keep ImageNet's and bilinear)."""
        if not is_timm_backbone(self.backbone):
            return self
        # Imported on use: it imports torch and timm.
        from bcnn_triton.models.timm_backbone import timm_preprocessing

        pretrained = timm_preprocessing(self.backbone)
        unset = {
            name: pretrained[name]
            for name in ("mean", "std", "interpolation")
            if getattr(self.data, name) is None
        }
        return replace(self, data=replace(self.data, **unset))

    def stage_options(self, stage: str) -> dict[str, Any]:
        """JSON-ready options of one stage (per-stage values resolved), for metrics.json."""
        options = {
            key: str(value) if isinstance(value, Path) else value
            for key, value in asdict(self).items()
            if key not in ("data", "epochs", "lr", "weight_decay")
        }
        per_stage = {key: getattr(self, key)[stage] for key in ("epochs", "lr", "weight_decay")}
        return {"stage": stage, **per_stage, **options}

    def check(self) -> None:
        """Raise UserInputError naming the option (as its command-line flag) that is wrong.

        Everything that can be known before data and model are built is checked here, once.
        """
        _check_choice("--head", self.head, HEADS)
        if not is_timm_backbone(self.backbone):
            _check_choice("--backbone", self.backbone, BACKBONES)
        _check_choice("--amp", self.amp, AMP_MODES)
        _check_choice("--resume", self.resume, RESUME_MODES)
        if not self.stages or any(stage not in STAGES for stage in self.stages):
            raise UserInputError(f"stages must be among {', '.join(STAGES)}; got {self.stages}")
        minimum = _checked_min_image_size(self.backbone)
        if self.data.image_size < minimum:
            raise UserInputError(
                f"--image-size must be at least {minimum} for backbone {self.backbone}; "
                f"got {self.data.image_size}"
            )
        for stage in self.stages:
            _check_number(f"--epochs ({stage})", self.epochs.get(stage), 1, integer=True)
            _check_number(f"--lr ({stage})", self.lr.get(stage), 0.0, strict=True)
            _check_number(f"--weight-decay ({stage})", self.weight_decay.get(stage), 0.0)
        _check_number("--batch-size", self.batch_size, 1, integer=True)
        _check_number("--workers", self.workers, 0, integer=True)
        _check_number("--plateau-patience", self.plateau_patience, 0, integer=True)
        _check_fraction("plateau_factor", self.plateau_factor)  # no flag: Python API only
        if self.reduce_dim is not None:
            _check_number("--reduce-dim", self.reduce_dim, 1, integer=True)
        for name in ("val_fraction", "test_fraction"):
            _check_fraction("--" + name.replace("_", "-"), getattr(self.data, name))


def _check_fraction(name: str, value: object) -> None:
    valid = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (valid and 0.0 < value < 1.0):
        raise UserInputError(f"{name} must be between 0 and 1 (exclusive); got {value!r}")


def _checked_min_image_size(backbone: str) -> int:
    if not is_timm_backbone(backbone):
        return min_image_size(backbone)
    # Imported on use: it imports torch and timm, and checks that the timm model exists.
    from bcnn_triton.models.timm_backbone import timm_min_input_size

    try:
        return max(MIN_IMAGE_SIZE, timm_min_input_size(backbone))
    except ValueError as error:
        raise UserInputError(f"--backbone {backbone}: {error}") from None


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserInputError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_number(
    name: str, value: object, minimum: float, *, integer: bool = False, strict: bool = False
) -> None:
    kind = int if integer else (int, float)
    valid = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
    if valid and (value > minimum if strict else value >= minimum):
        return
    bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
    raise UserInputError(f"{name} must be {'an integer ' if integer else ''}{bound}; got {value!r}")


#: ``bcnn-triton train`` on synthetic data (the main job): what differs from the recipe. Sized to
#: finish in about a minute and a half on 2 idle CPU cores. The backbone stays frozen at its
#: random init, so the three heads see the very same features; lr 3 instead of the recipe's 1.0
#: because random features give a descriptor whose class-dependent part is small, which lr 1.0
#: does not learn within the demo's 20 epochs. Keys are fields of TrainConfig or DataConfig, and
#: ``heads``.
DEMO: dict[str, Any] = {
    "heads": ("bilinear", "isqrt", "gap"),
    "backbone": "tiny",
    "weights": None,
    "image_size": 64,
    "stages": ("fc",),
    "epochs": {"fc": 20, "all": 8},
    "lr": {"fc": 3.0, "all": 1e-2},
    "batch_size": 32,
    "workers": 0,
}


def default_of(name: str) -> Any:
    """The recipe's default of a TrainConfig or DataConfig field (``heads``: the one head)."""
    if name == "heads":
        return (default_of("head"),)
    for config_type in (TrainConfig, DataConfig):
        for item in fields(config_type):
            if item.name == name:
                if item.default is not MISSING:
                    return item.default
                if item.default_factory is not MISSING:
                    return item.default_factory()
                break
    raise KeyError(f"no default for {name!r}")
