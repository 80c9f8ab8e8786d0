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

**Several targets.** When the datamodule has several validation sets (``UDADataModule(val={name:
dataset, ...})``, :attr:`~lightning_uda.data.UDADataModule.val_names`), each has its own
confusion matrix and its metrics are logged as ``val/<name>/mIoU``, ``val/<name>/IoU/<class>``
and ``val/<name>/<subset>``; the *primary* target's (``val_primary``, default the first) are also
logged under the plain keys ``val/mIoU``, ``val/IoU/<class>``, so every recipe, checkpoint name
and ``select_by: val/mIoU`` keeps meaning "the target this run is about". Each target's numbers
equal evaluating that target alone. One unnamed val set logs the plain keys only, as before.

**Under DDP** every rank computes the same values (``compute()`` all-reduces the confusion
matrix first), and they are logged with ``sync_dist=True, reduce_fx="max"``: Lightning then
knows the epoch-level values are reduced across ranks (and does not advise syncing them), and the
max of identical values is that value bit for bit (a mean of ``W`` identical float32 values need
not be). The all-reduce per key is a few bytes, once per validation.

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
from torch import Tensor, nn
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
        self._metric_args = dict(
            num_classes=num_classes,
            ignore_index=ignore_index,
            average="none",
            zero_division=float("nan"),
        )
        self.val_iou = MulticlassJaccardIndex(**self._metric_args)
        self.test_iou = MulticlassJaccardIndex(**self._metric_args)
        #: One confusion matrix per further validation target (loader index ≥ 1), created when
        #: its first batch arrives; torchmetrics' states are not persistent, so checkpoints do
        #: not depend on the number of targets.
        self.extra_val_ious = nn.ModuleDict()
        #: Per-class IoU (percent, CPU) of the last evaluation, by prefix ("val", "test", and
        #: "val/<name>" per target when there are several).
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

    def _compute_iou(self, metric: MulticlassJaccardIndex, prefix: str) -> dict[str, float]:
        """``{prefix/IoU/<class>, prefix/<subset>, prefix/mIoU: percent}`` of ``metric`` (reset
        afterwards); the per-class IoU and confusion matrix are kept under ``prefix``."""
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
        self.last_iou[prefix] = per_class.cpu()
        return results

    def _log_results(self, results: Mapping[str, float]) -> None:
        # NaN (a class absent from prediction and label) would poison loggers' plots; skip it.
        # Every rank holds the same values (see the module docstring: compute() synced the
        # confusion matrix), so the same keys are logged everywhere and the max is exact.
        finite = {k: v for k, v in results.items() if not math.isnan(v)}
        self.log_dict(finite, sync_dist=True, reduce_fx="max")

    def _log_iou(self, metric: MulticlassJaccardIndex, prefix: str) -> dict[str, float]:
        results = self._compute_iou(metric, prefix)
        self._log_results(results)
        return results

    # ------------------------------------------------------------------ validation targets
    def val_target_names(self) -> list[str] | None:
        """Names of the validation targets in loader order (the datamodule's ``val_names``;
        ``loader0``, ``loader1``, … for several loaders passed without one); ``None`` for one
        unnamed val set."""
        names = getattr(self._datamodule(), "val_names", None)
        if names:
            return list(names)
        if any(metric.update_called for metric in self.extra_val_ious.values()):
            # several loaders given without a datamodule's names: number them
            count = 1 + max(int(key) for key in self.extra_val_ious)
            return [f"loader{i}" for i in range(count)]
        return None

    def _val_metric(self, dataloader_idx: int) -> MulticlassJaccardIndex:
        if dataloader_idx == 0:
            return self.val_iou
        key = str(dataloader_idx)
        if key not in self.extra_val_ious:
            self.extra_val_ious[key] = MulticlassJaccardIndex(**self._metric_args).to(self.device)
        return self.extra_val_ious[key]

    def validation_step(
        self, batch: Mapping[str, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._update_iou(self._val_metric(dataloader_idx), batch)

    def on_validation_epoch_end(self) -> None:
        names = self.val_target_names()
        if names is None:
            self._log_iou(self.val_iou, "val")
            return
        primary = getattr(self._datamodule(), "val_primary", names[0])
        results: dict[str, float] = {}
        for index, name in enumerate(names):
            metric = self._val_metric(index)
            if not metric.update_called:  # e.g. limit_val_batches=0 for this loader
                continue
            prefix = f"val/{name}"
            target = self._compute_iou(metric, prefix)
            results.update(target)
            if name == primary:  # the plain keys: val/mIoU means the primary target
                results.update({"val" + k[len(prefix) :]: v for k, v in target.items()})
                self.last_iou["val"] = self.last_iou[prefix]
                self.last_confusion["val"] = self.last_confusion[prefix]
        self._log_results(results)

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
