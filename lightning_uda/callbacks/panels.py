"""`SegmentationPanels`: extra Weights & Biases panels (masks, mixed batches, per-class IoU).

Scalars are logged by the modules with ``self.log`` for any logger; this callback adds what only
W&B shows well — images with overlaid label/prediction masks and a per-class IoU bar chart — and
does nothing when no :class:`~lightning.pytorch.loggers.WandbLogger` is attached. Images are
turned back into pixels with the module's input space (``pl_module.normalization``).

**Steps.** Everything goes through the logger's own methods, :meth:`WandbLogger.log_image` and
:meth:`WandbLogger.log_metrics` with ``step=``, exactly as Lightning logs its scalars, and never
through ``experiment.log(..., step=...)``. ``WandbLogger`` lets W&B number its rows itself
(``_step`` grows by one with every ``log`` call) and writes the trainer's step into the row as
the metric ``trainer/global_step``, which it declares (``define_metric``) as the x-axis of every
other key. A W&B step passed by hand competes with that counter: it is behind it as soon as
Lightning has logged once more than the callback (every step with ``log_every_n_steps=1``, and
after each validation), and W&B then ignores the whole record ("Tried to log to step N that is
less than the current step …"). A row of its own with ``trainer/global_step`` cannot be behind
anything, so every panel reaches the run. ``experiment.log(..., commit=False)`` was not chosen: it
would attach a panel to whichever row Lightning commits next, possibly after the next training
step or never (at the end of a run).

The value written as ``trainer/global_step`` is the one Lightning uses for its own scalars (and
its ``LearningRateMonitor``): the count of finished training batches,
``trainer.fit_loop.epoch_loop._batches_that_stepped``. So a mixed batch shares the x value of
the losses of the batch it comes from, and the validation panels that of ``val/mIoU``. It is
not ``trainer.global_step``, which counts optimiser steps (is one ahead at the end of a batch,
and counts every optimiser of a method with a discriminator).

**Masks.** W&B stores mask images as int8, so class ids must fit 0–127; the ignore label 255
does not. Masks are sent with the ignore label mapped to ``K`` (the number of classes) and
``class_labels`` naming it ``"ignore"`` (:func:`wandb_mask`, :func:`wandb_class_labels`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor

from lightning_uda.constants import IGNORE_INDEX
from lightning_uda.normalization import NormalizationLike, get_normalization

__all__ = [
    "SegmentationPanels",
    "attention_panel",
    "confusion_heatmap",
    "denormalize",
    "normalized_confusion",
    "wandb_class_labels",
    "wandb_mask",
]

#: Largest class id a W&B mask can hold (masks are stored as int8).
MAX_MASK_ID = 127


def denormalize(images: Tensor, normalization: NormalizationLike | None = None) -> np.ndarray:
    """``B×3×H×W`` tensors in the input space ``normalization`` (default ImageNet) →
    ``B×H×W×3`` uint8 RGB."""
    return get_normalization(normalization).to_uint8(images)


def normalized_confusion(confusion: Tensor) -> Tensor:
    """Row-normalised ``K×K`` confusion matrix: entry ``(i, j)`` is the fraction of the pixels
    labelled ``i`` that were predicted ``j`` (rows of classes absent from the labels are 0)."""
    confusion = confusion.double()
    totals = confusion.sum(dim=1, keepdim=True)
    return torch.where(totals > 0, confusion / totals.clamp_min(1), torch.zeros_like(confusion))


def confusion_heatmap(normalized: Tensor, cell: int = 16) -> np.ndarray:
    """An RGB picture of a normalised confusion matrix: white (0) to dark blue (1), ``cell``
    pixels per entry, rows = labels, columns = predictions."""
    values = normalized.clamp(0, 1).cpu().numpy()
    white, blue = np.array([255.0, 255.0, 255.0]), np.array([8.0, 48.0, 107.0])
    rgb = white + values[..., None] * (blue - white)
    return np.kron(rgb, np.ones((cell, cell, 1))).astype(np.uint8)


def attention_panel(
    attention: Tensor, box: Sequence[int] | None, size: Sequence[int]
) -> np.ndarray:
    """HRDA's scale attention as an ``H×W×3`` uint8 picture with the detail box outlined.

    Args:
        attention: ``h×w`` values in [0, 1] (1: the detail view is trusted), bilinearly resized
            to ``size``; shown as grey levels (black 0, white 1).
        box: ``(y1, y2, x1, x2)`` of the detail crop in image pixels, drawn as a red outline one
            pixel wide on the box's border; ``None`` draws none.
        size: ``(H, W)`` of the picture (the training crop).
    """
    height, width = (int(v) for v in size)
    grid = torch.nn.functional.interpolate(
        attention.detach().float().cpu()[None, None],
        size=(height, width),
        mode="bilinear",
        align_corners=False,
    )[0, 0]
    grey = (grid.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    picture = np.repeat(grey[..., None], 3, axis=2)
    if box is not None:
        y1, y2, x1, x2 = (int(v) for v in box)
        red = np.array([255, 0, 0], dtype=np.uint8)
        picture[y1, x1:x2] = picture[y2 - 1, x1:x2] = red
        picture[y1:y2, x1] = picture[y1:y2, x2 - 1] = red
    return picture


def wandb_class_labels(names: Sequence[str]) -> dict[int, str]:
    """``class_labels`` of a W&B mask for the classes ``names``: ``{0: names[0], …,
    K-1: names[K-1], K: "ignore"}`` (``K = len(names)``, the id :func:`wandb_mask` gives the
    ignore label).

    Raises:
        ValueError: more than 127 classes (the ignore id would not fit a W&B mask).
    """
    if len(names) > MAX_MASK_ID:
        raise ValueError(
            f"W&B masks hold class ids 0–{MAX_MASK_ID}; "
            f"{len(names)} classes plus 'ignore' do not fit"
        )
    return {i: str(name) for i, name in enumerate(names)} | {len(names): "ignore"}


def wandb_mask(labels: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """An ``H×W`` label map as W&B mask data: uint8, ``ignore_index`` → ``num_classes``.

    Args:
        labels: ``H×W`` integer class ids in ``[0, num_classes)`` or ``ignore_index``.
        num_classes: number of classes K; the ignore label is shown as class K.
        ignore_index: label of void pixels (255).

    Raises:
        ValueError: ``num_classes`` above 127 (the ignore id would not fit a W&B mask).
    """
    if num_classes > MAX_MASK_ID:
        raise ValueError(f"W&B masks hold class ids 0–{MAX_MASK_ID}; got {num_classes} classes")
    labels = labels.detach().cpu().long()
    labels = torch.where(labels == ignore_index, torch.full_like(labels, num_classes), labels)
    return labels.numpy().astype(np.uint8)


class SegmentationPanels(Callback):
    """Log images with ground-truth/prediction masks and a per-class IoU chart to W&B.

    - ``train/mixed_batch``: the latest mixed batch of a self-training method
      (``pl_module.last_mix``, images and mixed labels) every ``every_n_steps`` optimiser steps;
    - ``train/scale_attention``: with HRDA (``pl_module.last_scales``), the scale attention of
      the step's last training forward (weighted by the fused softmax; white: detail trusted)
      with its detail box outlined in red (:func:`attention_panel`);
    - ``val/examples``: the first validation batch with ground-truth and predicted masks
      (``pl_module.segment``), at every validation;
    - ``val/IoU_per_class``: a bar chart of ``pl_module.last_iou["val"]`` after every
      validation (its table is ``val/IoU_per_class_table``).
    - ``val/confusion_matrix``: the row-normalised pixel confusion matrix of that validation
      (``pl_module.last_confusion["val"]``) as a heatmap, its values in
      ``val/confusion_matrix_table``.

    Masks show the ignore label as class ``K`` named ``"ignore"``. Panels are logged as rows of
    their own at Lightning's ``trainer/global_step`` (see the module docstring). Nothing is done
    without a :class:`~lightning.pytorch.loggers.WandbLogger`, during the sanity check, or on
    ranks other than 0.

    Args:
        every_n_steps: log the latest mixed training batch (self-training methods) every N steps.
        max_images: images per panel.
    """

    def __init__(self, every_n_steps: int = 1000, max_images: int = 4) -> None:
        self.every_n_steps = every_n_steps
        self.max_images = max_images

    @staticmethod
    def _wandb(trainer: Trainer) -> WandbLogger | None:
        """The trainer's W&B logger on rank 0, else ``None``."""
        if not trainer.is_global_zero:
            return None
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                return logger
        return None

    @staticmethod
    def _step(trainer: Trainer) -> int:
        """The step Lightning logs its scalars at (finished training batches)."""
        return int(
            getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step)
        )

    @staticmethod
    def _class_names(pl_module: LightningModule) -> list[str]:
        names = getattr(pl_module, "class_names", None)
        if names:
            return list(names)
        return [str(i) for i in range(int(pl_module.num_classes))]

    def _masks(self, pl_module: LightningModule, **masks: Tensor) -> dict[str, dict[str, Any]]:
        """W&B ``masks`` of one image: name → ``{"mask_data", "class_labels"}``."""
        names = self._class_names(pl_module)
        class_labels = wandb_class_labels(names)
        ignore_index = getattr(pl_module, "ignore_index", IGNORE_INDEX)
        return {
            key: {
                "mask_data": wandb_mask(value, len(names), ignore_index),
                "class_labels": class_labels,
            }
            for key, value in masks.items()
        }

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        logger = self._wandb(trainer)
        mixed = getattr(pl_module, "last_mix", None)
        if logger is None or mixed is None or trainer.global_step % self.every_n_steps:
            return
        n = min(self.max_images, mixed["image"].shape[0])
        images = denormalize(mixed["image"][:n], getattr(pl_module, "normalization", None))
        logger.log_image(
            "train/mixed_batch",
            list(images),
            step=self._step(trainer),
            masks=[self._masks(pl_module, mixed_label=mixed["label"][i]) for i in range(n)],
        )
        scales = getattr(pl_module, "last_scales", None)  # HRDA: attention and detail box
        if scales is not None:
            attention = scales["attention"][:n, 0]
            size = tuple(mixed["image"].shape[-2:])
            logger.log_image(
                "train/scale_attention",
                [attention_panel(a, scales["box"], size) for a in attention],
                step=self._step(trainer),
                caption=[f"detail box (y1, y2, x1, x2) = {tuple(scales['box'])}"] * len(attention),
            )

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
        n = min(self.max_images, batch["image"].shape[0])
        with torch.no_grad():
            preds = pl_module.segment(batch["image"][:n], size=tuple(batch["mask"].shape[-2:]))
        images = denormalize(batch["image"][:n], getattr(pl_module, "normalization", None))
        masks = [
            self._masks(pl_module, ground_truth=batch["mask"][i], prediction=preds[i].argmax(0))
            for i in range(n)
        ]
        logger.log_image("val/examples", list(images), step=self._step(trainer), masks=masks)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # after the module's on_validation_epoch_end has computed last_iou
        logger = self._wandb(trainer)
        per_class = getattr(pl_module, "last_iou", {}).get("val")
        if logger is None or per_class is None or trainer.sanity_checking:
            return
        import wandb

        names = self._class_names(pl_module)
        rows = [[n, float(v)] for n, v in zip(names, per_class, strict=True)]
        table = wandb.Table(data=rows, columns=["class", "IoU"])
        chart = wandb.plot.bar(table, "class", "IoU", title="val IoU")
        panels: dict[str, Any] = {"val/IoU_per_class": chart}
        confusion = getattr(pl_module, "last_confusion", {}).get("val")
        if confusion is not None:
            normalized = normalized_confusion(confusion)
            panels["val/confusion_matrix"] = wandb.Image(
                confusion_heatmap(normalized),
                caption="rows: label, columns: prediction; each row sums to 1 (class order: "
                + ", ".join(names)
                + ")",
            )
            cells = [
                [names[i], names[j], float(normalized[i, j])]
                for i in range(len(names))
                for j in range(len(names))
            ]
            panels["val/confusion_matrix_table"] = wandb.Table(
                data=cells, columns=["label", "prediction", "fraction of the label's pixels"]
            )
        logger.log_metrics(panels, step=self._step(trainer))
