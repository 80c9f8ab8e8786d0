"""`OptimizerSettings`: the segmentor's optimiser and schedule, in one place.

Every method's constructor takes these settings as plain keyword arguments (``lr=``,
``optimizer=``, ... as the papers' recipes name them); :class:`~lightning_uda.methods.UDAModule`
collects them into one :class:`OptimizerSettings`, which checks them together (including what
gradient folding cannot be combined with) and builds the parameter groups, the optimiser and the
poly schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from lightning_uda.checks import check_range
from lightning_uda.models import parameter_groups
from lightning_uda.optim.folding import FoldingSGD
from lightning_uda.optim.schedule import poly_lr_factor

OptimizerName = Literal["sgd", "adamw"]


@dataclass(frozen=True)
class OptimizerSettings:
    """The segmentor's optimiser and its iteration-based poly schedule.

    Args:
        optimizer: "sgd" (DACS/AdvEnt recipe) or "adamw" (DAFormer style).
        lr: backbone learning rate; the head gets ``lr * head_lr_mult``.
        momentum, dampening, nesterov: SGD's.
        weight_decay: weight decay of every group (but see ``no_decay_keys``).
        betas: AdamW's.
        head_lr_mult: learning-rate multiplier of the head (10 in DACS/AdvEnt).
        poly_power: exponent of the per-iteration poly decay.
        warmup_steps, warmup_ratio: linear warm-up (see :func:`poly_lr_factor`).
        no_decay_keys: parameter-name substrings whose parameters get no weight decay
            (DAFormer: ``("norm", "pos_block")``).
        total_steps: length of the schedule (``None``: the Trainer's ``max_steps``).
        fold_gradients: use :class:`FoldingSGD` (opt-in); refused with a non-SGD optimiser,
            momentum 0, dampening, Nesterov or gradient clipping.
        gradient_clip_val: clip the segmentor's gradient norm to this value (``None`` = off).
        owner: the class name errors are reported under.
    """

    optimizer: OptimizerName = "sgd"
    lr: float = 2.5e-4
    momentum: float = 0.9
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    head_lr_mult: float = 10.0
    poly_power: float = 0.9
    warmup_steps: int = 0
    warmup_ratio: float | None = None
    no_decay_keys: tuple[str, ...] = ()
    total_steps: int | None = None
    fold_gradients: bool = False
    gradient_clip_val: float | None = None
    owner: str = field(default="UDAModule", compare=False)

    def __post_init__(self) -> None:
        owner = self.owner
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"{owner}: optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        check_range(owner, "lr", self.lr, 0, low_open=True)
        check_range(owner, "head_lr_mult", self.head_lr_mult, 0, low_open=True)
        check_range(owner, "momentum", self.momentum, 0, 1, high_open=True)
        check_range(owner, "dampening", self.dampening, 0, 1)
        check_range(owner, "weight_decay", self.weight_decay, 0)
        for i, beta in enumerate(self.betas):
            check_range(owner, f"betas[{i}]", beta, 0, 1, high_open=True)
        check_range(owner, "poly_power", self.poly_power, 0)
        check_range(owner, "warmup_steps", self.warmup_steps, 0)
        check_range(owner, "warmup_ratio", self.warmup_ratio, 0, 1)
        check_range(owner, "total_steps", self.total_steps, 1)
        check_range(owner, "gradient_clip_val", self.gradient_clip_val, 0, low_open=True)
        if self.fold_gradients:
            conflict = self._folding_conflict()
            if conflict:
                raise ValueError(
                    f"{owner}: fold_gradients=True cannot be combined with {conflict}: folding "
                    "adds each backward's gradients to SGD's plain momentum buffer and drops them. "
                    "Pass fold_gradients=False (the default), or drop the conflicting setting."
                )

    def _folding_conflict(self) -> str | None:
        if self.optimizer != "sgd":
            return f"optimizer={self.optimizer!r} (only momentum SGD folds)"
        if self.momentum == 0:
            return "momentum=0 (no momentum buffer to fold into)"
        if self.dampening:
            return f"dampening={self.dampening}"
        if self.nesterov:
            return "nesterov=True"
        if self.gradient_clip_val is not None:
            return (
                f"gradient_clip_val={self.gradient_clip_val} (clipping needs the norm of the "
                "step's summed gradient)"
            )
        return None

    # ------------------------------------------------------------------ building
    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Backbone (``lr``) and head (``lr * head_lr_mult``) parameter groups of ``model``.

        With ``no_decay_keys``, each group is split: parameters whose name contains one of the
        keys get weight decay 0 (mmcv's ``paramwise_cfg`` ``decay_mult=0``, matched by substring
        as there), in a group named ``<group>_no_decay``.
        """
        backbone, head = parameter_groups(model)
        groups = [{"params": backbone, "lr": self.lr, "name": "backbone"}]
        if head:
            groups.append({"params": head, "lr": self.lr * self.head_lr_mult, "name": "head"})
        keys = tuple(self.no_decay_keys or ())
        if keys:
            names = {id(p): n for n, p in model.named_parameters()}
            split = []
            for group in groups:
                plain = [p for p in group["params"] if not any(k in names[id(p)] for k in keys)]
                free = [p for p in group["params"] if any(k in names[id(p)] for k in keys)]
                split.append({**group, "params": plain})
                split.append(
                    {
                        **group,
                        "params": free,
                        "name": f"{group['name']}_no_decay",
                        "weight_decay": 0.0,
                    }
                )
            groups = split
        return [g for g in groups if g["params"]]

    def build(self, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        """The optimiser over ``groups``: SGD (:class:`FoldingSGD` with ``fold_gradients``) or
        AdamW."""
        if self.optimizer == "adamw":
            return torch.optim.AdamW(
                groups, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay
            )
        if self.fold_gradients:
            return FoldingSGD(
                groups, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
            )
        return torch.optim.SGD(
            groups,
            lr=self.lr,
            momentum=self.momentum,
            dampening=self.dampening,
            nesterov=self.nesterov,
            weight_decay=self.weight_decay,
        )

    def scheduler(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        *,
        warmup_steps: int | None = None,
        warmup_ratio: float | None = None,
    ) -> torch.optim.lr_scheduler.LambdaLR:
        """Per-step poly decay of every group of ``optimizer`` over ``total_steps``, with this
        warm-up (default: the settings' ``warmup_steps``/``warmup_ratio``)."""
        if warmup_steps is None:
            warmup_steps, warmup_ratio = self.warmup_steps, self.warmup_ratio
        power = self.poly_power
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: poly_lr_factor(
                step, total_steps, power=power, warmup_steps=warmup_steps, warmup_ratio=warmup_ratio
            ),
        )
