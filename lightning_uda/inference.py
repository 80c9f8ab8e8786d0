"""Whole-image and sliding-window inference of a segmentor.

``"whole"`` runs the segmentor once on the full (resized) image, as DACS, AdvEnt and DAFormer
evaluate Cityscapes at 1024×512. ``"slide"`` runs it on overlapping windows, for images larger
than the training crop (HRDA and MIC evaluate full-resolution Cityscapes this way): windows of
``window`` pixels every ``stride`` pixels, the last row and column of windows shifted back to end
at the image border, each window's logits upsampled to the window and averaged where windows
overlap. The window grid is mmseg's ``slide_inference``; here the windows of one image are
batched (``window_batch_size`` at a time) instead of run one by one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from lightning_uda.losses.cross_entropy import upsample_logits

__all__ = ["INFERENCE_MODES", "sliding_window_logits", "window_starts"]

#: Inference modes of :class:`~lightning_uda.methods.UDAModule` (``inference=...``).
INFERENCE_MODES = ("whole", "slide")


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of the windows along one axis of ``length`` pixels.

    ``ceil((length − window) / stride) + 1`` windows at ``0, stride, 2·stride, ...``, the last one
    moved back to end at ``length``; one window at 0 when ``length <= window``.

    Example:
        >>> window_starts(1024, 512, 341)
        [0, 341, 512]
    """
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got {window} and {stride}")
    count = max(math.ceil((length - window) / stride), 0) + 1
    return [max(min(i * stride, length - window), 0) for i in range(count)]


def sliding_window_logits(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    window: Sequence[int],
    stride: Sequence[int],
    align_corners: bool = False,
    window_batch_size: int = 4,
) -> Tensor:
    """Logits ``B×K×H×W`` of ``images`` (``B×3×H×W``) from overlapping windows.

    Args:
        model: ``B'×3×h×w -> B'×K×h'×w'`` logits (any output stride).
        images: the batch, already in the model's input space.
        window: ``(height, width)`` of a window (the training crop, e.g. ``(512, 512)``).
        stride: ``(height, width)`` step between windows (e.g. ``(341, 341)``, 2/3 of the window).
        align_corners: how each window's logits are upsampled to the window.
        window_batch_size: windows run through the model at once, per image.

    Returns:
        The average of the overlapping windows' upsampled logits at every pixel, at the image
        resolution. Each pixel is covered by at least one window.
    """
    if len(window) != 2 or len(stride) != 2:
        raise ValueError(f"window and stride are (height, width); got {window} and {stride}")
    batch, _, height, width = images.shape
    win_h, win_w = min(int(window[0]), height), min(int(window[1]), width)
    boxes = [
        (top, left)
        for top in window_starts(height, win_h, int(stride[0]))
        for left in window_starts(width, win_w, int(stride[1]))
    ]
    total: Tensor | None = None
    count = images.new_zeros((1, 1, height, width))
    for first in range(0, len(boxes), window_batch_size):
        chunk = boxes[first : first + window_batch_size]
        crops = torch.cat([images[:, :, t : t + win_h, x : x + win_w] for t, x in chunk])
        logits = upsample_logits(model(crops), (win_h, win_w), align_corners=align_corners)
        if total is None:
            total = logits.new_zeros((batch, logits.shape[1], height, width))
        for i, (top, left) in enumerate(chunk):
            total[:, :, top : top + win_h, left : left + win_w] += logits[
                i * batch : (i + 1) * batch
            ]
            count[:, :, top : top + win_h, left : left + win_w] += 1
    assert total is not None
    return total / count
