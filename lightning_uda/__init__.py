"""lightning_uda: PyTorch Lightning plugins for unsupervised domain adaptation in segmentation.

The public API is re-exported here: methods (LightningModules), callbacks, data, models, losses
and mixing functions. See README.md for the quickstart and docs/design.md for the design notes.
"""

from lightning_uda.callbacks import (
    CheckpointError,
    ChecksummedCheckpointIO,
    CityscapesPredictionWriter,
    EMATeacher,
    PseudoLabelThreshold,
    SegmentationPanels,
    UnsupervisedValidation,
)
from lightning_uda.constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from lightning_uda.data import (
    GTA5,
    SYNTHIA,
    Cityscapes,
    DigitScenes,
    RareClassSampling,
    SegmentationFolder,
    UDADataModule,
    demo_datamodule,
)
from lightning_uda.losses import (
    MinimumClassConfusionLoss,
    cross_entropy,
    entropy_loss,
    entropy_map,
    minimum_class_confusion,
    pixel_weighted_cross_entropy,
)
from lightning_uda.methods import (
    AdaptSegNetModule,
    AdvEntModule,
    ClassMixModule,
    DACSModule,
    DAFormerModule,
    DANNModule,
    FDAModule,
    LSDSegModule,
    MCCModule,
    MICModule,
    MinEntModule,
    SelfTrainingModule,
    SourceOnlyModule,
    UDAModule,
)
from lightning_uda.mixing import (
    StrongAugment,
    block_mask,
    class_mix_mask,
    fourier_domain_adaptation,
    mix,
)
from lightning_uda.models import (
    DAFormer,
    DeepLabV2,
    Discriminator,
    GradientReversal,
    TinyUNet,
    build_segmentor,
)
from lightning_uda.normalization import CAFFE, IMAGENET, InputNormalization, get_normalization

__version__ = "0.1.0"

__all__ = [
    "GTA5",
    "AdaptSegNetModule",
    "DAFormer",
    "DAFormerModule",
    "DANNModule",
    "FDAModule",
    "GradientReversal",
    "LSDSegModule",
    "RareClassSampling",
    "UnsupervisedValidation",
    "fourier_domain_adaptation",
    "AdvEntModule",
    "CheckpointError",
    "ChecksummedCheckpointIO",
    "CityscapesPredictionWriter",
    "DigitScenes",
    "MCCModule",
    "MICModule",
    "MinEntModule",
    "SegmentationPanels",
    "demo_datamodule",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CAFFE",
    "IMAGENET",
    "InputNormalization",
    "get_normalization",
    "SYNTHIA",
    "Cityscapes",
    "ClassMixModule",
    "DACSModule",
    "DeepLabV2",
    "Discriminator",
    "EMATeacher",
    "MinimumClassConfusionLoss",
    "PseudoLabelThreshold",
    "SegmentationFolder",
    "SelfTrainingModule",
    "SourceOnlyModule",
    "StrongAugment",
    "TinyUNet",
    "UDADataModule",
    "UDAModule",
    "block_mask",
    "build_segmentor",
    "class_mix_mask",
    "cross_entropy",
    "entropy_loss",
    "entropy_map",
    "minimum_class_confusion",
    "mix",
    "pixel_weighted_cross_entropy",
]
