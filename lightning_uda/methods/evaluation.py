"""`Evaluation`: how every method is scored and how it predicts.

``val/mIoU`` (and ``test/mIoU``, ``val/IoU/<class>``, subset means such as ``val/mIoU16``) is the
IoU of the *student* in percent, accumulated over the whole split (one confusion matrix, synced
across ranks), void pixels (255) excluded, classes absent from both prediction and label left out
of the mean. It is measured at the resolution of the labels the val dataset yields, with the
logits upsampled to them; so the evaluation protocol is the val transform's: with
``preset("cityscapes_val")`` (protocol ``"full"``) the network sees 1024×512 images and is scored
against the full 2048×1024 labels (AdvEnt, DAFormer, MIC, the official benchmark); with
``protocol="dacs"`` labels are nearest-resized to 1024×512 (DACS' evaluation). See
``lightning_uda.data.transforms``.

Inference is ``"whole"`` (one forward per image) or ``"slide"`` (overlapping windows, logits
averaged: :func:`lightning_uda.inference.sliding_window_logits`) for images larger than the
training crop.

A mixin of :class:`~lightning_uda.methods.UDAModule`; its state (the metrics, the last results)
is created by :meth:`Evaluation.init_evaluation`, and logits are upsampled with the module's own
rule (``UDAModule.upsample``, ``align_corners``), the one its losses use.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassJaccardIndex

from lightning_uda.inference import INFERENCE_MODES, sliding_window_logits
from lightning_uda.methods.guards import first_non_finite


class Evaluation:
    """Mixin of :class:`~lightning_uda.methods.UDAModule`: validation, test and prediction."""

    def init_evaluation(
        self,
        *,
        num_classes: int,
        ignore_index: int,
        class_names: Sequence[str] | None,
        class_subsets: Mapping[str, Sequence[int]] | None,
        inference: str,
        slide_window: tuple[int, int],
        slide_stride: tuple[int, int],
    ) -> None:
        """Check the evaluation arguments and create the metrics (see ``UDAModule``'s Args)."""
        owner = type(self).__name__
        if inference not in INFERENCE_MODES:
            raise ValueError(
                f"{owner}: inference must be one of {INFERENCE_MODES}, got {inference!r}"
            )
        for name, pair in (("slide_window", slide_window), ("slide_stride", slide_stride)):
            if len(pair) != 2 or min(int(v) for v in pair) < 1:
                raise ValueError(f"{owner}: {name} must be (height, width) >= 1, got {pair!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.inference = inference
        self.slide_window = (int(slide_window[0]), int(slide_window[1]))
        self.slide_stride = (int(slide_stride[0]), int(slide_stride[1]))
        self._class_names = list(class_names) if class_names is not None else None
        self._class_subsets = (
            {k: list(v) for k, v in class_subsets.items()} if class_subsets is not None else None
        )
        # zero_division=nan: a class absent from both prediction and label has no IoU and is left
        # out of the mean (as Cityscapes' and mmseg's evaluation do), instead of counting as 0.
        metric_args = dict(
            num_classes=num_classes,
            ignore_index=ignore_index,
            average="none",
            zero_division=float("nan"),
        )
        self.val_iou = MulticlassJaccardIndex(**metric_args)
        self.test_iou = MulticlassJaccardIndex(**metric_args)
        #: Per-class IoU (percent, CPU) of the last evaluation, by prefix ("val", "test").
        self.last_iou: dict[str, Tensor] = {}
        #: ``K×K`` pixel confusion matrix (rows: label, columns: prediction; summed over the DDP
        #: ranks, void excluded) of the last evaluation, by prefix.
        self.last_confusion: dict[str, Tensor] = {}

    # ------------------------------------------------------------------ inference
    def infer(self, images: Tensor) -> Tensor:
        """Evaluation logits of the student: one forward (``inference="whole"``, at the model's
        output stride) or averaged sliding windows (``"slide"``, at the image resolution)."""
        if self.inference == "slide":
            return sliding_window_logits(
                self.model,
                images,
                self.slide_window,
                self.slide_stride,
                align_corners=self.align_corners,
            )
        return self.model(images)

    def segment(self, images: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Evaluation logits (:meth:`infer`) upsampled to ``size`` (default: the image size)."""
        return self.upsample(self.infer(images), size or tuple(images.shape[-2:]))

    # ------------------------------------------------------------------ classes
    @property
    def class_names(self) -> list[str]:
        """Class names for metric keys: given, else the datamodule's, else ``"0".."K-1"``."""
        if self._class_names is not None:
            return self._class_names
        names = getattr(self._datamodule(), "classes", None)
        if names is not None and len(names) == self.num_classes:
            return list(names)
        return [str(i) for i in range(self.num_classes)]

    @property
    def class_subsets(self) -> dict[str, list[int]]:
        """Metric name → class ids averaged into it (the first one is logged as ``mIoU`` too)."""
        if self._class_subsets is not None:
            return self._class_subsets
        subsets = getattr(self._datamodule(), "class_subsets", None)
        if subsets:
            return {k: list(v) for k, v in subsets.items()}
        return {"mIoU": list(range(self.num_classes))}

    def _datamodule(self) -> Any:
        trainer = self._trainer
        return getattr(trainer, "datamodule", None) if trainer is not None else None

    # ------------------------------------------------------------------ metrics
    def _update_iou(self, metric: MulticlassJaccardIndex, batch: Mapping[str, Tensor]) -> None:
        mask = batch["mask"]
        logits = self.segment(batch["image"], size=tuple(mask.shape[-2:]))
        if not bool(torch.isfinite(logits).all()):
            bad = first_non_finite(self.model)
            raise FloatingPointError(
                f"{type(self).__name__}: the segmentor's logits are not finite"
                + (f" ({bad} holds NaN or inf)" if bad else " (the inputs may be)")
                + "; no IoU is reported for a model that diverged. Evaluate an earlier "
                "checkpoint."
            )
        metric.update(logits.argmax(dim=1), mask)

    def _log_iou(self, metric: MulticlassJaccardIndex, prefix: str) -> dict[str, float]:
        per_class = metric.compute() * 100.0  # percent, as the papers report
        with metric.sync_context():
            self.last_confusion[prefix] = metric.confmat.detach().cpu().clone()
        metric.reset()
        results: dict[str, float] = {}
        for name, iou in zip(self.class_names, per_class, strict=True):
            results[f"{prefix}/IoU/{name}"] = float(iou)
        for i, (subset_name, ids) in enumerate(self.class_subsets.items()):
            value = float(torch.nanmean(per_class[ids]))
            results[f"{prefix}/{subset_name}"] = value
            if i == 0 and subset_name != "mIoU":
                results[f"{prefix}/mIoU"] = value
        # NaN (a class absent from prediction and label) would poison loggers' plots; skip it.
        self.log_dict({k: v for k, v in results.items() if not math.isnan(v)}, sync_dist=False)
        self.last_iou[prefix] = per_class.cpu()
        return results

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        self._update_iou(self.val_iou, batch)

    def on_validation_epoch_end(self) -> None:
        self._log_iou(self.val_iou, "val")

    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        self._update_iou(self.test_iou, batch)

    def on_test_epoch_end(self) -> None:
        self._log_iou(self.test_iou, "test")

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        """Full-resolution train-id label maps.

        Returns ``{"pred": list of H_i×W_i long tensors, "path": list | None}``; each map has the
        item's ``orig_size`` when the batch carries it (so predictions can be written as
        Cityscapes labelId PNGs at the original resolution), else the image size.
        """
        images = batch["image"]
        logits = self.infer(images)
        sizes = batch.get("orig_size")
        preds = []
        for i in range(images.shape[0]):
            size = tuple(int(s) for s in sizes[i]) if sizes is not None else images.shape[-2:]
            preds.append(self.upsample(logits[i : i + 1], tuple(size)).argmax(dim=1)[0])
        return {"pred": preds, "path": batch.get("path")}
