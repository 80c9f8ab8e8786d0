"""Tiny generated data, module arguments and a quiet Trainer for method tests.

``ToyScenes``: a two-domain batch with learnable structure (16×16, or 32×32 for AdvEnt's
discriminator); ``cpu_trainer``: a deterministic CPU Trainer without validation or checkpoints.
"""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, Trainer
from torch import nn
from torch.utils.data import Dataset

from lightning_uda.data import UDADataModule

NUM_CLASSES = 3
CLASSES = ["background", "square", "bar"]


class ToyScenes(Dataset):
    """Images 3×16×16 with a square (class 1) and a bar (class 2) on a background (class 0).

    ``shift`` brightens the target domain so there is something to adapt to.
    """

    classes = CLASSES
    palette = [(0, 0, 0), (255, 0, 0), (0, 255, 0)]
    ignore_index = 255
    class_subsets = {"mIoU": [0, 1, 2]}

    def __init__(self, n: int, seed: int, shift: float = 0.0, size: int = 16) -> None:
        g = torch.Generator().manual_seed(seed)
        self.masks = torch.zeros(n, size, size, dtype=torch.long)
        for i in range(n):
            r, c = torch.randint(0, size - 6, (2,), generator=g).tolist()
            self.masks[i, r : r + 5, c : c + 5] = 1
            col = int(torch.randint(0, size, (1,), generator=g))
            self.masks[i, :, col] = 2
        self.masks[:, 0, 0] = 255  # an ignored pixel in every image
        base = self.masks.clamp(max=2).float()
        noise = 0.1 * torch.randn(n, 3, size, size, generator=g)
        self.images = torch.stack([base, 2 - base, base * 0.5], dim=1) + noise + shift

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "mask": self.masks[i]}


def toy_datamodule(batch_size: int = 4, seed: int = 0, **kwargs) -> UDADataModule:
    return UDADataModule(
        source=ToyScenes(24, seed=1),
        target=ToyScenes(16, seed=2, shift=0.5),
        val=ToyScenes(8, seed=3, shift=0.5),
        batch_size=batch_size,
        val_batch_size=8,
        num_workers=0,
        seed=seed,
        **kwargs,
    )


def toy32_datamodule(batch_size: int = 2) -> UDADataModule:
    # 32×32: the discriminator halves its input five times
    return UDADataModule(
        source=ToyScenes(8, seed=1, size=32),
        target=ToyScenes(8, seed=2, shift=0.5, size=32),
        val=ToyScenes(4, seed=3, shift=0.5, size=32),
        batch_size=batch_size,
        val_batch_size=4,
        num_workers=0,
    )


def tiny_module_kwargs() -> dict:
    return dict(
        num_classes=NUM_CLASSES,
        arch="tiny_unet",
        optimizer="sgd",
        lr=0.05,
        head_lr_mult=1.0,
    )


def advent_kwargs(**overrides) -> dict:
    kwargs = dict(tiny_module_kwargs(), discriminator_width=8)
    kwargs.update(overrides)
    return kwargs


def cpu_trainer(tmp_path, max_steps: int = 3, **kwargs) -> Trainer:
    """A quiet, deterministic CPU Trainer for method tests (no validation, no checkpoints)."""
    kwargs.setdefault("enable_checkpointing", False)
    kwargs.setdefault("limit_val_batches", 0)
    kwargs.setdefault("logger", False)
    return Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        deterministic=True,
        **kwargs,
    )


class SaveWeights(Callback):
    """Saves each rank's parameters to ``<out_dir>/rank<r>.pt`` when training ends (DDP tests)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module) -> None:
        # parameters only: BatchNorm running statistics are per rank (no SyncBatchNorm)
        weights = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
        torch.save(weights, f"{self.out_dir}/rank{trainer.global_rank}.pt")


class OneHotModel(nn.Module):
    """Predicts the class id stored in channel 0 of the image (for hand-made confusion cases)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.encoder = nn.Identity()
        self.num_classes = num_classes
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        one_hot = nn.functional.one_hot(x[:, 0].long(), self.num_classes)
        return one_hot.permute(0, 3, 1, 2).float() * 10 + self.dummy
