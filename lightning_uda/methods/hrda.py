"""`HRDAModule`: HRDA (Hoyer et al., ECCV 2022), DAFormer's self-training at full resolution.

HRDA keeps DAFormer's algorithm (:class:`~lightning_uda.methods.DAFormerModule`) and trains the
multi-resolution segmentor :class:`~lightning_uda.models.HRDA` on full-resolution 1024×1024
crops. Per step:

1. **source**: a random detail box (512×512 of the crop, offsets multiples of 8,
   :func:`~lightning_uda.models.sample_detail_box`); loss
   ``0.9 · CE(fused, label) + 0.1 · CE(detail, label cropped to the box)``
   (:func:`multi_resolution_loss`; ``hr_loss_weight`` 0.1, ``lr_loss_weight`` 0, the fused
   weight is ``1 −`` the two), plus DAFormer's ImageNet feature distance on the context view's
   features (HRDA's ``feature_scale=0.5``);
2. **pseudo-labels** of the un-augmented target crop from the EMA teacher at full resolution:
   context logits of the crop at ×0.5 fused over the whole crop with detail logits from
   512×512 windows every 256 pixels; weight q at τ 0.968; the weights are multiplied by the
   loader's pseudo-label margin mask (``batch["target"]["pseudo_label_valid"]``, HRDA's
   "pseudo-label cropping v2": top 30, bottom 240, left and right 30 rows/columns of the *full*
   Cityscapes frame, masked before the training crop is taken, see
   :func:`lightning_uda.data.transforms.train_transform`'s ``pseudo_label_margins``);
3. **mixed**: DACS' class mix and colour augmentation, the same multi-resolution loss with a new
   detail box, pixel weights cropped with the labels;
4. optionally **MIC** (``masked_consistency_weight=1``, block 64 px at full resolution, ratio
   0.7): the masked target through the same multi-resolution loss.

Evaluation slides 1024×1024 windows with stride 512 over the 2048×1024 frame, each window fused
(``inference="slide"``). Published mIoU (MiT-B5): GTA5 → Cityscapes 73.8 (MIC on HRDA 75.9);
SYNTHIA → Cityscapes 65.8 (16 classes; MIC 67.3).

Where this differs from HRDA's code: the detail box of each loss is drawn from the module's own
generator (resumable); the box draw includes the last position (see
:mod:`lightning_uda.models.hrda`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lightning_uda.checks import check_range
from lightning_uda.data.transforms import PSEUDO_LABEL_VALID
from lightning_uda.losses import pixel_weighted_cross_entropy
from lightning_uda.methods.base import Losses
from lightning_uda.methods.daformer import DAFormerModule, weighted_feature_distance
from lightning_uda.models.hrda import HRDAOutput
from lightning_uda.models.hrda_fusion import crop_box, sample_detail_box

__all__ = ["HRDAModule", "multi_resolution_loss"]

#: ``(logits, labels, pixel weights or None) -> scalar loss``.
CrossEntropy = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


def multi_resolution_loss(
    output: HRDAOutput,
    labels: Tensor,
    cross_entropy: CrossEntropy,
    weights: Tensor | None = None,
    hr_loss_weight: float = 0.1,
    lr_loss_weight: float = 0.0,
) -> Tensor:
    """HRDA's loss of one multi-resolution forward.

    ``(1 − λ_d − λ_c) · CE(fused, y, w) + λ_d · CE(detail, crop(y), crop(w)) + λ_c · CE(context,
    y, w)``, with ``crop`` the detail box of ``output`` (image pixels) and terms of weight 0
    skipped.

    Args:
        output: :meth:`HRDA.forward_train`'s parts.
        labels: ``B×H×W`` labels of the whole crop.
        cross_entropy: the CE to use (its logits are upsampled to the labels it is given).
        weights: ``B×H×W`` pixel weights (cropped with the labels) or ``None``.
        hr_loss_weight: λ_d, the detail loss weight (HRDA 0.1).
        lr_loss_weight: λ_c, the context loss weight (HRDA 0).

    Raises:
        ValueError: negative weights, or weights summing to more than 1.
    """
    if hr_loss_weight < 0 or lr_loss_weight < 0 or hr_loss_weight + lr_loss_weight > 1:
        raise ValueError(
            "hr_loss_weight and lr_loss_weight must be >= 0 and sum to at most 1 (the fused "
            f"loss has weight 1 − their sum); got {hr_loss_weight} and {lr_loss_weight}"
        )
    fused_weight = 1.0 - hr_loss_weight - lr_loss_weight
    loss = fused_weight * cross_entropy(output.fused, labels, weights)
    if hr_loss_weight > 0:
        cropped = crop_box(weights, output.box) if weights is not None else None
        detail = cross_entropy(output.detail, crop_box(labels, output.box), cropped)
        loss = loss + hr_loss_weight * detail
    if lr_loss_weight > 0:
        loss = loss + lr_loss_weight * cross_entropy(output.context, labels, weights)
    return loss


class HRDAModule(DAFormerModule):
    """DAFormer's self-training on HRDA's multi-resolution segmentor (defaults: HRDA's recipe).

    Args:
        arch: ``"hrda"`` (the model must offer ``forward_train``; see
            :class:`~lightning_uda.models.HRDA`); ``model_kwargs`` go to it (``head``,
            ``detail_size``, ``attention_classwise``, ...).
        encoder: the backbone; ``None`` takes the head's default (``mit_b5``, HRDA's).
        hr_loss_weight: λ_d of :func:`multi_resolution_loss` (0.1).
        lr_loss_weight: λ_c (0).
        pseudo_label_crop: DAFormer's row crop of the pseudo-label weights; ``(0, 0)`` as HRDA,
            which masks margins in the loader instead (``pseudo_label_valid`` items).
        mask_block_size: MIC's block side with ``masked_consistency_weight > 0`` (64 px at full
            resolution).
        inference, slide_window, slide_stride: evaluation slides 1024×1024 windows with stride
            512, each window fused.
        **kwargs: see :class:`~lightning_uda.methods.DAFormerModule` and its bases.

    Raises:
        TypeError: a ``model`` that is not multi-resolution.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        arch: str = "hrda",
        encoder: str | None = None,
        hr_loss_weight: float = 0.1,
        lr_loss_weight: float = 0.0,
        pseudo_label_crop: tuple[int, int] = (0, 0),
        mask_block_size: int = 64,
        inference: str = "slide",
        slide_window: tuple[int, int] = (1024, 1024),
        slide_stride: tuple[int, int] = (512, 512),
        **kwargs: Any,
    ) -> None:
        super().__init__(
            model,
            arch=arch,
            encoder=encoder,
            pseudo_label_crop=pseudo_label_crop,
            mask_block_size=mask_block_size,
            inference=inference,
            slide_window=slide_window,
            slide_stride=slide_stride,
            **kwargs,
        )
        owner = type(self).__name__
        check_range(owner, "hr_loss_weight", hr_loss_weight, 0, 1)
        check_range(owner, "lr_loss_weight", lr_loss_weight, 0, 1)
        if hr_loss_weight + lr_loss_weight > 1:
            raise ValueError(
                f"{owner}: hr_loss_weight + lr_loss_weight must be at most 1, got "
                f"{hr_loss_weight} + {lr_loss_weight}"
            )
        if not callable(getattr(self.model, "forward_train", None)):
            raise TypeError(
                f"{owner} trains a multi-resolution segmentor with forward_train(x, box) -> "
                f"HRDAOutput; got {type(self.model).__name__}. Build it with arch='hrda' "
                "(build_segmentor('hrda', ...))."
            )
        self._pseudo_valid: Tensor | None = None
        #: The last training forward's ``{"attention": B×1×h×w (attention weighted by the fused
        #: softmax, HRDA's debug map), "box": (y1, y2, x1, x2) in image pixels}`` for panels.
        self.last_scales: dict[str, Any] | None = None

    # ------------------------------------------------------------------ checks
    def check_batch(self, batch: Mapping[str, Any]) -> None:
        """HRDA needs crops with sides divisible by 2 × the output stride and at least the detail
        window (``HRDA.check_input``), and margin masks shaped like the target crops."""
        super().check_batch(batch)
        for domain in ("source", "target"):
            self.model.check_input(batch[domain]["image"])
        valid = batch["target"].get(PSEUDO_LABEL_VALID)
        image = batch["target"]["image"]
        if valid is not None and tuple(valid.shape) != (image.shape[0], *image.shape[-2:]):
            raise ValueError(
                f"{type(self).__name__}: batch['target']['{PSEUDO_LABEL_VALID}'] must be B×H×W "
                f"like the target images {tuple(image.shape)}, got {tuple(valid.shape)}"
            )

    # ------------------------------------------------------------------ the forward
    def detail_box(self, images: Tensor) -> tuple[int, int, int, int]:
        """A random detail box for ``images`` from the module's generator."""
        return sample_detail_box(
            images.shape[-2:],
            self.model.detail_size,
            self.model.crop_coord_divisible,
            generator=self.rng,
        )

    def multi_resolution_forward(self, images: Tensor) -> HRDAOutput:
        """The student's training forward with a fresh detail box (kept for the panels)."""
        output = self.model.forward_train(images, box=self.detail_box(images))
        with torch.no_grad():
            probs = output.fused.detach().softmax(dim=1)
            gate = nn.functional.interpolate(
                output.attention.detach(),
                size=probs.shape[-2:],
                mode="bilinear",
                align_corners=False,
            )
            self.last_scales = {
                "attention": (gate * probs).sum(dim=1, keepdim=True),
                "box": output.box,
            }
        return output

    def _loss(self, output: HRDAOutput, labels: Tensor, ce: CrossEntropy, weights: Any) -> Tensor:
        return multi_resolution_loss(
            output,
            labels,
            ce,
            weights=weights,
            hr_loss_weight=self.hparams.hr_loss_weight,
            lr_loss_weight=self.hparams.lr_loss_weight,
        )

    # ------------------------------------------------------------------ the losses
    def source_loss(self, source: Mapping[str, Tensor]) -> Tensor:
        """Multi-resolution source CE (``source_ce_mean_over``), plus the feature distance on the
        context view when it is on."""
        images, labels = source["image"], source["mask"]
        output = self.multi_resolution_forward(images)
        loss = self._loss(
            output, labels, lambda logits, y, _: self.source_cross_entropy(logits, y), None
        )
        if self.imnet_encoder is None:
            return loss
        with torch.no_grad():
            small = nn.functional.interpolate(
                images, scale_factor=0.5, mode="bilinear", align_corners=False
            )
        # the context view's features against the frozen encoder's of the same half-size image
        return loss + weighted_feature_distance(self, output.features[-1], small, labels)

    def mixed_loss(self, images: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
        """Multi-resolution pixel-weighted CE on mixed (or, with MIC, masked) images."""

        def weighted(logits: Tensor, y: Tensor, w: Tensor | None) -> Tensor:
            return pixel_weighted_cross_entropy(
                logits,
                y,
                w if w is not None else 1.0,
                ignore_index=self.ignore_index,
                align_corners=self.align_corners,
            )

        return self._loss(self.multi_resolution_forward(images), labels, weighted, weights)

    def adaptation_losses(self, batch: Mapping[str, Any]) -> Losses:
        self._pseudo_valid = batch["target"].get(PSEUDO_LABEL_VALID)
        try:
            yield from super().adaptation_losses(batch)
        finally:
            self._pseudo_valid = None

    def pseudo_label(
        self, images: Tensor, monitor_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Full-resolution pseudo-labels (the teacher's fused logits, sliding detail windows);
        weights 0 where the loader's margin mask (pseudo-label cropping v2) is 0."""
        labels, weights = super().pseudo_label(images, monitor_mask=monitor_mask)
        valid = self._pseudo_valid
        if valid is not None:
            # 1 inside the margins; 0 on them and 255 where the crop was padded
            weights = weights * (valid == 1).to(device=weights.device, dtype=weights.dtype)
        return labels, weights
