"""Segmentors (TinyUNet, DeepLab-v2, DAFormer, HRDA, smp), parameter groups, checkpoint loading, the
AdvEnt discriminator, gradient reversal."""

from __future__ import annotations

from lightning_uda.models.checkpoints import (
    CHECKPOINT_LAYOUTS,
    CHECKPOINT_PREFIXES,
    CheckpointReport,
    load_checkpoint,
)
from lightning_uda.models.daformer import DAFormer, DAFormerHead
from lightning_uda.models.deeplabv2 import DeepLabV2
from lightning_uda.models.discriminator import Discriminator
from lightning_uda.models.grl import GradientReversal, dann_coefficient, gradient_reversal
from lightning_uda.models.hrda import HRDA, HRDAOutput
from lightning_uda.models.hrda_fusion import fuse_scales, sample_detail_box
from lightning_uda.models.lsd_seg import LSDDiscriminator, LSDGenerator, PatchOutputs
from lightning_uda.models.segmentor import (
    build_segmentor,
    forward_with_features,
    parameter_groups,
)
from lightning_uda.models.tiny_unet import TinyUNet
from lightning_uda.models.vfm import VFMSegmentor, load_vfm_checkpoint
from lightning_uda.models.vit import (
    DINOV2_ENCODERS,
    DINOV2_FILES,
    create_dinov2,
    load_dinov2_weights,
)

__all__ = [
    "CHECKPOINT_LAYOUTS",
    "CHECKPOINT_PREFIXES",
    "CheckpointReport",
    "DAFormer",
    "DAFormerHead",
    "DeepLabV2",
    "Discriminator",
    "GradientReversal",
    "HRDA",
    "HRDAOutput",
    "LSDDiscriminator",
    "LSDGenerator",
    "PatchOutputs",
    "TinyUNet",
    "VFMSegmentor",
    "DINOV2_ENCODERS",
    "DINOV2_FILES",
    "create_dinov2",
    "load_dinov2_weights",
    "load_vfm_checkpoint",
    "build_segmentor",
    "dann_coefficient",
    "forward_with_features",
    "fuse_scales",
    "gradient_reversal",
    "load_checkpoint",
    "parameter_groups",
    "sample_detail_box",
]
