"""`ValidateLastStep`: the last training step always validates, whatever the interval.

A run validates every ``val_check_interval`` steps; when ``max_steps`` is not a multiple of it
(e.g. ``--max-steps`` below the recipe's snapshot rate), Lightning ends the run without
validating the final model, and so without a checkpoint that carries its score. DAFormer and
MIC report the final model, and every run should say how good its last model is.

This callback asks the Trainer to stop at the step it would stop at anyway (``max_steps``), the
way early stopping does; Lightning then validates before stopping, and the checkpoint callbacks
(:func:`lightning_uda.cli.checkpoint_callbacks`, which save at the end of each validation) write
the final model with its score. When the last step is a validation step already, nothing
changes: Lightning validates once.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

__all__ = ["ValidateLastStep"]


class ValidateLastStep(Callback):
    """Validate (and so checkpoint with its score) after the step that reaches ``max_steps``."""

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        stop = trainer.max_steps
        if stop is not None and stop > 0 and trainer.global_step >= stop:
            trainer.should_stop = True  # Lightning validates before stopping (as early stopping)
