"""Data: datasets (Cityscapes, GTA5, SYNTHIA, your own folders), transforms, ``UDADataModule``.

Items are ``{"image": float 3×H×W, "mask": long H×W}`` with images in the run's input space
(``normalization``: ImageNet-normalised RGB by default, or Caffe BGR; see
:mod:`lightning_uda.normalization`) and train ids ``0..C-1``, 255 = ignore; see
:mod:`lightning_uda.data.datamodule` for training batches and
:data:`EVALUATION_PROTOCOLS` for how validation labels are sized.
"""

from lightning_uda.data.datamodule import UDADataModule
from lightning_uda.data.datasets import GTA5, SYNTHIA, Cityscapes
from lightning_uda.data.demo import DEMO_CLASSES, DigitScenes, demo_datamodule, demo_datasets
from lightning_uda.data.files import (
    AllIgnoreLabelError,
    CorruptImageError,
    DatasetLayoutError,
    UnknownLabelError,
    read_image,
)
from lightning_uda.data.folder import SegmentationFolder
from lightning_uda.data.labels import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_ID_TO_TRAIN_ID,
    CITYSCAPES_LABELS,
    CITYSCAPES_PALETTE,
    SYNTHIA_13_CLASSES,
    SYNTHIA_16_CLASSES,
    SYNTHIA_ID_TO_TRAIN_ID,
    TRAIN_ID_TO_CITYSCAPES_ID,
    colorize,
)
from lightning_uda.data.rcs import RareClassSampler, RareClassSampling, rare_class_probabilities
from lightning_uda.data.sampling import DomainSampler, RareClassDomainSampler
from lightning_uda.data.transforms import (
    EVALUATION_PROTOCOLS,
    PRESETS,
    CatMaxRatioCrop,
    RGBToBGR,
    normalize_transform,
    preset,
    train_transform,
    val_transform,
)

__all__ = [
    "AllIgnoreLabelError",
    "CatMaxRatioCrop",
    "CorruptImageError",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_ID_TO_TRAIN_ID",
    "CITYSCAPES_LABELS",
    "CITYSCAPES_PALETTE",
    "EVALUATION_PROTOCOLS",
    "GTA5",
    "PRESETS",
    "RGBToBGR",
    "SYNTHIA",
    "SYNTHIA_13_CLASSES",
    "SYNTHIA_16_CLASSES",
    "SYNTHIA_ID_TO_TRAIN_ID",
    "TRAIN_ID_TO_CITYSCAPES_ID",
    "Cityscapes",
    "DatasetLayoutError",
    "DomainSampler",
    "RareClassDomainSampler",
    "RareClassSampler",
    "RareClassSampling",
    "rare_class_probabilities",
    "SegmentationFolder",
    "UDADataModule",
    "UnknownLabelError",
    "colorize",
    "normalize_transform",
    "preset",
    "read_image",
    "train_transform",
    "val_transform",
    "DEMO_CLASSES",
    "DigitScenes",
    "demo_datamodule",
    "demo_datasets",
]
