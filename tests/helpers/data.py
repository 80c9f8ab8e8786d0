"""A LightningModule and callbacks that record what UDADataModule feeds a training run."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch


class Recorder(L.LightningModule):
    """Writes what each training step sees to ``log_file`` (one JSON line per step)."""

    def __init__(self, log_file: str) -> None:
        super().__init__()
        self.log_file = log_file
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        record = {
            "rank": self.global_rank,
            "epoch": self.current_epoch,
            "batch_idx": batch_idx,
            "source": batch["source"]["index"].tolist(),
            "target": batch["target"]["index"].tolist(),
            "crop": batch["source"]["image"][:, 0, 0, 0].tolist(),
        }
        with open(self.log_file, "a") as f:
            f.write(json.dumps(record) + "\n")
        return (self.weight * batch["source"]["image"].mean()).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


class Preempt(L.Callback):
    """Stops a run with an error after optimiser step ``at_step`` (a pre-empted job)."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.at_step:
            raise RuntimeError("pre-empted")


def read_log(log_file: Path) -> list[dict]:
    """The records a ``Recorder`` wrote, in order."""
    return [json.loads(line) for line in log_file.read_text().splitlines()]


def stream_trainer(tmp_path: Path, callbacks: list, max_steps: int = 11, **kwargs) -> L.Trainer:
    """A quiet CPU Trainer without validation or logger, for ``Recorder`` runs."""
    return L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        default_root_dir=tmp_path,
        **kwargs,
    )
