"""A small real checkpoint of the library for the predict and evaluate tests.

:func:`fixture_checkpoint` trains a 19-class TinyUNet for a few steps on the Cityscapes fixture
frame (64×64 crops of the frame resized to 64×128, validated at 64×128 against the 128×256
labels: evaluation scale 0.5, as Cityscapes' "full" protocol at 1024×512 / 2048×1024) and saves
it through the Trainer, so the checkpoint carries what ``lightning-uda fit`` writes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import Trainer

from lightning_uda.data import Cityscapes, UDADataModule, preset
from lightning_uda.methods import SourceOnlyModule

FRAME = "frankfurt_000000_000294"
CITY = "frankfurt"
TRAIN_CROP = (64, 64)


def fixture_checkpoint(fixtures_root: Path, path: Path, steps: int = 30) -> Path:
    """Fit the tiny model on the fixture frame and save ``path`` (a ``.ckpt``)."""
    root = fixtures_root / "cityscapes_mini"
    train = preset("cityscapes_train", resize=(64, 128), crop=TRAIN_CROP)
    datamodule = UDADataModule(
        source=Cityscapes(root, split="val", transform=train),
        target=Cityscapes(root, split="val", transform=train, return_mask=False),
        val=Cityscapes(root, split="val", transform=preset("cityscapes_val", resize=(64, 128))),
        batch_size=2,
        num_workers=0,
    )
    torch.manual_seed(0)
    module = SourceOnlyModule(
        arch="tiny_unet", num_classes=19, optimizer="adamw", lr=1e-2, head_lr_mult=1.0
    )
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=path.parent,
    )
    trainer.fit(module, datamodule=datamodule)
    trainer.save_checkpoint(path)
    return path
