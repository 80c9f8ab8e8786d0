"""Losses (torch only): segmentation cross-entropy, AdvEnt entropy, minimum class confusion."""

from __future__ import annotations

from lightning_uda.losses.cross_entropy import (
    cross_entropy,
    pixel_weighted_cross_entropy,
    upsample_logits,
)
from lightning_uda.losses.entropy import (
    channel_softmax,
    entropy_loss,
    entropy_map,
    entropy_map_from_logits,
)
from lightning_uda.losses.feature_distance import (
    CITYSCAPES_THING_CLASSES,
    downscale_labels,
    feature_distance,
)
from lightning_uda.losses.mcc import MinimumClassConfusionLoss, minimum_class_confusion

__all__ = [
    "CITYSCAPES_THING_CLASSES",
    "downscale_labels",
    "feature_distance",
    "MinimumClassConfusionLoss",
    "channel_softmax",
    "cross_entropy",
    "entropy_loss",
    "entropy_map",
    "entropy_map_from_logits",
    "minimum_class_confusion",
    "pixel_weighted_cross_entropy",
    "upsample_logits",
]
