"""`DACSModule`: DACS (Tranheden et al., WACV 2021), ClassMix across domains.

Algorithm per step (one line per yielded loss):
1. source CE (mean over valid pixels) on the labelled source batch;
2. teacher (EMA of the student) softmax on the un-augmented target → ŷ = argmax, and the weight
   q = fraction of target pixels with max-prob ≥ 0.968 (one scalar per batch);
3. for each source image choose ceil(n/2) of its ground-truth classes; M = pixels of those classes;
   x = M·x_s + (1−M)·x_t, y = M·y_s + (1−M)·ŷ_t, w = M·1 + (1−M)·q;
4. colour jitter + Gaussian blur on x; mixed CE = mean over all pixels of w × CE(student(x), y).
The EMATeacher callback then updates the teacher after the optimiser step. Evaluate the student.
Steps 2–4 run in :class:`~lightning_uda.methods.SelfTrainingModule`; what makes them DACS' is
:meth:`DACSModule.mix_inputs` (source image and ground truth over the target image and its
pseudo-label) and the class choice of the source ground truth rounded up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from lightning_uda.methods.self_training import MixInputs, SelfTrainingModule


class DACSModule(SelfTrainingModule):
    """DACS: source classes (by ground truth) pasted onto target images.

    Hooks and arguments: :class:`SelfTrainingModule`'s; the default class choice rounds up
    (ceil(n/2), as DACS). DAFormer's class choice (each image draws among the classes of the
    whole source batch) is ``mix_mode="batch_union"``. Subclass and override one hook for a
    variant, e.g. ``mix_mask`` for one class choice shared by the batch, or ``pseudo_label`` to
    mask unreliable regions (see ``examples/custom_method.py``).

    The reference's exactness switches (all off by default, on in the DACS example recipe):
    ``mix_include_ignore=True`` (void among the class candidates), ``jitter_semantics="kornia05"``
    with ``augment_decision="per_batch"`` (the colour jitter DACS ran) and ``align_corners=True``.
    """

    default_mix_rounding = "ceil"
    #: Train-mode teacher BatchNorm, as DACS' code (README, "Teacher BatchNorm").
    default_teacher_bn = "train"

    def check_batch(self, batch: Mapping[str, Any]) -> None:
        """Source images are pasted onto target images: both batches need one shape."""
        super().check_batch(batch)
        self._check_same_shape(batch)

    def _check_same_shape(self, batch: Mapping[str, Any]) -> None:
        source, target = batch["source"], batch["target"]
        if source["image"].shape != target["image"].shape:
            raise ValueError(
                "DACS pastes source pixels onto target images, so both batches need the same "
                f"shape; got source {tuple(source['image'].shape)} and target "
                f"{tuple(target['image'].shape)}. Use equal batch sizes and crop sizes in the "
                "datamodule (DACS: 2 + 2 images, 512×512 crops)."
            )

    def mix_inputs(
        self, batch: Mapping[str, Any], pseudo_labels: Tensor, pseudo_weights: Tensor
    ) -> MixInputs:
        """Source image/GT (weight 1) as foreground, target image/pseudo-label as background."""
        self._check_same_shape(batch)
        source, target = batch["source"], batch["target"]
        return MixInputs(
            foreground_image=source["image"],
            foreground_label=source["mask"],
            foreground_weight=torch.ones_like(pseudo_weights),
            background_image=target["image"],
            background_label=pseudo_labels,
            background_weight=pseudo_weights,
        )
