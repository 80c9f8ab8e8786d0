"""Data: datasets (Cityscapes, GTA5, SYNTHIA, ACDC, Dark Zurich, BDD100K, Mapillary Vistas, your
own folders), transforms, ``UDADataModule``.

Items are ``{"image": float 3×H×W, "mask": long H×W}`` with images in the run's input space
(``normalization``: ImageNet-normalised RGB by default, or Caffe BGR; see
:mod:`lightning_uda.normalization`) and train ids ``0..C-1``, 255 = ignore; see
:mod:`lightning_uda.data.datamodule` for training batches and
:data:`EVALUATION_PROTOCOLS` for how validation labels are sized.
"""

from lightning_uda.data.acdc import ACDC, ACDC_CONDITIONS
from lightning_uda.data.archive_folder import ArchiveAwareFolder
from lightning_uda.data.archives import ArchiveError, ZipFolder, close_archives
from lightning_uda.data.bdd100k import BDD100K
from lightning_uda.data.concat import ConcatSegmentation
from lightning_uda.data.dark_zurich import DARK_ZURICH_TIMES, DarkZurich
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
from lightning_uda.data.mapillary import (
    MAPILLARY_V12_CLASSES,
    MAPILLARY_V12_TO_CITYSCAPES,
    MapillaryVistas,
)
from lightning_uda.data.rcs import RareClassSampler, RareClassSampling, rare_class_probabilities
from lightning_uda.data.resize import short_side_val_transform
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
from lightning_uda.data.val_sets import default_val_name

__all__ = [
    "AllIgnoreLabelError",
    "ArchiveAwareFolder",
    "ArchiveError",
    "ZipFolder",
    "close_archives",
    "CatMaxRatioCrop",
    "CorruptImageError",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_ID_TO_TRAIN_ID",
    "CITYSCAPES_LABELS",
    "CITYSCAPES_PALETTE",
    "EVALUATION_PROTOCOLS",
    "GTA5",
    "ACDC",
    "ACDC_CONDITIONS",
    "BDD100K",
    "DARK_ZURICH_TIMES",
    "DarkZurich",
    "MAPILLARY_V12_CLASSES",
    "MAPILLARY_V12_TO_CITYSCAPES",
    "MapillaryVistas",
    "default_val_name",
    "short_side_val_transform",
    "PRESETS",
    "RGBToBGR",
    "SYNTHIA",
    "SYNTHIA_13_CLASSES",
    "SYNTHIA_16_CLASSES",
    "SYNTHIA_ID_TO_TRAIN_ID",
    "TRAIN_ID_TO_CITYSCAPES_ID",
    "Cityscapes",
    "ConcatSegmentation",
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
