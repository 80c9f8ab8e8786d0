"""HRDA's scale fusion and detail box: pure functions on tensors (no modules).

:func:`fuse_scales` combines the context logits (``h×w``), the detail logits at a box of the
fused grid (``2h×2w``) and the scale attention as HRDA's head does; :func:`sample_detail_box`
draws the detail crop's position; :func:`crop_box` cuts a box out of images, labels or weights.
:class:`lightning_uda.models.HRDA` builds on them (design notes: ``docs/hrda.md``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Box", "crop_box", "fuse_scales", "sample_detail_box"]

#: A box ``(y1, y2, x1, x2)``: rows ``y1:y2`` and columns ``x1:x2``.
Box = tuple[int, int, int, int]


def _up2(x: Tensor) -> Tensor:
    """Bilinear ×2 with ``align_corners=False`` (HRDA's ``resize`` of attention and logits)."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def fuse_scales(
    lr_logits: Tensor, hr_logits: Tensor, attention: Tensor, box: Sequence[int] | None = None
) -> Tensor:
    """HRDA's scale fusion: ``up(a·m) · insert(hr) + up((1 − a·m) · lr)``.

    Args:
        lr_logits: context logits ``B×K×h×w``.
        hr_logits: detail logits ``B×K×(y2−y1)×(x2−x1)`` (``B×K×2h×2w`` when ``box`` is None).
        attention: scale attention after the sigmoid, ``B×K×h×w`` (class-wise) or ``B×1×h×w``.
        box: ``(y1, y2, x1, x2)`` of the detail logits in the coordinates of the fused output
            (``2h×2w``), even numbers (so the box falls on the ``h×w`` grid); ``None``: the detail
            logits cover the whole output.

    Returns:
        Fused logits ``B×K×2h×2w``. ``m`` is 1 inside the box scaled to the ``h×w`` grid (rows
        ``y1/2:y2/2``, columns ``x1/2:x2/2``) and 0 outside; ``insert`` places ``hr_logits`` at the
        box in a zero ``B×K×2h×2w`` tensor; ``up`` is bilinear ×2 with ``align_corners=False``.
        Outside the (upsampled) box the result is ``up(lr)`` where ``a·m`` is 0.

    Raises:
        ValueError: shapes that do not fit together, or a box that is odd, empty or outside the
            output (the message names the sizes).
    """
    if lr_logits.dim() != 4 or hr_logits.dim() != 4 or attention.dim() != 4:
        raise ValueError(
            "fuse_scales takes B×K×h×w tensors; got lr_logits "
            f"{tuple(lr_logits.shape)}, hr_logits {tuple(hr_logits.shape)}, attention "
            f"{tuple(attention.shape)}"
        )
    batch, classes, height, width = lr_logits.shape
    if attention.shape[0] != batch or attention.shape[1] not in (1, classes):
        raise ValueError(
            f"attention must be B×K×h×w or B×1×h×w for lr_logits {tuple(lr_logits.shape)}; got "
            f"{tuple(attention.shape)}"
        )
    if tuple(attention.shape[-2:]) != (height, width):
        raise ValueError(
            f"attention {tuple(attention.shape)} and lr_logits {tuple(lr_logits.shape)} must "
            "share the h×w grid"
        )
    out_h, out_w = 2 * height, 2 * width
    if box is None:
        box = (0, out_h, 0, out_w)
    y1, y2, x1, x2 = (int(v) for v in box)
    if not (0 <= y1 < y2 <= out_h and 0 <= x1 < x2 <= out_w):
        raise ValueError(
            f"box (y1, y2, x1, x2) = {(y1, y2, x1, x2)} must be a non-empty box inside the fused "
            f"output of {out_h}×{out_w} (twice the {height}×{width} context grid)"
        )
    if any(v % 2 for v in (y1, y2, x1, x2)):
        raise ValueError(
            f"box {(y1, y2, x1, x2)} must have even coordinates on the {out_h}×{out_w} fused "
            "grid so that it falls on the context grid; sample detail boxes with coordinates "
            "divisible by 2 × the output stride (sample_detail_box)"
        )
    if tuple(hr_logits.shape) != (batch, classes, y2 - y1, x2 - x1):
        raise ValueError(
            f"hr_logits must be B×K×(y2−y1)×(x2−x1) = {(batch, classes, y2 - y1, x2 - x1)} for "
            f"box {(y1, y2, x1, x2)}; got {tuple(hr_logits.shape)}"
        )
    mask = attention.new_zeros((batch, 1, height, width))
    mask[:, :, y1 // 2 : y2 // 2, x1 // 2 : x2 // 2] = 1.0
    gate = attention * mask
    inserted = hr_logits.new_zeros((batch, classes, out_h, out_w))
    inserted[:, :, y1:y2, x1:x2] = hr_logits
    return _up2(gate) * inserted + _up2((1.0 - gate) * lr_logits)


def sample_detail_box(
    crop_size: Sequence[int],
    detail_size: Sequence[int],
    divisible: int,
    generator: torch.Generator | None = None,
) -> Box:
    """A random detail box ``(y1, y2, x1, x2)`` of ``detail_size`` inside a ``crop_size`` image.

    ``y1`` is drawn uniformly from ``0, d, 2d, ..., ⌊(H − h) / d⌋·d`` (``d = divisible``), ``x1``
    likewise, so the box lies inside the image and its offsets are multiples of ``d``. HRDA uses
    ``d = 8`` with DAFormer's stride-4 logits: the box then falls on the fused (1/4) and the
    context (1/8) grids.

    Args:
        crop_size: ``(H, W)`` of the full-resolution training crop.
        detail_size: ``(h, w)`` of the detail crop; multiples of ``divisible``.
        divisible: the offset step (2 × the output stride).
        generator: the random source (a CPU generator; the global one when ``None``).

    Raises:
        ValueError: a detail crop larger than the training crop, or sizes not divisible by
            ``divisible`` (the message names the sizes and the fix).
    """
    height, width = (int(v) for v in crop_size)
    detail_h, detail_w = (int(v) for v in detail_size)
    if divisible < 1:
        raise ValueError(f"divisible must be >= 1, got {divisible}")
    if detail_h > height or detail_w > width:
        raise ValueError(
            f"the detail crop {detail_h}×{detail_w} is larger than the training crop "
            f"{height}×{width}: HRDA's detail crop is a part of the training crop (512×512 of "
            "1024×1024). Lower detail_size or raise the training crop."
        )
    for name, value in (("detail height", detail_h), ("detail width", detail_w)):
        if value % divisible:
            raise ValueError(
                f"the {name} {value} is not divisible by {divisible} (2 × the output stride), so "
                "the detail logits would not fall on the fused grid; use a multiple of "
                f"{divisible}"
            )
    steps_y = (height - detail_h) // divisible + 1
    steps_x = (width - detail_w) // divisible + 1
    draw = torch.randint(0, steps_y * steps_x, (1,), generator=generator).item()
    y1 = (draw // steps_x) * divisible
    x1 = (draw % steps_x) * divisible
    return y1, y1 + detail_h, x1, x1 + detail_w


def crop_box(tensor: Tensor, box: Sequence[int]) -> Tensor:
    """``tensor[..., y1:y2, x1:x2]`` (images ``B×C×H×W``, labels or weights ``B×H×W``)."""
    y1, y2, x1, x2 = (int(v) for v in box)
    return tensor[..., y1:y2, x1:x2]
