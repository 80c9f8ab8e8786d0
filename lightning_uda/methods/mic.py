"""MIC: Masked Image Consistency (Hoyer et al., CVPR 2023) — the loss, and `MICModule`.

The loss (:func:`masked_consistency_loss`), added to any self-training module with
``masked_consistency_weight=λ`` (e.g. MIC on DACS' DeepLab-v2:
``DACSModule(masked_consistency_weight=1, ema_alpha=0.999)``):

1. the target images, colour-augmented on their own (a fresh draw, not the mixed batch's), are
   blanked on random square blocks (``mask_block_size`` px, a ``mask_ratio`` fraction of the
   blocks, :func:`~lightning_uda.mixing.block_mask`); masked pixels become 0 in the normalised
   space, as in MIC; for a ViT segmentor (``supports_token_masking``, e.g. ``arch="vfm"``) a
   ``mask_ratio`` share of the patch tokens is replaced by the model's learned mask token
   instead, as VFM-UDA does (``mask_block_size`` is then unused);
2. the student's weighted CE on the masked images against the teacher's pseudo-labels of the full
   images, with their weights (q and the pseudo-label crop): λ × mean over all pixels.

Which images are masked is ``mask_mode``, with the names of MIC's code (:func:`masked_inputs`):
step 1 above is the default ``"separatetrgaug"`` (MIC's GTA5/SYNTHIA → Cityscapes runs). MIC's
Cityscapes → ACDC and → Dark Zurich runs use ``"separate"``: one source image with its label
(weight 1) and one target image with its pseudo-label (batch 2), neither colour-augmented; the
``...src`` modes mask the labelled source batch, ``...trg`` the target batch, and the ``...aug``
suffix applies the module's strong augmentation to the images to be masked first.

:class:`MICModule` is MIC on DAFormer, per step on top of
:class:`~lightning_uda.methods.DAFormerModule`: source CE (+ ImageNet feature distance);
teacher pseudo-labels ŷ and weight q on the un-augmented target, pseudo-label crop; DACS' mixed
loss; then the masked loss above with λ = 1, block 32 px, ratio 0.7. MIC's paper reports 70.6
mIoU GTA5 → Cityscapes for this combination.

Where this differs from MIC's code: MIC's main results use HRDA (multi-resolution crops at full
resolution, block 64 px); this is MIC on DAFormer, at half resolution, where MIC's code halves the
block to 32 px.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lightning_uda.losses import pixel_weighted_cross_entropy
from lightning_uda.methods.daformer import DAFormerModule
from lightning_uda.mixing import block_mask, random_token_mask

if TYPE_CHECKING:
    from lightning_uda.methods.self_training import SelfTrainingModule

__all__ = ["MICModule", "masked_consistency_loss", "masked_inputs"]


def masked_inputs(
    module: SelfTrainingModule,
    images: Tensor,
    labels: Tensor,
    weights: Tensor,
    source: Mapping[str, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The images MIC masks for ``module.hparams.mask_mode``, with their labels and weights,
    before the blocks are blanked.

    ``images``, ``labels``, ``weights``: the target batch (``B×3×H×W``) and the teacher's
    pseudo-labels and weights (``B×H×W``); ``source``: the labelled source batch (``"image"``,
    ``"mask"``), needed by every mode but ``"separatetrg(aug)"``. Source pixels get weight 1
    (void pixels count 0 in the loss, as in the source CE of mmseg). ``"separate(aug)"`` stacks
    the first ``B // 2`` source images and the first ``B − B // 2`` target images (MIC's code:
    batch 2, one of each), so source and target crops must have the same size. The ``...aug``
    modes then apply :meth:`~lightning_uda.methods.SelfTrainingModule.strong_augment`.

    Raises:
        ValueError: a source mode without ``source``; ``"separate(aug)"`` with a target batch of
            one image, too few source images, or source and target crops of different sizes.
    """
    mode = module.hparams.mask_mode
    owner = type(module).__name__
    if not mode.startswith("separatetrg"):
        if source is None:
            raise ValueError(
                f"{owner}: mask_mode={mode!r} masks source images: pass source=batch['source'] "
                "to masked_consistency_loss, or use mask_mode='separatetrgaug'/'separatetrg'"
            )
        source_images, source_labels = source["image"], source["mask"]
        ones = torch.ones(source_labels.shape, dtype=weights.dtype, device=weights.device)
        if mode.startswith("separatesrc"):
            images, labels, weights = source_images, source_labels, ones
        else:
            images, labels, weights = _half_and_half(
                owner, mode, (source_images, source_labels, ones), (images, labels, weights)
            )
    if mode.endswith("aug"):
        images, labels, weights = module.strong_augment(images, labels, weights)
    return images, labels, weights


def _half_and_half(
    owner: str, mode: str, source: tuple[Tensor, ...], target: tuple[Tensor, ...]
) -> tuple[Tensor, ...]:
    """The first ``B // 2`` source items followed by the first ``B − B // 2`` target items
    (``B`` = the target batch size) for ``mask_mode`` "separate" / "separateaug"."""
    size = target[0].shape[0]
    n_source = size // 2
    if n_source == 0 or source[0].shape[0] < n_source:
        raise ValueError(
            f"{owner}: mask_mode={mode!r} masks B // 2 source and B − B // 2 target images (MIC: "
            f"batch 2, one of each); got {source[0].shape[0]} source and {size} target images. "
            "Use a batch of at least 2 per domain, or mask_mode='separatetrgaug'"
        )
    if source[0].shape[-2:] != target[0].shape[-2:]:
        raise ValueError(
            f"{owner}: mask_mode={mode!r} stacks source and target crops into one batch, but the "
            f"source crops are {tuple(source[0].shape[-2:])} and the target crops "
            f"{tuple(target[0].shape[-2:])}: use crops of one size or another mask_mode"
        )
    return tuple(
        torch.cat([s[:n_source], t[: size - n_source]]) for s, t in zip(source, target, strict=True)
    )


def masked_consistency_loss(
    module: SelfTrainingModule,
    images: Tensor,
    labels: Tensor,
    weights: Tensor,
    source: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """MIC's loss for ``module``: weighted CE of its student on block-masked images against the
    labels of the full images, with the module's ``mask_mode`` (which images, colour-augmented
    or not: :func:`masked_inputs`; by default the colour-augmented target ``images``, ``B×3×H×W``,
    against their pseudo-labels, ``B×H×W`` labels and weights), ``mask_block_size``,
    ``mask_ratio``, strong augmentation and random generator."""
    augmented, labels, weights = masked_inputs(module, images, labels, weights, source=source)
    if getattr(module.model, "supports_token_masking", False):  # ViTs: mask tokens, not pixels
        return _token_masked_loss(module, augmented, labels, weights)
    keep = block_mask(
        augmented.shape,
        block_size=module.hparams.mask_block_size,
        ratio=module.hparams.mask_ratio,
        generator=module.rng,
        device=augmented.device,
    )
    return module.mixed_loss(augmented * keep.to(augmented.dtype), labels, weights)


def _token_masked_loss(
    module: SelfTrainingModule, images: Tensor, labels: Tensor, weights: Tensor
) -> Tensor:
    """MIC's loss with ``mask_ratio`` of the ViT's patch tokens replaced by its mask token
    (VFM-UDA; :func:`~lightning_uda.mixing.random_token_mask`)."""
    grid = module.model.token_grid(*images.shape[-2:])
    mask = random_token_mask(
        images.shape[0],
        grid,
        ratio=module.hparams.mask_ratio,
        generator=module.rng,
        device=images.device,
    )
    logits = module.model(images, token_mask=mask)
    return pixel_weighted_cross_entropy(
        logits,
        labels,
        weights,
        ignore_index=module.ignore_index,
        align_corners=module.align_corners,
    )


class MICModule(DAFormerModule):
    """DAFormer + MIC's masked image consistency loss (weight 1, block 32, ratio 0.7).

    Args:
        masked_consistency_weight: λ of the masked loss (1 in MIC).
        mask_block_size: block side in pixels (32 on DAFormer's 512×512 crops of half-resolution
            frames; 64 at full resolution).
        mask_ratio: masked fraction of the blocks (0.7).
        mask_mode: which images are masked, MIC's names (see
            :class:`~lightning_uda.methods.SelfTrainingModule`): "separatetrgaug" (default,
            the colour-augmented target; MIC's GTA5/SYNTHIA → Cityscapes) or "separate" (one
            source and one target image, not augmented; MIC's Cityscapes → ACDC / Dark Zurich).
        **kwargs: see :class:`DAFormerModule` (DAFormer's defaults) and
            :class:`~lightning_uda.methods.SelfTrainingModule`.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        masked_consistency_weight: float = 1.0,
        mask_block_size: int = 32,
        mask_ratio: float = 0.7,
        mask_mode: str = "separatetrgaug",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            model,
            masked_consistency_weight=masked_consistency_weight,
            mask_block_size=mask_block_size,
            mask_ratio=mask_ratio,
            mask_mode=mask_mode,
            **kwargs,
        )
