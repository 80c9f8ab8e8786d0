"""Segmentors (TinyUNet, DeepLab-v2, smp), parameter groups, the AdvEnt discriminator."""

from __future__ import annotations

from lightning_uda.models.deeplabv2 import DeepLabV2
from lightning_uda.models.discriminator import Discriminator
from lightning_uda.models.segmentor import (
    CheckpointReport,
    TinyUNet,
    build_segmentor,
    forward_with_features,
    load_checkpoint,
    parameter_groups,
)

__all__ = [
    "CheckpointReport",
    "DeepLabV2",
    "Discriminator",
    "TinyUNet",
    "build_segmentor",
    "forward_with_features",
    "load_checkpoint",
    "parameter_groups",
]
