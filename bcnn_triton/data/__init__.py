"""Datasets and transforms for fine-grained recognition: CUB, image folders, torchvision's
FGVC sets, and a synthetic dataset whose classes differ only in second-order statistics."""

from bcnn_triton.data.build import (
    DATASETS,
    DataConfig,
    DataSplits,
    build_datasets,
    detect_dataset,
    stratified_holdout,
)
from bcnn_triton.data.images import (
    ImageBatch,
    ImageRecord,
    ImageRecordDataset,
    UnreadableImage,
    collate_images,
    load_rgb,
    split_unreadable,
)
from bcnn_triton.data.synthetic import SyntheticSecondOrder
from bcnn_triton.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INTERPOLATIONS,
    EvalTransform,
    Preprocessing,
    TrainTransform,
)

__all__ = [
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INTERPOLATIONS",
    "DataConfig",
    "DataSplits",
    "EvalTransform",
    "ImageBatch",
    "ImageRecord",
    "ImageRecordDataset",
    "Preprocessing",
    "SyntheticSecondOrder",
    "TrainTransform",
    "UnreadableImage",
    "build_datasets",
    "collate_images",
    "detect_dataset",
    "load_rgb",
    "split_unreadable",
    "stratified_holdout",
]
