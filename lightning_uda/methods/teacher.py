"""`MeanTeacher`: the EMA teacher and its pseudo-labels, shared by the self-training methods.

Like solo-learn's momentum base: the teacher (``self.teacher``) is a frozen copy of the student
that lives on the module (so it is checkpointed, moved to the device and kept out of DDP's
gradient buckets). Two callbacks drive it: :class:`~lightning_uda.callbacks.EMATeacher` (the
EMA update after each optimiser step) and :class:`~lightning_uda.callbacks.PseudoLabelThreshold`
(logits → labels and pixel weights). The module's arguments are the one source of truth for
their settings: it adds both callbacks built from them, and a Trainer callback that disagrees
with them is an error naming both values.

**Teacher BatchNorm.** ``teacher_bn="train"`` is what DACS', ClassMix's and DAFormer's code do:
the teacher's BatchNorm layers normalise with the statistics of the target batch being
pseudo-labelled (their EMA covers parameters only). ``teacher_bn="eval"`` uses the running
statistics the teacher holds. In train mode the library differs from the references in one
detail: the teacher's running statistics are not updated by its forwards. Dropout and drop-path
stay off in both modes, as in the references' teachers.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from lightning.pytorch import Callback
from torch import Tensor, nn

from lightning_uda.callbacks import EMATeacher, PseudoLabelThreshold

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


class MeanTeacher:
    """Mixin of the self-training modules: the teacher, its callbacks and the pseudo-labels.

    Reads the module's ``hparams`` ``ema_alpha``, ``ema_warmup``, ``ema_buffers``,
    ``pseudo_label_threshold``, ``pseudo_label_weighting`` and ``pseudo_label_crop``.
    """

    def init_teacher(self, teacher_bn: TeacherBatchNorm) -> None:
        """Create ``self.teacher`` (a frozen copy of the student) with its BatchNorm mode."""
        if teacher_bn not in ("train", "eval"):
            raise ValueError(f"teacher_bn must be 'train' or 'eval', got {teacher_bn!r}")
        self.teacher_bn = teacher_bn
        self.teacher = copy.deepcopy(self.model).requires_grad_(False)
        self.teacher.eval()

    # ------------------------------------------------------------------ callbacks
    def teacher_callbacks(self) -> list[Callback]:
        """The module's :class:`EMATeacher` and :class:`PseudoLabelThreshold`, unless the Trainer
        has them; a Trainer callback whose settings differ from the module's arguments is an
        error naming both values (one source of truth)."""
        hp = self.hparams
        wanted: list[Callback] = [
            EMATeacher(alpha=hp.ema_alpha, warmup=hp.ema_warmup, buffers=hp.ema_buffers),
            PseudoLabelThreshold(
                threshold=hp.pseudo_label_threshold, weighting=hp.pseudo_label_weighting
            ),
        ]
        settings = {
            EMATeacher: (
                ("alpha", "ema_alpha"),
                ("warmup", "ema_warmup"),
                ("buffers", "ema_buffers"),
            ),
            PseudoLabelThreshold: (
                ("threshold", "pseudo_label_threshold"),
                ("weighting", "pseudo_label_weighting"),
            ),
        }
        existing = self.trainer.callbacks if self._trainer is not None else []
        defaults = []
        for callback in wanted:
            kind = type(callback)
            given = [c for c in existing if isinstance(c, kind)]
            if not given:
                defaults.append(callback)
                continue
            for attribute, argument in settings[kind]:
                ours, theirs = getattr(callback, attribute), getattr(given[0], attribute)
                if ours != theirs:
                    raise ValueError(
                        f"{type(self).__name__} was built with {argument}={ours!r} but the "
                        f"Trainer's {kind.__name__} has {attribute}={theirs!r}. The module's "
                        f"arguments are the one source of truth: pass {argument}={theirs!r} to "
                        f"the module and drop the {kind.__name__} from Trainer(callbacks=...) "
                        "(the module adds its own)."
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

    def check_teacher_callbacks(self) -> None:
        """At the start of fit: exactly one of each callback (kept for :meth:`pseudo_label`)."""
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
        if labeler is None:  # called outside fit (e.g. a notebook): the module's settings
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
