"""`ClassMixModule`: ClassMix (Olsson et al., WACV 2021) in the UDA setting.

Algorithm per step (one line per yielded loss):
1. source CE on the labelled source batch;
2. teacher pseudo-labels ŷ and weights w on the un-augmented target batch;
3. ClassMix: each target image A is paired with another target image B (the batch rolled by one);
   half of the classes of ŷ_A (floor(n/2), ignore excluded) form the mask M;
   x = M·x_A + (1−M)·x_B, y = M·ŷ_A + (1−M)·ŷ_B (= argmax of the mixed softmax), w likewise;
4. strong augmentation of x; mixed CE = mean over all pixels of w × CE(student(x), y).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from torch import Tensor, nn

from lightning_uda.losses import pixel_weighted_cross_entropy
from lightning_uda.methods.base import Losses, check_range
from lightning_uda.methods.self_training import SelfTrainingModule
from lightning_uda.mixing import MIX_MODES, StrongAugment, block_mask, class_mix_mask, mix


class MixInputs(NamedTuple):
    """The two sides of a mix: ``foreground`` pixels are pasted where the mask is 1.

    Images are B×3×H×W (normalised), labels B×H×W long, weights B×H×W float.
    """

    foreground_image: Tensor
    foreground_label: Tensor
    foreground_weight: Tensor
    background_image: Tensor
    background_label: Tensor
    background_weight: Tensor


class ClassMixModule(SelfTrainingModule):
    """ClassMix between target images, plus the supervised source loss.

    Overridable hooks, so a variant is a few lines: :meth:`mix_inputs` (what is pasted onto
    what), :meth:`mix_mask` (which pixels), :meth:`pseudo_label` (labels + weights),
    :meth:`strong_augment`, :meth:`mixed_loss`.

    Args:
        mix_mode: how classes are chosen (:func:`~lightning_uda.mixing.class_mix_mask`):
            "per_image" (ClassMix, DACS: each image draws among its own classes), "batch_union"
            (DAFormer: each image draws among the classes of the whole batch; DAFormer's code also
            keeps the void label, ``mix_include_ignore=True``) or "per_batch" (one draw shared
            by the whole batch).
        mix_rounding: "floor" (ClassMix: half of the pseudo-label classes, rounded down) or
            "ceil" (DACS: half of the source classes, rounded up).
        mix_include_ignore: keep the void label (255) among the class candidates, as DACS' code
            does (``torch.unique`` keeps it): void source pixels are then pasted, with weight 1,
            and count 0 in the mixed loss. Default ``False`` (ClassMix paper; void never pasted).
        mixed_weight: weight of the mixed loss (1).
        mix_warmup_steps: train on the source only for this many steps before the mixed loss
            starts (0 = from the first step, as DACS), so the first pseudo-labels come from a
            teacher that has learnt the source task; the teacher follows the student throughout.
        strong_augmentation: apply DACS' colour jitter + blur to the mixed images.
        jitter_semantics: "torchvision" (default; multiplicative brightness, contrast blended
            with the mean) or "kornia05", the colour jitter DACS ran (kornia 0.5: additive
            brightness, contrast without the mean, the four operations in random order); see
            :class:`~lightning_uda.mixing.StrongAugment`.
        augment_decision: "per_image" (default) or "per_batch": one jitter and one blur
            apply/skip draw per step shared by the batch, as DACS' code.
        jitter_strength: colour-jitter strength s (brightness, contrast, saturation and hue
            each ``s``; DACS 0.25, DAFormer 0.2).
        jitter_p: probability of the colour jitter (0.8 in DACS and DAFormer, whose code jitters
            when a uniform draw exceeds ``color_jitter_probability`` 0.2).
        masked_consistency_weight: weight of MIC's masked image consistency loss (0 = off; 1 in
            MIC): the target images, colour-augmented on their own, are blanked on random
            ``mask_block_size`` blocks (:func:`~lightning_uda.mixing.block_mask`, a
            ``mask_ratio`` fraction) and the student must predict the teacher's pseudo-labels of
            the full images on them (same labels, same weights q).
        mask_block_size: MIC's block side in pixels (64 at 512×512 crops).
        mask_ratio: masked fraction of the blocks (0.7).
        **kwargs: see :class:`SelfTrainingModule` and :class:`UDAModule`.
    """

    default_mix_rounding = "floor"

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        mix_mode: str = "per_image",
        mix_rounding: str | None = None,
        mix_include_ignore: bool = False,
        mixed_weight: float = 1.0,
        mix_warmup_steps: int = 0,
        strong_augmentation: bool = True,
        masked_consistency_weight: float = 0.0,
        mask_block_size: int = 64,
        mask_ratio: float = 0.7,
        jitter_semantics: str = "torchvision",
        augment_decision: str = "per_image",
        jitter_strength: float = 0.25,
        jitter_p: float = 0.8,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        check_range(type(self).__name__, "mixed_weight", mixed_weight, 0)
        check_range(type(self).__name__, "mix_warmup_steps", mix_warmup_steps, 0)
        check_range(type(self).__name__, "masked_consistency_weight", masked_consistency_weight, 0)
        check_range(type(self).__name__, "mask_block_size", mask_block_size, 1)
        check_range(type(self).__name__, "mask_ratio", mask_ratio, 0, 1)
        if mix_mode not in MIX_MODES:
            raise ValueError(f"mix_mode must be one of {MIX_MODES}, got {mix_mode!r}")
        self.mix_rounding = mix_rounding or self.default_mix_rounding
        if self.mix_rounding not in ("floor", "ceil"):
            raise ValueError(f"mix_rounding must be 'floor' or 'ceil', got {mix_rounding!r}")
        self.augment = (
            StrongAugment(
                jitter=jitter_strength,
                jitter_p=jitter_p,
                normalization=self.normalization,
                jitter_semantics=jitter_semantics,
                decision=augment_decision,
            )
            if strong_augmentation
            else None
        )

    def check_batch(self, batch: Mapping[str, Any]) -> None:
        """ClassMix pairs each target image with another one of the same device batch."""
        super().check_batch(batch)
        if batch["target"]["image"].shape[0] < 2:
            raise ValueError(
                f"{type(self).__name__} mixes each target image with another one of its batch, "
                f"so it needs at least 2 target images per device; got "
                f"{batch['target']['image'].shape[0]}. Raise the (target) batch size."
            )

    # ------------------------------------------------------------------ hooks
    def mix_inputs(
        self, batch: Mapping[str, Any], pseudo_labels: Tensor, pseudo_weights: Tensor
    ) -> MixInputs:
        """ClassMix pairs target image i (foreground) with target image i−1 (background)."""
        images = batch["target"]["image"]
        return MixInputs(
            foreground_image=images,
            foreground_label=pseudo_labels,
            foreground_weight=pseudo_weights,
            background_image=images.roll(1, dims=0),
            background_label=pseudo_labels.roll(1, dims=0),
            background_weight=pseudo_weights.roll(1, dims=0),
        )

    def mix_mask(self, labels: Tensor) -> Tensor:
        """B×H×W bool mask: pixels of half of the classes of ``labels`` (the foreground's)."""
        return class_mix_mask(
            labels,
            ignore_index=self.ignore_index,
            mode=self.hparams.mix_mode,
            rounding=self.mix_rounding,
            generator=self.rng,
            include_ignore=self.hparams.mix_include_ignore,
        )

    def strong_augment(
        self, images: Tensor, labels: Tensor, weights: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """DACS' colour jitter and Gaussian blur on the mixed batch (labels/weights unchanged)."""
        if self.augment is None:
            return images, labels, weights
        return self.augment(images, labels, weights, generator=self.rng)

    def mixed_loss(self, images: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
        """Mean over all pixels of weight × CE of the student on the mixed images (DACS)."""
        logits = self.model(images)
        return pixel_weighted_cross_entropy(
            logits,
            labels,
            weights,
            ignore_index=self.ignore_index,
            align_corners=self.align_corners,
        )

    # ------------------------------------------------------------------ algorithm
    def adaptation_losses(self, batch: Mapping[str, Any]) -> Losses:
        yield from super().adaptation_losses(batch)
        if self.uda_step < self.hparams.mix_warmup_steps:
            return
        target = batch["target"]
        pseudo_labels, pseudo_weights = self.pseudo_label(
            target["image"], monitor_mask=target.get("mask")
        )
        parts = self.mix_inputs(batch, pseudo_labels, pseudo_weights)
        mask = self.mix_mask(parts.foreground_label)
        images = mix(mask, parts.foreground_image, parts.background_image)
        labels = mix(mask, parts.foreground_label, parts.background_label)
        weights = mix(mask, parts.foreground_weight, parts.background_weight)
        images, labels, weights = self.strong_augment(images, labels, weights)
        self.log("train/mix_fraction", mask.float().mean(), batch_size=mask.shape[0])
        self._last_mix = {"image": images.detach(), "label": labels, "weight": weights}
        yield "mixed", self.hparams.mixed_weight * self.mixed_loss(images, labels, weights)
        if self.hparams.masked_consistency_weight > 0:
            masked = self.masked_consistency_loss(target["image"], pseudo_labels, pseudo_weights)
            yield "masked", self.hparams.masked_consistency_weight * masked

    def masked_consistency_loss(self, images: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
        """MIC: weighted CE of the student on colour-augmented, block-masked target ``images``
        (``B×3×H×W``) against the pseudo-labels of the full images (``B×H×W`` labels/weights).

        The augmentation is drawn anew (not the mixed batch's); masked pixels become 0 in the
        normalised space, as in MIC.
        """
        augmented, _, _ = self.strong_augment(images, labels, weights)
        keep = block_mask(
            augmented.shape,
            block_size=self.hparams.mask_block_size,
            ratio=self.hparams.mask_ratio,
            generator=self.rng,
            device=augmented.device,
        )
        return self.mixed_loss(augmented * keep.to(augmented.dtype), labels, weights)
