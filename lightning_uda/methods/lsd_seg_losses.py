"""LSD-seg's losses as pure functions (Sankaranarayanan et al., CVPR 2018).

:class:`~lightning_uda.methods.LSDSegModule` trains with the three objectives below. Each term
takes ``reduction``, how it is reduced over pixels:

- ``"mean"`` (the library's convention): every cross-entropy is a mean over its valid (non-void)
  pixels or patches, the L1 reconstruction loss a mean over pixels;
- ``"sum"`` (the reference's, ``trainer_LSD.py`` with ``size_average=False``): every
  cross-entropy is *summed* over its valid pixels; every loss, the L1 mean included, is divided
  by the batch size (the reference divides each network's whole loss by it, the same thing since
  the loss is a weighted sum of terms). So for each cross-entropy term
  ``sum = mean × valid pixels / B`` and for L1 ``sum = mean / B``.

The losses of one iteration (CE: cross-entropy; ``D_dom(x)``: D's ``B×4×h×w`` domain map,
constant label per image; ``D_cls(x)``: D's ``B×K×h×w`` class map against the source labels
resized to it (nearest, void 255 ignored); ``ŝ = G(features(source))``, ``t̂`` likewise; real
images and reconstructions in RGB [0, 1]):

1. **D**: ``CE(D_dom(s), 0) + CE(D_dom(ŝ), 1) + CE(D_dom(t), 2) + CE(D_dom(t̂), 3)
   + CE(D_cls(s), y)``;
2. **G**: ``1 · CE(D_cls(ŝ), y) + 0.1 · [CE(D_dom(ŝ), 0) + CE(D_dom(t̂), 2)]
   + 1 · [L1(ŝ, s) + L1(t̂, t)]`` (fool D: each fake as a real of its own domain);
3. **segmentor**: ``CE(seg(s), y_full) + 0.1 · [CE(D_dom(ŝ), 2) + CE(D_dom(t̂), 0)]
   + 0.1 · CE(D_cls(ŝ), y)`` (domain confusion: a source reconstruction should look like a real
   target image and vice versa), through G and D; the module adds the base's optional MCC term.

Weights (the module's arguments, the reference's values): D's terms 1; G's
``generator_class_weight`` 1, ``generator_adv_weight`` 0.1, ``l1_weight`` 1; the segmentor's
``adv_weight`` 0.1 and ``class_weight`` 0.1.

The three objectives (:func:`discriminator_objective`, :func:`generator_objective`,
:func:`segmentor_objective`) return their unweighted terms and the weighted total, by name,
as the module logs them.

Shapes: domain maps ``B×4×h×w``, class maps ``B×K×h×w``, patch labels ``B×h×w``, segmentor logits
``B×K×h'×w'`` against ``B×H×W`` train ids, images ``B×3×H×W``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_uda.constants import IGNORE_INDEX
from lightning_uda.losses import upsample_logits
from lightning_uda.models.lsd_seg import PatchOutputs

__all__ = [
    "DOMAIN_LABELS",
    "PIXEL_REDUCTIONS",
    "SOURCE_FAKE",
    "SOURCE_REAL",
    "TARGET_FAKE",
    "TARGET_REAL",
    "PixelReduction",
    "discriminator_objective",
    "domain_cross_entropy",
    "generator_objective",
    "patch_cross_entropy",
    "patch_labels",
    "reconstruction_l1",
    "segmentation_cross_entropy",
    "segmentor_objective",
]

#: The four classes of the discriminator's domain map (the reference's domain labels).
SOURCE_REAL = 0
SOURCE_FAKE = 1
TARGET_REAL = 2
TARGET_FAKE = 3
DOMAIN_LABELS = {
    "source_real": SOURCE_REAL,
    "source_fake": SOURCE_FAKE,
    "target_real": TARGET_REAL,
    "target_fake": TARGET_FAKE,
}
#: ``"mean"``: means over (valid) pixels; ``"sum"``: the reference's per-image pixel sums.
PIXEL_REDUCTIONS = ("mean", "sum")
PixelReduction = Literal["mean", "sum"]


def _reduce(per_pixel: Tensor, valid: Tensor | None, reduction: PixelReduction) -> Tensor:
    """Mean over the valid pixels (``"mean"``; 0, still attached, when none is valid) or sum
    divided by the batch size (``"sum"``)."""
    if reduction == "sum":
        return per_pixel.sum() / per_pixel.shape[0]
    count = per_pixel.numel() if valid is None else valid.sum().clamp_min(1)
    return per_pixel.sum() / count


def domain_cross_entropy(logits: Tensor, label: int, reduction: PixelReduction = "mean") -> Tensor:
    """CE of a ``B×4×h×w`` domain map against the constant domain ``label`` (0–3) everywhere."""
    target = torch.full(
        (logits.shape[0], *logits.shape[-2:]), int(label), dtype=torch.long, device=logits.device
    )
    return _reduce(F.cross_entropy(logits, target, reduction="none"), None, reduction)


def patch_labels(mask: Tensor, size: Sequence[int]) -> Tensor:
    """``B×H×W`` train ids resized to the patch map ``size`` by nearest neighbour (the pixel at
    each patch's centre, as the reference's PIL ``NEAREST`` resize); void stays void."""
    size = tuple(int(s) for s in size)
    if tuple(mask.shape[-2:]) == size:
        return mask.long()
    resized = F.interpolate(mask[:, None].float(), size=size, mode="nearest-exact")
    return resized[:, 0].round().long()


def patch_cross_entropy(
    logits: Tensor,
    labels: Tensor,
    ignore_index: int = IGNORE_INDEX,
    reduction: PixelReduction = "mean",
) -> Tensor:
    """CE of a ``B×K×h×w`` class map against ``B×h×w`` patch labels (void ignored)."""
    per_pixel = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")
    return _reduce(per_pixel, labels != ignore_index, reduction)


def segmentation_cross_entropy(
    logits: Tensor,
    mask: Tensor,
    ignore_index: int = IGNORE_INDEX,
    align_corners: bool = False,
    reduction: PixelReduction = "mean",
) -> Tensor:
    """The segmentor's CE: logits upsampled to the labels, void ignored; ``"mean"`` equals
    :func:`lightning_uda.losses.cross_entropy`."""
    logits = upsample_logits(logits, tuple(mask.shape[-2:]), align_corners=align_corners)
    per_pixel = F.cross_entropy(logits, mask, ignore_index=ignore_index, reduction="none")
    return _reduce(per_pixel, mask != ignore_index, reduction)


def reconstruction_l1(fake: Tensor, real: Tensor, reduction: PixelReduction = "mean") -> Tensor:
    """Mean absolute difference of two images; divided by the batch size too with ``"sum"`` (the
    reference divides its whole generator loss, L1 mean included, by the batch size)."""
    loss = F.l1_loss(fake, real)
    return loss / fake.shape[0] if reduction == "sum" else loss


def segmentor_objective(
    logits: Tensor,
    mask: Tensor,
    fake_source: PatchOutputs,
    fake_target: PatchOutputs,
    labels: Tensor,
    *,
    adv_weight: float,
    class_weight: float,
    ignore_index: int = IGNORE_INDEX,
    align_corners: bool = False,
    reduction: PixelReduction = "mean",
) -> dict[str, Tensor]:
    """The segmentor's loss (the reference's update 3): source CE, domain confusion, class loss
    on the source reconstructions.

    Args:
        logits: the segmentor's source logits ``B×K×h×w``.
        mask: source train ids ``B×H×W``.
        fake_source: D's maps of the source reconstructions.
        fake_target: D's maps of the target reconstructions.
        labels: source labels at the patch-map size (:func:`patch_labels`).
        adv_weight: weight of the confusion terms (the reference's ``adv_weight``, 0.1).
        class_weight: weight of the class loss on source fakes (``c_weight``, 0.1).

    Returns:
        ``{"source", "confusion", "fake_class"}`` (unweighted) and ``"segmentor"``, the weighted
        total ``source + adv_weight · confusion + class_weight · fake_class``.
    """
    terms = {
        "source": segmentation_cross_entropy(logits, mask, ignore_index, align_corners, reduction),
        # source fakes labelled target-real, target fakes labelled source-real
        "confusion": domain_cross_entropy(fake_source.domain, TARGET_REAL, reduction)
        + domain_cross_entropy(fake_target.domain, SOURCE_REAL, reduction),
        "fake_class": patch_cross_entropy(fake_source.classes, labels, ignore_index, reduction),
    }
    terms["segmentor"] = (
        terms["source"] + adv_weight * terms["confusion"] + class_weight * terms["fake_class"]
    )
    return terms


def generator_objective(
    fake_source: PatchOutputs,
    fake_target: PatchOutputs,
    labels: Tensor,
    images: Mapping[str, Tensor],
    real: Mapping[str, Tensor],
    *,
    class_weight: float,
    adv_weight: float,
    l1_weight: float,
    ignore_index: int = IGNORE_INDEX,
    reduction: PixelReduction = "mean",
) -> dict[str, Tensor]:
    """G's loss (update 2): class loss on source fakes, fooling D, L1 reconstruction.

    Args:
        fake_source: D's maps of the source reconstructions.
        fake_target: D's maps of the target reconstructions.
        labels: source labels at the patch-map size.
        images: ``{"source", "target"}`` reconstructions (RGB [0, 1]).
        real: ``{"source", "target"}`` real images (RGB [0, 1]).
        class_weight: weight of the class loss (1 in the reference).
        adv_weight: weight of the fooling terms (0.1 in the reference).
        l1_weight: weight of the L1 terms (the reference's ``l1_weight``, 1).

    Returns:
        ``{"generator_class", "generator_adversarial", "reconstruction"}`` (unweighted) and
        ``"generator"``, the weighted total.
    """
    terms = {
        "generator_class": patch_cross_entropy(
            fake_source.classes, labels, ignore_index, reduction
        ),
        # each fake labelled as a real image of its own domain
        "generator_adversarial": domain_cross_entropy(fake_source.domain, SOURCE_REAL, reduction)
        + domain_cross_entropy(fake_target.domain, TARGET_REAL, reduction),
        "reconstruction": reconstruction_l1(images["source"], real["source"], reduction)
        + reconstruction_l1(images["target"], real["target"], reduction),
    }
    terms["generator"] = (
        class_weight * terms["generator_class"]
        + adv_weight * terms["generator_adversarial"]
        + l1_weight * terms["reconstruction"]
    )
    return terms


def discriminator_objective(
    real_source: PatchOutputs,
    fake_source: PatchOutputs,
    real_target: PatchOutputs,
    fake_target: PatchOutputs,
    labels: Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    reduction: PixelReduction = "mean",
) -> dict[str, Tensor]:
    """D's loss (update 1): the four domain terms (labels 0–3) and the class loss on source-real
    patches.

    Returns:
        ``{"discriminator_domain", "discriminator_class"}`` and their sum ``"discriminator"``.
    """
    terms = {
        "discriminator_domain": domain_cross_entropy(real_source.domain, SOURCE_REAL, reduction)
        + domain_cross_entropy(fake_source.domain, SOURCE_FAKE, reduction)
        + domain_cross_entropy(real_target.domain, TARGET_REAL, reduction)
        + domain_cross_entropy(fake_target.domain, TARGET_FAKE, reduction),
        "discriminator_class": patch_cross_entropy(
            real_source.classes, labels, ignore_index, reduction
        ),
    }
    terms["discriminator"] = terms["discriminator_domain"] + terms["discriminator_class"]
    return terms
