"""Pixel-wise cross-entropy losses for segmentation (source CE and the DACS weighted CE)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_uda.constants import IGNORE_INDEX

__all__ = ["cross_entropy", "pixel_weighted_cross_entropy", "upsample_logits"]


def upsample_logits(
    logits: Tensor, size: tuple[int, int] | torch.Size, align_corners: bool = False
) -> Tensor:
    """Resize logits bilinearly to ``size``.

    Args:
        logits: ``B×K×h×w`` scores.
        size: target ``(H, W)``.
        align_corners: ``False`` (default; mmseg, DAFormer, smp) treats pixels as areas;
            ``True`` maps the corner pixels of both grids onto each other, as DACS' and AdvEnt's
            ``nn.Upsample(..., align_corners=True)`` do in their losses, pseudo-labels and
            evaluation. The two differ by up to half an input pixel (4 output pixels for
            DeepLabV2's 1/8 logits), which matters at object boundaries.

    Returns:
        ``B×K×H×W``; the input itself when it already has that size.
    """
    size = (int(size[0]), int(size[1]))
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)


def _check_shapes(logits: Tensor, target: Tensor) -> None:
    if logits.dim() != 4 or target.dim() != 3 or logits.shape[0] != target.shape[0]:
        raise ValueError(
            "expected logits B×K×h×w and target B×H×W with the same B, got "
            f"logits {tuple(logits.shape)} and target {tuple(target.shape)}"
        )


def _pixel_cross_entropy(
    logits: Tensor, target: Tensor, ignore_index: int, align_corners: bool
) -> Tensor:
    """``B×H×W`` per-pixel CE at the label resolution; 0 at ignored pixels."""
    _check_shapes(logits, target)
    logits = upsample_logits(logits, target.shape[-2:], align_corners=align_corners)
    return F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    ignore_index: int = IGNORE_INDEX,
    align_corners: bool = False,
) -> Tensor:
    """Mean cross-entropy over the valid (non-ignored) pixels.

    Logits are upsampled to the label size first. Unlike ``F.cross_entropy``, a batch without any
    valid pixel gives 0 (still attached to the graph) instead of NaN.

    Args:
        logits: ``B×K×h×w`` scores.
        target: ``B×H×W`` long train ids, ``ignore_index`` for void.
        ignore_index: label value excluded from the loss and from the mean.
        align_corners: how logits are upsampled (see :func:`upsample_logits`).

    Returns:
        Scalar loss.
    """
    per_pixel = _pixel_cross_entropy(logits, target, ignore_index, align_corners)
    num_valid = (target != ignore_index).sum().clamp_min(1)
    return per_pixel.sum() / num_valid


def pixel_weighted_cross_entropy(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | float,
    ignore_index: int = IGNORE_INDEX,
    align_corners: bool = False,
) -> Tensor:
    """Cross-entropy weighted per pixel, with the DACS reduction.

    ``loss = mean over ALL B·H·W pixels of weight × CE``: ignored pixels contribute 0 to the sum
    but still count in the denominator (DACS ``CrossEntropyLoss2dPixelWiseWeighted``). The weight
    is used as given; callers pass a detached weight (pseudo-label confidence).

    Args:
        logits: ``B×K×h×w`` scores (upsampled to the label size).
        target: ``B×H×W`` long train ids, ``ignore_index`` for void.
        weight: ``B×H×W`` per-pixel weights, a ``B`` vector (one weight per image), or a scalar.
        ignore_index: label value whose pixels contribute 0.
        align_corners: how logits are upsampled (see :func:`upsample_logits`).

    Returns:
        Scalar loss.
    """
    per_pixel = _pixel_cross_entropy(logits, target, ignore_index, align_corners)
    weight = torch.as_tensor(weight, dtype=per_pixel.dtype, device=per_pixel.device)
    if weight.dim() == 1:
        if weight.shape[0] != target.shape[0]:
            raise ValueError(
                f"a 1-d weight must have one entry per image ({target.shape[0]}), "
                f"got {tuple(weight.shape)}"
            )
        weight = weight.view(-1, 1, 1)
    elif weight.dim() not in (0, 3):
        raise ValueError(
            f"weight must be a scalar, a B vector or B×H×W like the target {tuple(target.shape)}, "
            f"got {tuple(weight.shape)}"
        )
    return (weight * per_pixel).mean()
