"""`Optimization`: how the segmentor's optimiser steps under manual optimisation.

- the optimiser, its parameter groups and the poly schedule come from the module's
  :class:`~lightning_uda.optim.OptimizerSettings` (``self.optim_settings``);
- :meth:`Optimization.optimizer_steps` steps and zeroes every optimiser and steps the schedules;
  clipping runs in ``on_before_optimizer_step``, after AMP has unscaled the gradients;
- opt-in gradient folding (:class:`~lightning_uda.optim.FoldingSGD`) after each backward.

A mixin of :class:`~lightning_uda.methods.UDAModule`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lightning_uda.optim import FoldingSGD


class Optimization:
    """Mixin of :class:`~lightning_uda.methods.UDAModule`: optimiser steps, schedule, folding."""

    @property
    def folds_gradients(self) -> bool:
        """Whether the segmentor's gradients are folded (the ``fold_gradients`` argument)."""
        return self.optim_settings.fold_gradients

    def fold_gradients(self) -> None:
        """Fold the last backward's gradients into each :class:`~lightning_uda.optim.FoldingSGD`
        optimiser (a no-op unless ``fold_gradients=True``).

        Called after every backward of :meth:`training_step`; a method that runs its own
        backward passes calls it after each of them.
        """
        if not self.folds_gradients:
            return
        optimizers = self.optimizers(use_pl_optimizer=False)
        for optimizer in optimizers if isinstance(optimizers, list) else [optimizers]:
            if isinstance(optimizer, FoldingSGD):
                optimizer.fold_gradients()

    def optimizer_steps(self) -> None:
        """Step and zero every optimiser (clipping: :meth:`on_before_optimizer_step`), step the
        schedulers."""
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        for opt in optimizers:
            opt.step()  # clipping happens in on_before_optimizer_step, after AMP unscaling
            opt.zero_grad(set_to_none=True)
        schedulers = self.lr_schedulers()
        if schedulers is not None:
            for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
                scheduler.step()
        self.log("train/lr", optimizers[0].param_groups[0]["lr"], batch_size=1)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Lightning's precision plugin calls this hook inside optimizer.step(), after it has
        # unscaled 16-bit AMP gradients; clipping before step() would clip scaled gradients.
        clip = self.hparams.gradient_clip_val
        if clip is None:
            return
        optimizers = self.optimizers(use_pl_optimizer=False)
        segmentor = optimizers[0] if isinstance(optimizers, list) else optimizers
        if optimizer is segmentor:  # e.g. AdvEnt's discriminators are not clipped
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")

    def total_steps(self) -> int:
        """Length of the poly schedule in optimiser steps."""
        if self.optim_settings.total_steps:
            return int(self.optim_settings.total_steps)
        trainer = self.trainer
        if trainer.max_steps and trainer.max_steps > 0:
            return int(trainer.max_steps)
        estimated = trainer.estimated_stepping_batches
        if not math.isfinite(estimated):
            raise ValueError(
                "The poly schedule needs a length: set Trainer(max_steps=N) or the module's "
                "total_steps=N (UDA training is iteration-based)."
            )
        return max(1, int(estimated) // self.hparams.accumulate_grad_batches)

    def segmentor_param_groups(self) -> list[dict[str, Any]]:
        """The segmentor's parameter groups (:meth:`OptimizerSettings.param_groups`)."""
        return self.optim_settings.param_groups(self.model)

    def make_optimizer(self, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        """The segmentor optimiser over ``groups`` (:meth:`OptimizerSettings.build`)."""
        return self.optim_settings.build(groups)

    def poly_scheduler(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_steps: int = 0,
        warmup_ratio: float | None = None,
    ) -> torch.optim.lr_scheduler.LambdaLR:
        """Per-step poly decay of every group of ``optimizer`` (see :func:`poly_lr_factor`)."""
        return self.optim_settings.scheduler(
            optimizer, self.total_steps(), warmup_steps=warmup_steps, warmup_ratio=warmup_ratio
        )

    def check_folding_against_precision(self) -> None:
        """Folding cannot run with a 16-bit AMP loss scaler (called at the start of fit)."""
        plugin = getattr(self.trainer, "precision_plugin", None)
        if self.folds_gradients and getattr(plugin, "scaler", None) is not None:
            raise ValueError(
                f"{type(self).__name__}: fold_gradients=True cannot be combined with 16-bit AMP "
                "and its loss scaler (the gradients stay scaled until the step). Use "
                "precision='bf16-mixed', or pass fold_gradients=False."
            )
