"""`SegmentationPanels`: extra Weights & Biases panels (masks, mixed batches, per-class IoU).

Scalars are logged by the modules with ``self.log`` for any logger; this callback adds what only
W&B shows well — images with overlaid label/prediction masks and a per-class IoU table — and does
nothing when no :class:`~lightning.pytorch.loggers.WandbLogger` is attached. Images are turned
back into pixels with the module's input space (``pl_module.normalization``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor

from lightning_uda.constants import IGNORE_INDEX
from lightning_uda.normalization import NormalizationLike, get_normalization


def denormalize(images: Tensor, normalization: NormalizationLike | None = None) -> np.ndarray:
    """``B×3×H×W`` tensors in the input space ``normalization`` (default ImageNet) →
    ``B×H×W×3`` uint8 RGB."""
    return get_normalization(normalization).to_uint8(images)


class SegmentationPanels(Callback):
    """Log images with ground-truth/prediction masks and a per-class IoU table to W&B.

    Args:
        every_n_steps: log the latest mixed training batch (self-training methods) every N steps.
        max_images: images per panel.
    """

    def __init__(self, every_n_steps: int = 1000, max_images: int = 4) -> None:
        self.every_n_steps = every_n_steps
        self.max_images = max_images

    @staticmethod
    def _wandb(trainer: Trainer) -> WandbLogger | None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                return logger
        return None

    def _masks(self, pl_module: LightningModule, **masks: Tensor) -> dict[str, dict[str, Any]]:
        names = getattr(pl_module, "class_names", None) or []
        class_labels = {i: n for i, n in enumerate(names)} | {IGNORE_INDEX: "ignore"}
        return {
            key: {"mask_data": value.cpu().numpy().astype(np.uint8), "class_labels": class_labels}
            for key, value in masks.items()
        }

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        logger = self._wandb(trainer)
        mixed = getattr(pl_module, "_last_mix", None)
        if logger is None or mixed is None or trainer.global_step % self.every_n_steps:
            return
        import wandb

        n = min(self.max_images, mixed["image"].shape[0])
        images = denormalize(mixed["image"][:n], getattr(pl_module, "normalization", None))
        panels = [
            wandb.Image(images[i], masks=self._masks(pl_module, mixed_label=mixed["label"][i]))
            for i in range(n)
        ]
        logger.experiment.log({"train/mixed_batch": panels}, step=trainer.global_step)

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        logger = self._wandb(trainer)
        if logger is None or batch_idx != 0 or trainer.sanity_checking:
            return
        import wandb

        n = min(self.max_images, batch["image"].shape[0])
        with torch.no_grad():
            preds = pl_module.segment(batch["image"][:n], size=tuple(batch["mask"].shape[-2:]))
        images = denormalize(batch["image"][:n], getattr(pl_module, "normalization", None))
        panels = [
            wandb.Image(
                images[i],
                masks=self._masks(
                    pl_module, ground_truth=batch["mask"][i], prediction=preds[i].argmax(0)
                ),
            )
            for i in range(n)
        ]
        logger.experiment.log({"val/examples": panels}, step=trainer.global_step)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # after the module's on_validation_epoch_end has computed last_iou
        logger = self._wandb(trainer)
        per_class = getattr(pl_module, "last_iou", {}).get("val")
        if logger is None or per_class is None or trainer.sanity_checking:
            return
        import wandb

        rows = [[n, float(v)] for n, v in zip(pl_module.class_names, per_class, strict=True)]
        table = wandb.Table(data=rows, columns=["class", "IoU"])
        logger.experiment.log(
            {"val/IoU_per_class": wandb.plot.bar(table, "class", "IoU", title="val IoU")},
            step=trainer.global_step,
        )
