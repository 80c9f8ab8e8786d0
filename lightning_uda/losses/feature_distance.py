"""DAFormer's ImageNet feature distance (Hoyer et al., CVPR 2022, §3.3), torch only."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_uda.constants import IGNORE_INDEX

__all__ = ["CITYSCAPES_THING_CLASSES", "downscale_labels", "feature_distance"]

#: Cityscapes train ids of the "thing" classes DAFormer regularises: pole, traffic light (6, 7)
#: and person … bicycle (11–18).
CITYSCAPES_THING_CLASSES = (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)


def downscale_labels(
    labels: Tensor,
    size: tuple[int, int],
    num_classes: int,
    min_ratio: float = 0.75,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Labels of feature cells: the majority class of each cell if it covers ≥ ``min_ratio``.

    Each of the ``size`` cells averages the one-hot labels it covers (void counted as a class of
    its own); its label is the most frequent class, or ``ignore_index`` when that class is void
    or covers less than ``min_ratio`` of the cell (DAFormer's ``downscale_label_ratio``, which
    needs an integer scale factor; adaptive pooling here accepts any feature size, e.g.
    DeepLabV2's 65×65 for 512² crops, and equals it when the factor is an integer).

    Args:
        labels: ``B×H×W`` train ids.
        size: ``(h, w)`` of the feature map.
        num_classes: C.
        min_ratio: DAFormer's ``imnet_feature_dist_scale_min_ratio`` (0.75).
        ignore_index: void label.

    Returns:
        ``B×h×w`` long labels.
    """
    void = num_classes
    ids = torch.where(labels == ignore_index, torch.full_like(labels, void), labels)
    onehot = F.one_hot(ids.long(), num_classes + 1).permute(0, 3, 1, 2).float()
    shares = F.adaptive_avg_pool2d(onehot, size)
    ratio, cell = shares.max(dim=1)
    cell = torch.where(
        (cell == void) | (ratio < min_ratio), torch.full_like(cell, ignore_index), cell
    )
    return cell


def feature_distance(
    features: Tensor,
    reference: Tensor,
    labels: Tensor | None = None,
    classes: Sequence[int] | None = CITYSCAPES_THING_CLASSES,
    num_classes: int = 19,
    min_ratio: float = 0.75,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Mean L2 distance between ``features`` and ``reference`` (``B×C×h×w``) over positions.

    With ``labels`` (``B×H×W``) and ``classes``, only feature positions whose downscaled label
    (:func:`downscale_labels`) is one of ``classes`` count; when none does, the result is 0
    (attached to the graph) instead of DAFormer's NaN mean of nothing.

    Returns:
        Scalar: mean over the counted positions of ``‖features − reference‖₂`` over channels.
    """
    distance = torch.linalg.vector_norm(features - reference.detach(), dim=1)  # B×h×w
    if labels is None or classes is None:
        return distance.mean()
    cells = downscale_labels(
        labels, tuple(features.shape[-2:]), num_classes, min_ratio, ignore_index
    )
    chosen = torch.isin(cells, torch.as_tensor(list(classes), device=cells.device))
    if not bool(chosen.any()):
        return distance.sum() * 0.0
    return distance[chosen].mean()
