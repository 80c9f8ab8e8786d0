"""`SelfTrainingModule`: the mean-teacher base shared by ClassMix and DACS.

Like solo-learn's ``BaseMomentumMethod``: it adds the EMA teacher (``self.teacher``, a frozen copy
of the student that lives on the module, so it is checkpointed, moved to the device and excluded
from DDP's gradient buckets) and the two callbacks that drive it, :class:`EMATeacher` and
:class:`PseudoLabelThreshold`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from lightning.pytorch import Callback
from torch import Tensor, nn

from lightning_uda.callbacks import EMATeacher, PseudoLabelThreshold
from lightning_uda.callbacks.ema import BufferMode
from lightning_uda.callbacks.pseudo_label import Weighting
from lightning_uda.losses import CITYSCAPES_THING_CLASSES, cross_entropy, feature_distance
from lightning_uda.methods.base import UDAModule, check_range
from lightning_uda.models import forward_with_features

TeacherBatchNorm = Literal["train", "eval"]


@contextmanager
def batch_statistics(module: nn.Module) -> Iterator[None]:
    """Inside the block, every BatchNorm layer of ``module`` normalises with the statistics of
    the batch it sees (train-mode BatchNorm) *without* updating its running statistics.

    Other layers keep their mode (dropout stays off in an eval-mode module). On exit every
    BatchNorm layer gets back its ``training`` and ``track_running_stats`` flags. Works for
    ``SyncBatchNorm`` too (which then averages the statistics over the DDP ranks).
    """
    layers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.training, m.track_running_stats) for m in layers]
    for m in layers:
        m.training = True
        # With track_running_stats False, PyTorch normalises with batch statistics and passes no
        # running buffers to the kernel, so they are neither used nor updated.
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, training, track in saved:
            m.training = training
            m.track_running_stats = track


class SelfTrainingModule(UDAModule):
    """A :class:`UDAModule` with an EMA teacher that produces pseudo-labels.

    The module returns a default :class:`EMATeacher` and :class:`PseudoLabelThreshold` from
    :meth:`configure_callbacks` (built from the arguments below) unless the Trainer already has
    one; a Trainer with two of either fails at the start of ``fit`` with an explanation.

    **Teacher BatchNorm.** ``teacher_bn="train"`` is what DACS', ClassMix's and DAFormer's code
    do: the teacher's BatchNorm layers normalise with the statistics of the target batch being
    pseudo-labelled (their EMA covers parameters only). ``teacher_bn="eval"`` uses the running
    statistics the teacher holds (``ema_buffers`` decides how they follow the student). The
    library's train mode differs from the references in two details: the teacher's running
    statistics are not updated by its forwards, and layers other than BatchNorm (dropout) stay in
    eval mode; DeepLabV2 and the demo's TinyUNet have no dropout, so for them the pseudo-labels
    are the references'. On the demo both modes were measured over 3 seeds for DACS and ClassMix
    (README, "Teacher BatchNorm"): train mode won for DACS on every seed, and made ClassMix
    (whose mixed images hold no source pixels) collapse; so the class defaults are "train" for
    DACS and "eval" for ClassMix. The example recipes run both as their references (train).

    Args:
        ema_alpha: teacher EMA decay (0.99 in DACS).
        ema_warmup: use DACS' warm-up ``min(1 - 1/(t+1), alpha)``.
        ema_buffers: "copy", "average" or "none" for the teacher's BatchNorm buffers.
        feature_distance_weight: λ of DAFormer's ImageNet feature distance (0 = off; DAFormer
            0.005): the mean L2 distance between the student's deepest encoder features of the
            source images and those of a frozen copy of the *initial* encoder (built here, so
            start the model from the ImageNet weights), over feature cells whose downscaled
            source label is one of ``feature_distance_classes``; 0 when none is present. The
            frozen copy is checkpointed and never optimised.
        feature_distance_classes: train ids counted (default: Cityscapes' thing classes);
            ``None`` counts every position.
        feature_distance_min_ratio: a cell takes its majority class when it covers at least
            this share of the cell (0.75).
        pseudo_label_crop: ``(top, bottom)`` image rows whose pseudo-label weights are set to 0
            after q is computed (DAFormer: ``(15, 120)`` on 512-row crops of 1024×512 frames:
            the ego-vehicle bonnet and rectification borders); ``(0, 0)`` = none.
        teacher_bn: "train" (batch statistics while pseudo-labelling, as the references) or
            "eval" (running statistics); ``None`` takes the class default
            (:attr:`default_teacher_bn`: ``"train"`` for DACS, ``"eval"`` for ClassMix).
        pseudo_label_threshold: confidence threshold τ (0.968 in DACS).
        pseudo_label_weighting: "uniform" (DACS: one q per batch) or "pixel".
        **kwargs: the arguments of :class:`UDAModule`.
    """

    #: Teacher BatchNorm mode when ``teacher_bn`` is not given. Eval mode here (and so for
    #: ClassMix): on the demo a train-mode teacher made ClassMix collapse (README, "Teacher
    #: BatchNorm"); DACSModule overrides it with "train".
    default_teacher_bn: TeacherBatchNorm = "eval"

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
        #: Frozen copy of the initial encoder for the feature distance (None when off).
        self.imnet_encoder = (
            copy.deepcopy(self.model.encoder).requires_grad_(False).eval()
            if feature_distance_weight > 0
            else None
        )
        teacher_bn = teacher_bn or self.default_teacher_bn
        if teacher_bn not in ("train", "eval"):
            raise ValueError(f"teacher_bn must be 'train' or 'eval', got {teacher_bn!r}")
        self.teacher_bn = teacher_bn
        self.teacher = copy.deepcopy(self.model).requires_grad_(False)
        self.teacher.eval()

    def train(self, mode: bool = True) -> SelfTrainingModule:
        """Switch the student's mode; the teacher module stays in eval mode (its BatchNorm layers
        switch to batch statistics only inside :meth:`teacher_logits` with ``teacher_bn="train"``).
        """
        super().train(mode)
        self.teacher.eval()
        if getattr(self, "imnet_encoder", None) is not None:
            self.imnet_encoder.eval()
        return self

    def source_loss(self, source: Mapping[str, Tensor]) -> Tensor:
        """Source CE, plus the ImageNet feature distance when ``feature_distance_weight > 0``
        (from the same forward: the logits and features come from one encoder pass)."""
        if self.imnet_encoder is None:
            return super().source_loss(source)
        images, labels = source["image"], source["mask"]
        logits, features = forward_with_features(self.model, images)
        loss = cross_entropy(
            logits, labels, ignore_index=self.ignore_index, align_corners=self.align_corners
        )
        with torch.no_grad():
            reference = list(self.imnet_encoder(images))[-1]
        distance = feature_distance(
            features[-1],
            reference,
            labels,
            classes=self.hparams.feature_distance_classes,
            num_classes=self.num_classes,
            min_ratio=self.hparams.feature_distance_min_ratio,
            ignore_index=self.ignore_index,
        )
        self.log("train/feature_distance", distance.detach(), batch_size=images.shape[0])
        return loss + self.hparams.feature_distance_weight * distance

    # ------------------------------------------------------------------ callbacks
    def configure_callbacks(self) -> list[Callback]:
        defaults: list[Callback] = super().configure_callbacks()
        existing = self.trainer.callbacks if self._trainer is not None else []
        if not any(isinstance(c, EMATeacher) for c in existing):
            defaults.append(
                EMATeacher(
                    alpha=self.hparams.ema_alpha,
                    warmup=self.hparams.ema_warmup,
                    buffers=self.hparams.ema_buffers,
                )
            )
        if not any(isinstance(c, PseudoLabelThreshold) for c in existing):
            defaults.append(
                PseudoLabelThreshold(
                    threshold=self.hparams.pseudo_label_threshold,
                    weighting=self.hparams.pseudo_label_weighting,
                )
            )
        return defaults

    def _single_callback(self, kind: type[Callback]) -> Any:
        found = [c for c in self.trainer.callbacks if isinstance(c, kind)]
        if len(found) != 1:
            problem = "none" if not found else f"{len(found)}"
            raise ValueError(
                f"{type(self).__name__} needs exactly one {kind.__name__} callback, the Trainer "
                f"has {problem}. Pass at most one {kind.__name__}(...) in Trainer(callbacks=...) "
                "(the module adds a default one built from its own arguments when there is none)."
            )
        return found[0]

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._single_callback(EMATeacher)
        self._pseudo_labeler = self._single_callback(PseudoLabelThreshold)

    # ------------------------------------------------------------------ hooks
    @torch.no_grad()
    def teacher_logits(self, images: Tensor) -> Tensor:
        """Teacher logits ``B×K×H×W`` at the image resolution (no gradients).

        With ``teacher_bn="train"`` BatchNorm normalises with ``images``' own statistics.
        """
        if self.teacher_bn == "train":
            with batch_statistics(self.teacher):
                logits = self.teacher(images)
            return self.upsample(logits, tuple(images.shape[-2:]))
        return self.upsample(self.teacher(images), tuple(images.shape[-2:]))

    def pseudo_label(
        self, images: Tensor, monitor_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Pseudo-labels ``B×H×W`` (long) and their weights ``B×H×W`` for target ``images``.

        The default runs the teacher on the un-augmented images and thresholds its softmax with the
        :class:`PseudoLabelThreshold` callback. ``monitor_mask`` (true target labels) is used for
        logging pseudo-label accuracy only.
        """
        labeler = getattr(self, "_pseudo_labeler", None)
        if labeler is None:  # called outside fit (e.g. a notebook): default settings
            labeler = PseudoLabelThreshold(
                threshold=self.hparams.pseudo_label_threshold,
                weighting=self.hparams.pseudo_label_weighting,
            )
        labels, weights = labeler(
            self.teacher_logits(images),
            pl_module=self if self._trainer is not None else None,
            monitor_mask=monitor_mask,
            class_names=self.class_names,
        )
        return labels, self.crop_pseudo_weights(weights)

    def crop_pseudo_weights(self, weights: Tensor) -> Tensor:
        """Zero the weights of the top and bottom ``pseudo_label_crop`` rows (``B×H×W``)."""
        top, bottom = (int(v) for v in self.hparams.pseudo_label_crop)
        if top == 0 and bottom == 0:
            return weights
        if top + bottom >= weights.shape[1]:
            raise ValueError(
                f"{type(self).__name__}: pseudo_label_crop={(top, bottom)} zeroes all "
                f"{weights.shape[1]} rows of the target images, so no pseudo-label would be "
                "trained on. DAFormer's (15, 120) is for 512-row Cityscapes crops: scale it to "
                "your crops, or pass pseudo_label_crop=(0, 0)."
            )
        weights = weights.clone()
        if top:
            weights[:, :top] = 0.0
        if bottom:
            weights[:, weights.shape[1] - bottom :] = 0.0
        return weights
