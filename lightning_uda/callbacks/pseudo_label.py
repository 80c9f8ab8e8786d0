"""`PseudoLabelThreshold`: teacher logits → pseudo-labels and pixel weights, with statistics."""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch import Callback, LightningModule
from torch import Tensor
from torchmetrics.functional.classification import multiclass_jaccard_index

from lightning_uda.constants import IGNORE_INDEX

Weighting = Literal["uniform", "pixel"]


class PseudoLabelThreshold(Callback):
    """Turn teacher logits into pseudo-labels and confidence weights (DACS §3.2).

    ``labels = argmax softmax(logits)``. With ``weighting="uniform"`` (DACS) every target pixel
    gets the same weight ``q`` = fraction of the batch's pixels whose max probability is
    ``>= threshold``; with ``"pixel"`` confident pixels weigh 1 and the others 0.

    The module calls it (``pl_module.pseudo_label(logits)`` looks it up among the Trainer's
    callbacks), and it logs, through ``pl_module.log``: the mean max-probability, ``q``, the class
    histogram of the pseudo-labels, and, when the target batch carries monitoring labels, the
    pseudo-label pixel accuracy and mIoU (monitoring only; never used for training).

    Args:
        threshold: confidence threshold τ (0.968 in DACS).
        weighting: "uniform" (one scalar per batch) or "pixel".
    """

    def __init__(self, threshold: float = 0.968, weighting: Weighting = "uniform") -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"PseudoLabelThreshold threshold must be in [0, 1], got {threshold}")
        if weighting not in ("uniform", "pixel"):
            raise ValueError(
                f"PseudoLabelThreshold weighting must be 'uniform' or 'pixel', got {weighting!r}"
            )
        self.threshold = threshold
        self.weighting = weighting

    @torch.no_grad()
    def __call__(
        self,
        logits: Tensor,
        pl_module: LightningModule | None = None,
        monitor_mask: Tensor | None = None,
        class_names: list[str] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Pseudo-labels for ``logits``.

        Args:
            logits: teacher logits B×K×H×W (at the resolution the labels are needed).
            pl_module: if given, statistics are logged through it.
            monitor_mask: B×H×W true target labels, for logging accuracy only.
            class_names: names for the histogram keys (default: class ids).

        Returns:
            ``(labels, weights)``: long B×H×W and float B×H×W.
        """
        probs = torch.softmax(logits.detach().float(), dim=1)
        max_prob, labels = probs.max(dim=1)
        confident = (max_prob >= self.threshold).float()
        if self.weighting == "uniform":
            q = confident.mean()
            weights = q.expand_as(max_prob).clone()
        else:
            weights = confident
        if pl_module is not None:
            self._log(pl_module, labels, max_prob, confident, monitor_mask, class_names)
        return labels, weights

    def _log(
        self,
        pl_module: LightningModule,
        labels: Tensor,
        max_prob: Tensor,
        confident: Tensor,
        monitor_mask: Tensor | None,
        class_names: list[str] | None,
    ) -> None:
        batch_size = labels.shape[0]
        num_classes = int(getattr(pl_module, "num_classes", int(labels.max()) + 1))
        stats = {
            "pseudo/mean_max_prob": max_prob.mean(),
            "pseudo/confident_fraction": confident.mean(),
        }
        histogram = torch.bincount(labels.flatten(), minlength=num_classes).float()
        histogram = histogram / histogram.sum()
        names = class_names or [str(i) for i in range(num_classes)]
        for name, fraction in zip(names, histogram, strict=False):
            stats[f"pseudo/class_fraction/{name}"] = fraction
        if monitor_mask is not None:
            valid = monitor_mask != IGNORE_INDEX
            if valid.any():
                stats["pseudo/accuracy"] = (labels[valid] == monitor_mask[valid]).float().mean()
                stats["pseudo/mIoU"] = 100.0 * multiclass_jaccard_index(
                    labels,
                    monitor_mask,
                    num_classes=num_classes,
                    ignore_index=IGNORE_INDEX,
                    average="macro",
                )
        pl_module.log_dict(stats, batch_size=batch_size)
