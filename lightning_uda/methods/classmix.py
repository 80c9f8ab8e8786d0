"""`ClassMixModule`: ClassMix (Olsson et al., WACV 2021) in the UDA setting.

Algorithm per step (one line per yielded loss; the shared step is
:class:`~lightning_uda.methods.SelfTrainingModule`'s):

1. source CE on the labelled source batch;
2. teacher pseudo-labels ŷ and weights w on the un-augmented target batch;
3. ClassMix (:meth:`ClassMixModule.mix_inputs`): each target image A is paired with another
   target image B (the batch rolled by one); half of the classes of ŷ_A (floor(n/2), void
   excluded) form the mask M; x = M·x_A + (1−M)·x_B, y = M·ŷ_A + (1−M)·ŷ_B (= argmax of the mixed
   softmax), w likewise;
4. strong augmentation of x; mixed CE = mean over all pixels of w × CE(student(x), y).

The teacher's BatchNorm runs in eval mode by default (``teacher_bn``): a train-mode teacher,
whose statistics come from mixed images without source pixels, made ClassMix collapse on the
demo (README, "Teacher BatchNorm"); the example recipes run it as the reference (train).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from lightning_uda.methods.self_training import MixInputs, SelfTrainingModule

__all__ = ["ClassMixModule", "MixInputs"]


class ClassMixModule(SelfTrainingModule):
    """ClassMix between target images, plus the supervised source loss.

    Overridable hooks, so a variant is a few lines: :meth:`mix_inputs` (what is pasted onto
    what), ``mix_mask`` (which pixels), ``pseudo_label`` (labels + weights), ``strong_augment``,
    ``mixed_loss``. Arguments: :class:`SelfTrainingModule`'s (class choice rounded down).
    """

    default_mix_rounding = "floor"
    default_teacher_bn = "eval"

    def check_batch(self, batch: Mapping[str, Any]) -> None:
        """ClassMix pairs each target image with another one of the same device batch."""
        super().check_batch(batch)
        if batch["target"]["image"].shape[0] < 2:
            raise ValueError(
                f"{type(self).__name__} mixes each target image with another one of its batch, "
                f"so it needs at least 2 target images per device; got "
                f"{batch['target']['image'].shape[0]}. Raise the (target) batch size."
            )

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
