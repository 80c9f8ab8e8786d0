"""`SelfTrainingModule`: the mean-teacher, mixed-batch self-training step of DACS and ClassMix.

One step, one line per yielded loss (the hooks a subclass overrides in brackets):

1. source CE on the labelled source batch [``source_loss``];
2. the teacher's pseudo-labels ŷ and pixel weights w on the un-augmented target batch
   [``pseudo_label``, ``teacher_logits``];
3. a mix: the method says what is pasted onto what [``mix_inputs``] and which pixels
   [``mix_mask``]: x = M·x_fg + (1−M)·x_bg, the same for labels and weights;
4. strong augmentation of the mixed images [``strong_augment``], then the mixed loss: the mean
   over all pixels of w × CE(student(x), y) [``mixed_loss``];
5. optionally MIC's masked image consistency on the target (``masked_consistency_weight``,
   :mod:`lightning_uda.methods.mic`).

The EMA teacher follows the student after each optimiser step
(:mod:`~lightning_uda.methods.teacher`).
:class:`~lightning_uda.methods.DACSModule` pastes source classes onto target images,
:class:`~lightning_uda.methods.ClassMixModule` target classes onto other target images. The last
step's mixed batch is :attr:`SelfTrainingModule.last_mix` (for callbacks and W&B panels).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from torch import Tensor, nn

from lightning_uda.callbacks.ema import BufferMode
from lightning_uda.callbacks.pseudo_label import Weighting
from lightning_uda.checks import check_range
from lightning_uda.losses import CITYSCAPES_THING_CLASSES, pixel_weighted_cross_entropy
from lightning_uda.methods.base import Losses, UDAModule
from lightning_uda.methods.teacher import MeanTeacher, TeacherBatchNorm, batch_statistics
from lightning_uda.mixing import MIX_MODES, StrongAugment, class_mix_mask, mix

__all__ = ["MASK_MODES", "MixInputs", "SelfTrainingModule", "batch_statistics"]

#: MIC's ``mask_mode`` names (``masked_consistency_weight > 0``): which images are masked and
#: whether they are colour-augmented first (``...aug``). See
#: :func:`lightning_uda.methods.mic.masked_inputs`.
MASK_MODES = (
    "separatetrgaug",
    "separatetrg",
    "separate",
    "separateaug",
    "separatesrc",
    "separatesrcaug",
)


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


class SelfTrainingModule(MeanTeacher, UDAModule):
    """A :class:`UDAModule` trained on its teacher's pseudo-labels of mixed images.

    A subclass defines :meth:`mix_inputs` (what is pasted onto what); every other hook has the
    DACS/ClassMix default. The module adds an :class:`~lightning_uda.callbacks.EMATeacher` and a
    :class:`~lightning_uda.callbacks.PseudoLabelThreshold` built from its arguments.

    Args:
        ema_alpha: teacher EMA decay (0.99 in DACS).
        ema_warmup: use DACS' warm-up ``min(1 - 1/(t+1), alpha)``.
        ema_buffers: "copy", "average" or "none" for the teacher's BatchNorm buffers.
        pseudo_label_threshold: confidence threshold τ (0.968 in DACS).
        pseudo_label_weighting: "uniform" (DACS: one q per batch) or "pixel".
        teacher_bn: "train" (batch statistics while pseudo-labelling, as the references) or
            "eval" (running statistics); ``None`` takes the class default
            (:attr:`default_teacher_bn`).
        pseudo_label_crop: ``(top, bottom)`` image rows whose pseudo-label weights are set to 0
            after q is computed (DAFormer: ``(15, 120)`` on 512-row crops); ``(0, 0)`` = none.
        feature_distance_weight, feature_distance_classes, feature_distance_min_ratio:
            DAFormer's ImageNet feature distance (0 = off; see
            :mod:`lightning_uda.methods.daformer`).
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
        mask_mode: which images MIC masks, with MIC's names (:data:`MASK_MODES`):
            "separatetrgaug" (default; MIC's GTA5/SYNTHIA → Cityscapes runs): the target batch,
            colour-augmented; "separatetrg": the target batch as loaded (no colour
            augmentation); "separate" (MIC's Cityscapes → ACDC / Dark Zurich runs): half a
            batch of source images with their labels (weight 1) followed by target images with
            their pseudo-labels, not augmented (batch 2: one of each); "separateaug": the same,
            colour-augmented; "separatesrc" / "separatesrcaug": the source batch with its
            labels, without / with colour augmentation. The augmentation is the module's strong
            augmentation (none with ``strong_augmentation=False``).
        mask_block_size: MIC's block side in pixels (64 at 512×512 crops).
        mask_ratio: masked fraction of the blocks (0.7).
        **kwargs: the arguments of :class:`UDAModule`.
    """

    #: Teacher BatchNorm mode when ``teacher_bn`` is not given (DACS overrides it with "train").
    default_teacher_bn: TeacherBatchNorm = "eval"
    #: Half of the classes rounded down (ClassMix) or up (DACS) when ``mix_rounding`` is None.
    default_mix_rounding = "floor"

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        ema_alpha: float = 0.99,
        ema_warmup: bool = True,
        ema_buffers: BufferMode = "copy",
        pseudo_label_threshold: float = 0.968,
        pseudo_label_weighting: Weighting = "uniform",
        teacher_bn: TeacherBatchNorm | None = None,
        pseudo_label_crop: tuple[int, int] = (0, 0),
        feature_distance_weight: float = 0.0,
        feature_distance_classes: Sequence[int] | None = CITYSCAPES_THING_CLASSES,
        feature_distance_min_ratio: float = 0.75,
        mix_mode: str = "per_image",
        mix_rounding: str | None = None,
        mix_include_ignore: bool = False,
        mixed_weight: float = 1.0,
        mix_warmup_steps: int = 0,
        strong_augmentation: bool = True,
        masked_consistency_weight: float = 0.0,
        mask_block_size: int = 64,
        mask_ratio: float = 0.7,
        mask_mode: str = "separatetrgaug",
        jitter_semantics: str = "torchvision",
        augment_decision: str = "per_image",
        jitter_strength: float = 0.25,
        jitter_p: float = 0.8,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        owner = type(self).__name__
        check_range(owner, "ema_alpha", ema_alpha, 0, 1, high_open=True)
        check_range(
            owner,
            "pseudo_label_threshold",
            pseudo_label_threshold,
            0,
            1,
            low_open=True,
            high_open=True,
        )
        if len(pseudo_label_crop) != 2 or min(pseudo_label_crop) < 0:
            raise ValueError(
                f"{owner}: pseudo_label_crop must be (top, bottom) rows >= 0, got "
                f"{pseudo_label_crop!r}"
            )
        check_range(owner, "feature_distance_weight", feature_distance_weight, 0)
        check_range(owner, "feature_distance_min_ratio", feature_distance_min_ratio, 0, 1)
        check_range(owner, "mixed_weight", mixed_weight, 0)
        check_range(owner, "mix_warmup_steps", mix_warmup_steps, 0)
        check_range(owner, "masked_consistency_weight", masked_consistency_weight, 0)
        check_range(owner, "mask_block_size", mask_block_size, 1)
        check_range(owner, "mask_ratio", mask_ratio, 0, 1)
        if mask_mode not in MASK_MODES:
            raise ValueError(
                f"{owner}: mask_mode must be one of {MASK_MODES} (MIC's names), got {mask_mode!r}"
            )
        if mix_mode not in MIX_MODES:
            raise ValueError(f"mix_mode must be one of {MIX_MODES}, got {mix_mode!r}")
        self.mix_rounding = mix_rounding or self.default_mix_rounding
        if self.mix_rounding not in ("floor", "ceil"):
            raise ValueError(f"mix_rounding must be 'floor' or 'ceil', got {mix_rounding!r}")
        #: Frozen copy of the initial encoder for the feature distance (None when off).
        self.imnet_encoder = (
            copy.deepcopy(self.model.encoder).requires_grad_(False).eval()
            if feature_distance_weight > 0
            else None
        )
        self.init_teacher(teacher_bn or self.default_teacher_bn)
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
        #: The last step's mixed batch, ``{"image": B×3×H×W (augmented, detached), "label":
        #: B×H×W, "weight": B×H×W}``, or ``None`` before the first mix (callbacks, panels).
        self.last_mix: dict[str, Tensor] | None = None

    def train(self, mode: bool = True) -> SelfTrainingModule:
        """Switch the student's mode; the teacher (and the frozen encoder) stay in eval mode."""
        super().train(mode)
        self.teacher.eval()
        if getattr(self, "imnet_encoder", None) is not None:
            self.imnet_encoder.eval()
        return self

    def configure_callbacks(self) -> list[Any]:
        return [*super().configure_callbacks(), *self.teacher_callbacks()]

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.check_teacher_callbacks()

    # ------------------------------------------------------------------ the step
    def source_loss(self, source: Mapping[str, Tensor]) -> Tensor:
        """Source CE, plus DAFormer's ImageNet feature distance when it is on (one forward)."""
        if self.imnet_encoder is None:
            return super().source_loss(source)
        # imported here: daformer.py builds DAFormerModule on this module (an import cycle at
        # the top), and keeps the feature distance beside the recipe it belongs to
        from lightning_uda.methods.daformer import source_loss_with_feature_distance

        return source_loss_with_feature_distance(self, source)

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
        self.last_mix = {"image": images.detach(), "label": labels, "weight": weights}
        yield "mixed", self.hparams.mixed_weight * self.mixed_loss(images, labels, weights)
        if self.hparams.masked_consistency_weight > 0:
            masked = self.masked_consistency_loss(
                target["image"], pseudo_labels, pseudo_weights, source=batch["source"]
            )
            yield "masked", self.hparams.masked_consistency_weight * masked

    # ------------------------------------------------------------------ hooks
    def mix_inputs(
        self, batch: Mapping[str, Any], pseudo_labels: Tensor, pseudo_weights: Tensor
    ) -> MixInputs:
        """What is pasted onto what (defined by each method)."""
        raise NotImplementedError(f"{type(self).__name__} must define mix_inputs")

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

    def masked_consistency_loss(
        self,
        images: Tensor,
        labels: Tensor,
        weights: Tensor,
        source: Mapping[str, Tensor] | None = None,
    ) -> Tensor:
        """MIC's loss on the target ``images`` with their pseudo-labels and weights, and on the
        ``source`` batch where ``mask_mode`` takes source images
        (:func:`lightning_uda.methods.mic.masked_consistency_loss`)."""
        # imported here: mic.py builds MICModule on DAFormer, which is built on this module
        from lightning_uda.methods.mic import masked_consistency_loss

        return masked_consistency_loss(self, images, labels, weights, source=source)
