"""ClassMix masks (ClassMix, DACS, DAFormer) and mask-based mixing of images and labels."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lightning_uda.constants import IGNORE_INDEX

__all__ = ["MIX_MODES", "class_mix_mask", "mix"]


#: Class-choice modes of :func:`class_mix_mask`.
MIX_MODES = ("per_image", "batch_union", "per_batch")


def _candidates(labels: Tensor, ignore_index: int, include_ignore: bool) -> Tensor:
    """Sorted classes present in ``labels`` (any shape); ``ignore_index`` dropped unless kept."""
    classes = torch.unique(labels)
    return classes if include_ignore else classes[classes != ignore_index]


def _choose_classes(
    classes: Tensor,
    rounding: Literal["ceil", "floor"],
    generator: torch.Generator | None,
) -> Tensor:
    """A random half of the candidate ``classes`` (one ``torch.randperm`` draw)."""
    num_present = classes.numel()
    num_chosen = (num_present + 1) // 2 if rounding == "ceil" else num_present // 2
    device = generator.device if generator is not None else torch.device("cpu")
    order = torch.randperm(num_present, generator=generator, device=device)
    return classes[order[:num_chosen].to(classes.device)]


def class_mix_mask(
    labels: Tensor,
    ignore_index: int = IGNORE_INDEX,
    mode: Literal["per_image", "batch_union", "per_batch"] = "per_image",
    rounding: Literal["ceil", "floor"] = "ceil",
    generator: torch.Generator | None = None,
    include_ignore: bool = False,
) -> Tensor:
    """ClassMix mask: the pixels whose label is in a random half of the candidate classes.

    The candidates are the classes present in the labels; image ``b``'s mask is its pixels whose
    label is among the classes drawn for it.

    - ``mode="per_image"`` (ClassMix, DACS): each image draws among its own classes.
    - ``mode="batch_union"`` (DAFormer: ``torch.unique`` of the whole label batch, then one draw
      per image): each image draws separately among the classes of the whole batch, so a drawn
      class may be absent from the image (its mask then holds fewer classes, maybe none).
    - ``mode="per_batch"``: one draw among the classes of the whole batch, shared by every image
      (not DAFormer's choice, which draws per image).
    - ``rounding="ceil"`` draws ``ceil(n/2)`` of the ``n`` candidates (DACS, DAFormer, source
      ground truth); ``"floor"`` draws ``floor(n/2)`` (ClassMix paper, pseudo-labels).
    - ``include_ignore=False`` (default): ``ignore_index`` is never a candidate, so void pixels are
      never in the mask. ``True`` keeps it among the candidates, as DACS' and DAFormer's code do
      (``torch.unique`` keeps 255): it counts in ``n`` and, when drawn, its pixels are pasted.

    Images are handled in a Python loop over the batch (B is small; ``torch.unique`` is per image
    anyway), one ``torch.randperm`` per image (one in all for ``"per_batch"``).

    Args:
        labels: ``B×H×W`` long train ids (ground truth or pseudo-labels).
        ignore_index: void label.
        mode: ``"per_image"``, ``"batch_union"`` or ``"per_batch"``.
        rounding: ``"ceil"`` or ``"floor"``.
        generator: random source for ``torch.randperm`` (CPU or on any device); global RNG if None.
        include_ignore: keep ``ignore_index`` among the candidates.

    Returns:
        ``B×H×W`` bool mask on ``labels.device``; True = take the pixel from ``labels``' image.
    """
    if labels.dim() != 3:
        raise ValueError(f"expected B×H×W labels, got {tuple(labels.shape)}")
    if mode not in MIX_MODES:
        raise ValueError(f"mode must be one of {MIX_MODES}, got {mode!r}")
    if rounding not in ("ceil", "floor"):
        raise ValueError(f"rounding must be 'ceil' or 'floor', got {rounding!r}")
    if mode == "per_batch":
        chosen = _choose_classes(
            _candidates(labels, ignore_index, include_ignore), rounding, generator
        )
        return torch.isin(labels, chosen)
    if mode == "batch_union":
        union = _candidates(labels, ignore_index, include_ignore)
        chosen_per_image = [_choose_classes(union, rounding, generator) for _ in labels]
    else:
        chosen_per_image = [
            _choose_classes(
                _candidates(image_labels, ignore_index, include_ignore), rounding, generator
            )
            for image_labels in labels
        ]
    masks = [
        torch.isin(image_labels, chosen)
        for image_labels, chosen in zip(labels, chosen_per_image, strict=True)
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
