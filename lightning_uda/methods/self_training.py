"""`SelfTrainingModule`: the mean-teacher base shared by ClassMix and DACS.

Like solo-learn's ``BaseMomentumMethod``: it adds the EMA teacher (``self.teacher``, a frozen copy
of the student that lives on the module, so it is checkpointed, moved to the device and excluded
from DDP's gradient buckets) and the two callbacks that drive it, :class:`EMATeacher` and
:class:`PseudoLabelThreshold`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from lightning.pytorch import Callback
from torch import Tensor, nn

from lightning_uda.callbacks import EMATeacher, PseudoLabelThreshold
from lightning_uda.callbacks.ema import BufferMode
from lightning_uda.callbacks.pseudo_label import Weighting
from lightning_uda.losses import upsample_logits
from lightning_uda.methods.base import UDAModule


class SelfTrainingModule(UDAModule):
    """A :class:`UDAModule` with an EMA teacher that produces pseudo-labels.

    The module returns a default :class:`EMATeacher` and :class:`PseudoLabelThreshold` from
    :meth:`configure_callbacks` (built from the arguments below) unless the Trainer already has
    one; a Trainer with two of either fails at the start of ``fit`` with an explanation.

    Args:
        ema_alpha: teacher EMA decay (0.99 in DACS).
        ema_warmup: use DACS' warm-up ``min(1 - 1/(t+1), alpha)``.
        ema_buffers: "copy", "average" or "none" for the teacher's BatchNorm buffers.
        pseudo_label_threshold: confidence threshold τ (0.968 in DACS).
        pseudo_label_weighting: "uniform" (DACS: one q per batch) or "pixel".
        **kwargs: the arguments of :class:`UDAModule`.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        ema_alpha: float = 0.99,
        ema_warmup: bool = True,
        ema_buffers: BufferMode = "copy",
        pseudo_label_threshold: float = 0.968,
        pseudo_label_weighting: Weighting = "uniform",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.teacher = copy.deepcopy(self.model).requires_grad_(False)
        self.teacher.eval()

    def train(self, mode: bool = True) -> SelfTrainingModule:
        """Switch the student's mode; the teacher always stays in eval mode (fixed BN stats)."""
        super().train(mode)
        self.teacher.eval()
        return self

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
        """Teacher logits ``B×K×H×W`` at the image resolution (no gradients)."""
        return upsample_logits(self.teacher(images), tuple(images.shape[-2:]))

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
        return labeler(
            self.teacher_logits(images),
            pl_module=self if self._trainer is not None else None,
            monitor_mask=monitor_mask,
            class_names=self.class_names,
        )
