"""ClassMix masks (ClassMix, DACS, DAFormer) and mask-based mixing of images and labels."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lightning_uda.constants import IGNORE_INDEX

__all__ = ["class_mix_mask", "mix"]


def _choose_classes(
    labels: Tensor,
    ignore_index: int,
    rounding: Literal["ceil", "floor"],
    generator: torch.Generator | None,
) -> Tensor:
    """A random half of the classes present in ``labels`` (any shape), on ``labels.device``."""
    classes = torch.unique(labels)
    classes = classes[classes != ignore_index]
    num_present = classes.numel()
    num_chosen = (num_present + 1) // 2 if rounding == "ceil" else num_present // 2
    device = generator.device if generator is not None else torch.device("cpu")
    order = torch.randperm(num_present, generator=generator, device=device)
    return classes[order[:num_chosen].to(classes.device)]


def class_mix_mask(
    labels: Tensor,
    ignore_index: int = IGNORE_INDEX,
    mode: Literal["per_image", "per_batch"] = "per_image",
    rounding: Literal["ceil", "floor"] = "ceil",
    generator: torch.Generator | None = None,
) -> Tensor:
    """ClassMix mask: the pixels whose label is in a random half of the present classes.

    - ``mode="per_image"`` (DACS, ClassMix): each image gets its own choice among its own classes.
    - ``mode="per_batch"`` (DAFormer variant): one choice among the classes of the whole batch,
      applied to every image.
    - ``rounding="ceil"`` chooses ``ceil(n/2)`` of the ``n`` present classes (DACS, source ground
      truth); ``"floor"`` chooses ``floor(n/2)`` (ClassMix paper, pseudo-labels).

    ``ignore_index`` is never a candidate, so void pixels are never in the mask. Images are
    handled in a Python loop over the batch (B is small; ``torch.unique`` is per image anyway).

    Args:
        labels: ``B×H×W`` long train ids (ground truth or pseudo-labels).
        ignore_index: void label, excluded from the candidates.
        mode: ``"per_image"`` or ``"per_batch"``.
        rounding: ``"ceil"`` or ``"floor"``.
        generator: random source for ``torch.randperm`` (CPU or on any device); global RNG if None.

    Returns:
        ``B×H×W`` bool mask on ``labels.device``; True = take the pixel from ``labels``' image.
    """
    if labels.dim() != 3:
        raise ValueError(f"expected B×H×W labels, got {tuple(labels.shape)}")
    if mode not in ("per_image", "per_batch"):
        raise ValueError(f"mode must be 'per_image' or 'per_batch', got {mode!r}")
    if rounding not in ("ceil", "floor"):
        raise ValueError(f"rounding must be 'ceil' or 'floor', got {rounding!r}")
    if mode == "per_batch":
        chosen = _choose_classes(labels, ignore_index, rounding, generator)
        return torch.isin(labels, chosen)
    masks = [
        torch.isin(image_labels, _choose_classes(image_labels, ignore_index, rounding, generator))
        for image_labels in labels
    ]
    return torch.stack(masks)


def mix(mask: Tensor, foreground: Tensor, background: Tensor) -> Tensor:
    """``mask·foreground + (1 − mask)·background``, keeping the inputs' dtype.

    Args:
        mask: ``B×H×W`` bool (hard ClassMix mask) or float in ``[0, 1]`` (soft mixing); it is
            broadcast over the channel dim of ``B×C×H×W`` inputs.
        foreground: ``B×C×H×W`` images / logits, or ``B×H×W`` labels (long) or weights (float).
        background: same shape and dtype as ``foreground``.

    Returns:
        Tensor shaped and typed like ``foreground``. A bool mask selects exactly (no arithmetic,
        so long labels stay long); a float mask blends and needs floating inputs.
    """
    if foreground.shape != background.shape or foreground.dtype != background.dtype:
        raise ValueError(
            "foreground and background must have the same shape and dtype, got "
            f"{tuple(foreground.shape)} {foreground.dtype} and "
            f"{tuple(background.shape)} {background.dtype}"
        )
    if mask.dim() == foreground.dim() - 1:
        mask = mask.unsqueeze(1)
    if mask.dim() != foreground.dim():
        raise ValueError(
            f"mask {tuple(mask.shape)} must be B×H×W for inputs {tuple(foreground.shape)}"
        )
    if mask.dtype == torch.bool:
        return torch.where(mask, foreground, background)
    if not foreground.is_floating_point():
        raise ValueError("a soft (float) mask needs floating inputs; use a bool mask for labels")
    mask = mask.to(foreground.dtype)
    return mask * foreground + (1 - mask) * background
