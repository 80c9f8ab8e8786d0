"""The whole-run progress bar (RunProgressBar) and the last-step validation (ValidateLastStep)."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, Trainer

from lightning_uda.callbacks import RunProgressBar, ValidateLastStep
from lightning_uda.cli import checkpoint_callbacks, run_callbacks
from lightning_uda.methods import SourceOnlyModule
from tests.helpers.methods import tiny_module_kwargs, toy_datamodule


class _Validations(Callback):
    """The global steps at which a (non-sanity) validation ended."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.steps.append(trainer.global_step)


def _fit(tmp_path, max_steps: int, every: int, *callbacks: Callback) -> Trainer:
    trainer = Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        max_epochs=-1,
        val_check_interval=every,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        logger=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
    )
    # 24 source images in batches of 4: 6 batches an "epoch", so a run of 8 crosses one
    torch.manual_seed(0)
    trainer.fit(SourceOnlyModule(**tiny_module_kwargs()), datamodule=toy_datamodule())
    return trainer


@pytest.mark.fit
def test_one_bar_for_the_run_and_the_last_step_validates_and_saves_a_scored_checkpoint(
    tmp_path, capsys
):
    bar, seen = RunProgressBar(description="toy run"), _Validations()
    (ranked,) = checkpoint_callbacks("val/mIoU", dirpath=str(tmp_path / "ckpts"))
    ranked.save_top_k = -1  # keep every scored checkpoint, not only the best
    _fit(tmp_path, 8, 3, bar, seen, ValidateLastStep(), ranked)
    # the interval's validations (3, 6), and the last step's although 8 is not a multiple of 3
    assert seen.steps == [3, 6, 8]
    names = sorted(p.name for p in (tmp_path / "ckpts").glob("step*-miou*.ckpt"))
    assert any(n.startswith("step8-miou") for n in names), names
    # one bar over the epochs: 8 of 8 steps (not "Epoch 1: 2/6"), steps as the unit
    progress = bar.train_progress_bar
    assert (progress.n, progress.total, progress.unit) == (8, 8, "step")
    out = capsys.readouterr().out
    assert "toy run" in out and "Epoch" not in out
    assert "loss=" in out  # the latest training loss in the bar
    lines = [line for line in out.splitlines() if line.startswith("validation at step")]
    assert [line.split(":")[0] for line in lines] == [
        "validation at step 3/8",
        "validation at step 6/8",
        "validation at step 8/8",
    ]
    assert all("val/mIoU " in line for line in lines)


@pytest.mark.fit
def test_a_last_step_on_the_interval_validates_once(tmp_path):
    seen = _Validations()
    _fit(tmp_path, 6, 3, seen, ValidateLastStep())
    assert seen.steps == [3, 6]


@pytest.mark.fit
def test_without_the_callback_lightning_skips_the_last_step(tmp_path):
    # what ValidateLastStep is for: Lightning alone ends at step 8 unvalidated
    seen = _Validations()
    _fit(tmp_path, 8, 3, seen)
    assert seen.steps == [3, 6]


def test_cli_adds_the_run_callbacks_unless_configured():
    kinds = [type(c).__name__ for c in run_callbacks([])]
    assert kinds == ["RunProgressBar", "ValidateLastStep", "SlurmRequeue"]
    assert [type(c).__name__ for c in run_callbacks([], progress_bar=False)] == [
        "ValidateLastStep",
        "SlurmRequeue",
    ]
    mine = RunProgressBar(description="mine")
    assert [type(c).__name__ for c in run_callbacks([mine])] == ["ValidateLastStep", "SlurmRequeue"]
