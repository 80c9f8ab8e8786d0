"""`RunProgressBar`: one bar for the whole run, in iterations, and one line per validation.

Lightning's ``TQDMProgressBar`` draws one bar per epoch ("Epoch 3: 1/3"). A UDA run is defined in
iterations (DACS: 250,000) over endless source and target streams whose "epoch" means little, so
a user cannot see from it how far the run is or when it ends. This bar counts
``trainer.global_step`` (one per iteration: the adversarial methods count their own steps so that
``global_step`` is the iteration) against the step the run stops at, shows steps per second and the
time left (tqdm's rate and ETA, from the steps taken since this fit started: a resumed run's rate
does not count the steps it restored), and the latest values of the logged training losses.
Validation is its own short bar under it, and each validation ends with one printed line::

    dacs:  40%|████      | 4/10 [00:12<00:18, 0.33step/s, loss=3.18, loss_source=2.10]
    validation at step 4/10: val/mIoU 12.31, val_unsup/entropy 0.4012

Only global rank 0 draws (as Lightning's bar). ``lightning-uda fit`` and the example fronts add
it unless the configuration names another progress bar or turns the bar off
(:class:`~lightning_uda.cli.UDACLI`).
"""

from __future__ import annotations

import math
import sys
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from torch import Tensor

__all__ = ["RunProgressBar", "validation_line"]


def _shown_in_line(name: str) -> bool:
    """``val/mIoU`` (and ``val/mIoU16``, ``val/<target>/mIoU``...) and ``val_unsup/<signal>``."""
    if name.startswith("val_unsup/"):
        return name.count("/") == 1
    return name.startswith("val/") and name.rsplit("/", 1)[-1].startswith("mIoU")


def _stop_step(trainer: Trainer) -> int | None:
    """The ``global_step`` the run stops at (``max_steps``, else the estimate from the epochs)."""
    if trainer.max_steps is not None and trainer.max_steps > 0:
        return int(trainer.max_steps)
    estimate = trainer.estimated_stepping_batches
    return int(estimate) if math.isfinite(estimate) else None


def _scalar(value: Any) -> float | None:
    if isinstance(value, Tensor):
        return float(value) if value.numel() == 1 else None
    return float(value) if isinstance(value, (int, float)) else None


def validation_line(trainer: Trainer) -> str:
    """``"validation at step N/M: val/mIoU 12.31, ..."``: the validation's logged mIoU values and
    label-free signals (``val_unsup/*``), from ``trainer.callback_metrics``."""
    values = {
        name: _scalar(value)
        for name, value in sorted(trainer.callback_metrics.items())
        if _shown_in_line(name)
    }
    shown = [
        f"{name} {value:.2f}" if name.startswith("val/") else f"{name} {value:.4g}"
        for name, value in values.items()
        if value is not None
    ]
    where = "validation"
    if trainer.state.fn == "fit":
        stop = _stop_step(trainer)
        where += f" at step {trainer.global_step}" + (f"/{stop}" if stop else "")
    return f"{where}: {', '.join(shown) if shown else 'no metrics logged'}"


class RunProgressBar(TQDMProgressBar):
    """Whole-run progress in iterations (``global_step`` / stop step, steps/s, ETA, latest losses),
    validation as its own short bar, one printed line per validation (:func:`validation_line`).

    Args:
        description: the label in front of the bar (e.g. the method, ``"dacs, seed 0"``).
        refresh_rate: redraw every this many steps.
        process_position: bar offset, for several bars in one terminal (as Lightning's).
        print_validation: print :func:`validation_line` after each validation during ``fit``.
    """

    def __init__(
        self,
        description: str = "train",
        refresh_rate: int = 1,
        process_position: int = 0,
        print_validation: bool = True,
    ) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position)
        self.description = description
        self.print_validation = print_validation

    @property
    def train_description(self) -> str:
        return self.description

    def init_train_tqdm(self) -> Tqdm:
        """The run's bar, created with its stop step and start step (drawn once, complete)."""
        trainer = self.trainer
        return Tqdm(
            desc=self.train_description,
            total=_stop_step(trainer),
            # counted from where this fit starts: a resumed run's rate and ETA are its own
            initial=trainer.global_step,
            unit="step",
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        """The latest logged training losses (``train/loss*``, shown without ``train/``)."""
        shown: dict[str, Any] = {}
        for name, value in sorted(trainer.callback_metrics.items()):
            number = _scalar(value)
            if name.startswith("train/loss") and number is not None:
                shown[name.removeprefix("train/")] = f"{number:.3g}"
        return shown

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.train_progress_bar = self.init_train_tqdm()

    def on_train_epoch_start(self, trainer: Trainer, *_: Any) -> None:
        pass  # one bar for the run: not reset per epoch

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        bar = self.train_progress_bar
        step = trainer.global_step
        if bar.disable or not self._should_update(step, bar.total or 0):
            return
        bar.n = step
        bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
        bar.refresh()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if self.print_validation and self.is_enabled and not trainer.sanity_checking:
            if trainer.state.fn == "fit":
                Tqdm.write(validation_line(trainer), file=sys.stdout)
