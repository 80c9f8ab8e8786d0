"""Optimiser and schedule: :class:`OptimizerSettings` (one dataclass for a method's optimiser,
parameter groups and poly schedule), :func:`poly_lr_factor`, and :class:`FoldingSGD` (opt-in
gradient folding into SGD's momentum buffer)."""

from __future__ import annotations

from lightning_uda.optim.folding import FoldingSGD
from lightning_uda.optim.layer_decay import (
    layer_decay_param_groups,
    layer_lr_multipliers,
    warmup_linear_factor,
)
from lightning_uda.optim.schedule import poly_lr_factor
from lightning_uda.optim.settings import OptimizerSettings

__all__ = [
    "FoldingSGD",
    "OptimizerSettings",
    "layer_decay_param_groups",
    "layer_lr_multipliers",
    "poly_lr_factor",
    "warmup_linear_factor",
]
