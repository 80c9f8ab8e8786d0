"""`UDAModule`: the LightningModule every adaptation method derives from.

What every method is: a segmentor (``self.model``) trained on a named list of losses with one
optimiser and an iteration-based poly schedule. One training step walks a batch like this:

1. :meth:`UDAModule.training_losses` yields ``(name, loss)`` pairs: the source loss
   (:meth:`UDAModule.source_loss`), then the method's terms (:meth:`UDAModule.adaptation_losses`);
2. each loss is checked finite and back-propagated as soon as it is yielded, so the graph of one
   loss is freed before the next forward runs and peak memory stays near that of one
   forward/backward;
3. every ``accumulate_grad_batches`` batches the optimisers step, the schedules step,
   ``uda_step`` grows by one, :meth:`UDAModule.after_optimizer_step` runs, and every parameter
   and buffer is checked finite (before any checkpoint of that step is written).

A method overrides :meth:`adaptation_losses` (and the small hooks of its own family); it rarely
needs to touch :meth:`training_step`. ``docs/extending.md`` shows a variant.

Because losses are back-propagated one at a time, the base uses Lightning's *manual
optimisation*: gradient accumulation and clipping are module arguments
(``accumulate_grad_batches``, ``gradient_clip_val``); the Trainer's are refused with an error
naming the module argument. Clipping runs in :meth:`UDAModule.on_before_optimizer_step`, after
AMP unscaling.

The other jobs live beside it, one file each, mixed into the class: evaluation and prediction
(:mod:`~lightning_uda.methods.evaluation`), the batch/data/finite-state checks
(:mod:`~lightning_uda.methods.guards`), exact-resume state (:mod:`~lightning_uda.methods.resume`)
and the optimiser steps (:mod:`~lightning_uda.methods.optimization`, over
:class:`lightning_uda.optim.OptimizerSettings`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from lightning_uda.checks import check_range
from lightning_uda.constants import IGNORE_INDEX
from lightning_uda.losses import (
    MinimumClassConfusionLoss,
    cross_entropy,
    pixel_weighted_cross_entropy,
    upsample_logits,
)
from lightning_uda.methods.evaluation import Evaluation
from lightning_uda.methods.guards import TrainingGuards, first_non_finite
from lightning_uda.methods.optimization import Optimization
from lightning_uda.methods.resume import ExactResume
from lightning_uda.models import build_segmentor
from lightning_uda.normalization import InputNormalization, NormalizationLike, get_normalization
from lightning_uda.optim import OptimizerSettings, poly_lr_factor
from lightning_uda.run_info import RUN_INFO_KEY, run_info

__all__ = ["Losses", "UDAModule", "check_range", "first_non_finite", "poly_lr_factor"]

Losses = Iterator[tuple[str, Tensor]]
SourceCEMean = Literal["valid", "all"]


class UDAModule(Optimization, ExactResume, Evaluation, TrainingGuards, LightningModule):
    """Base LightningModule for domain-adaptive semantic segmentation.

    Batches (``docs/design.md``, "Data contract"): training ``{"source": {"image": B×3×H×W,
    "mask": B×H×W}, "target": {"image": B×3×H×W[, "mask"]}}`` (a target mask is for monitoring
    only and is never trained on); validation/test ``{"image", "mask"}``; predict
    ``{"image"[, "orig_size", "path"]}``. Images are in the run's input space
    (:attr:`normalization`). Logged metrics: :mod:`lightning_uda.methods.evaluation`.

    Args:
        model: a ready segmentor (``forward(x) -> B×K×h×w`` logits, backbone under ``.encoder``);
            if ``None``, :func:`~lightning_uda.models.build_segmentor` builds one from ``arch``,
            ``encoder``, ``num_classes``, ``encoder_weights`` (``None``: nothing downloaded),
            ``checkpoint`` (a local state dict) and ``model_kwargs``.
        num_classes: number of output classes K (19 for Cityscapes train ids).
        optimizer, lr, momentum, dampening, nesterov, weight_decay, betas, head_lr_mult,
            poly_power, warmup_steps, warmup_ratio, no_decay_keys, total_steps: the optimiser
            and schedule, see :class:`~lightning_uda.optim.OptimizerSettings` (SGD 2.5e-4, head
            ×10, poly 0.9 per iteration by default, as DACS and AdvEnt).
        fold_gradients: opt-in :class:`~lightning_uda.optim.FoldingSGD`: each backward's
            gradients go into SGD's momentum buffer and are dropped, so the next forward runs
            without them. The same update up to the order of additions. An error with a
            non-SGD optimiser, momentum 0, dampening, Nesterov, clipping or a 16-bit AMP loss
            scaler; gradient-norm logging sees only the last backward's gradients.
        accumulate_grad_batches: batches per optimiser step.
        gradient_clip_val: clip the gradient norm of the segmentor to this value (None = off).
        source_ce_mean_over: ``"valid"`` (default): the source CE is the mean over non-void
            pixels (DACS, AdvEnt); ``"all"``: the mean over all pixels with void pixels counting
            0 (mmseg's default, so DAFormer's and MIC's).
        mcc_weight, mcc_temperature, mcc_num_pixels: Minimum Class Confusion on target pixels as a
            regulariser of any method (weight 0 = off; T 2.5; pixels sampled per batch).
        class_names, class_subsets: metric names (default: the datamodule's), e.g.
            ``{"mIoU16": [...], "mIoU13": [...]}`` for SYNTHIA.
        ignore_index: label of void pixels (255).
        seed: seed of the module's own random generator (mixing masks, augmentation, sampling);
            each DDP rank offsets it by its rank.
        normalization: the run's input space, ``"imagenet"``, ``"caffe"`` (BGR, 0–255,
            mean-only) or an :class:`~lightning_uda.normalization.InputNormalization`; ``None``
            takes the segmentor's ``input_normalization``, else ``"imagenet"``. ``fit`` fails at
            the start if the datamodule's datasets normalise differently.
        align_corners: upsample logits with ``align_corners=True`` in the losses, pseudo-labels
            and evaluation, as DACS' and AdvEnt's code do (default ``False``, as mmseg).
        inference, slide_window, slide_stride: ``"whole"`` (default) or ``"slide"`` evaluation
            (windows of ``(h, w)`` every ``(h, w)`` pixels); see
            :mod:`lightning_uda.methods.evaluation`.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        num_classes: int = 19,
        arch: str = "deeplabv2",
        encoder: str | None = None,
        encoder_weights: str | None = None,
        checkpoint: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        optimizer: str = "sgd",
        lr: float = 2.5e-4,
        momentum: float = 0.9,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 5e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        head_lr_mult: float = 10.0,
        poly_power: float = 0.9,
        warmup_steps: int = 0,
        warmup_ratio: float | None = None,
        no_decay_keys: Sequence[str] = (),
        total_steps: int | None = None,
        fold_gradients: bool = False,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        source_ce_mean_over: SourceCEMean = "valid",
        mcc_weight: float = 0.0,
        mcc_temperature: float = 2.5,
        mcc_num_pixels: int = 4096,
        class_names: Sequence[str] | None = None,
        class_subsets: Mapping[str, Sequence[int]] | None = None,
        ignore_index: int = IGNORE_INDEX,
        seed: int = 0,
        normalization: NormalizationLike | None = None,
        align_corners: bool = False,
        inference: str = "whole",
        slide_window: tuple[int, int] = (512, 512),
        slide_stride: tuple[int, int] = (341, 341),
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.automatic_optimization = False
        owner = type(self).__name__
        #: The segmentor's optimiser and schedule (checked together at construction).
        self.optim_settings = OptimizerSettings(
            optimizer=optimizer,
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            nesterov=nesterov,
            weight_decay=weight_decay,
            betas=tuple(betas),
            head_lr_mult=head_lr_mult,
            poly_power=poly_power,
            warmup_steps=warmup_steps,
            warmup_ratio=warmup_ratio,
            no_decay_keys=tuple(no_decay_keys or ()),
            total_steps=total_steps,
            fold_gradients=fold_gradients,
            gradient_clip_val=gradient_clip_val,
            owner=owner,
        )
        if accumulate_grad_batches < 1:
            raise ValueError(f"accumulate_grad_batches must be >= 1, got {accumulate_grad_batches}")
        if source_ce_mean_over not in ("valid", "all"):
            raise ValueError(
                f"{owner}: source_ce_mean_over must be 'valid' or 'all', got "
                f"{source_ce_mean_over!r}"
            )
        check_range(owner, "num_classes", num_classes, 1)
        check_range(owner, "mcc_weight", mcc_weight, 0)
        check_range(owner, "mcc_temperature", mcc_temperature, 0, low_open=True)
        check_range(owner, "mcc_num_pixels", mcc_num_pixels, 1)
        if model is None:
            model = build_segmentor(
                arch,
                num_classes=num_classes,
                encoder=encoder,
                encoder_weights=encoder_weights,
                checkpoint=checkpoint,
                **(model_kwargs or {}),
            )
        self.model = model
        self.normalization: InputNormalization = get_normalization(
            normalization
            if normalization is not None
            else getattr(model, "input_normalization", None)
        )
        self.align_corners = bool(align_corners)
        self.init_evaluation(
            num_classes=num_classes,
            ignore_index=ignore_index,
            class_names=class_names,
            class_subsets=class_subsets,
            inference=inference,
            slide_window=slide_window,
            slide_stride=slide_stride,
        )
        self.mcc_loss = (
            MinimumClassConfusionLoss(temperature=mcc_temperature, num_pixels=mcc_num_pixels)
            if mcc_weight > 0
            else None
        )
        #: Optimiser steps of the segmentor taken so far (Lightning's ``global_step`` counts one
        #: step per optimiser, which is wrong for methods with a discriminator).
        self.uda_step = 0
        self._accumulated = 0
        self.rng = torch.Generator().manual_seed(seed)

    def forward(self, images: Tensor) -> Tensor:
        """Student logits ``B×K×h×w`` (not upsampled) for normalised images ``B×3×H×W``."""
        return self.model(images)

    def upsample(self, logits: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
        """``B×K×h×w`` logits → ``B×K×H×W`` with the module's ``align_corners`` rule (losses,
        pseudo-labels and evaluation alike)."""
        return upsample_logits(logits, size, align_corners=self.align_corners)

    # ------------------------------------------------------------------ the losses
    def source_loss(self, source: Mapping[str, Tensor]) -> Tensor:
        """Supervised CE of the student on the source batch (``source_ce_mean_over``)."""
        logits = self.model(source["image"])
        return self.source_cross_entropy(logits, source["mask"])

    def source_cross_entropy(self, logits: Tensor, labels: Tensor) -> Tensor:
        """CE of ``B×K×h×w`` logits against ``B×H×W`` source labels, averaged over the valid
        pixels or over all of them (void counting 0), as ``source_ce_mean_over`` says."""
        if self.hparams.source_ce_mean_over == "all":
            return pixel_weighted_cross_entropy(
                logits,
                labels,
                1.0,
                ignore_index=self.ignore_index,
                align_corners=self.align_corners,
            )
        return cross_entropy(
            logits, labels, ignore_index=self.ignore_index, align_corners=self.align_corners
        )

    def adaptation_losses(self, batch: Mapping[str, Any]) -> Losses:
        """Yield ``(name, weighted_loss)`` for the adaptation terms of a method.

        Each yielded loss is back-propagated before the generator resumes, so compute one loss,
        yield it, then compute the next. The base yields the MCC regulariser when
        ``mcc_weight > 0``; subclasses should ``yield from super().adaptation_losses(batch)``.
        """
        if self.mcc_loss is not None:
            logits = self.model(batch["target"]["image"])
            yield "mcc", self.hparams.mcc_weight * self.mcc_loss(logits, generator=self.rng)

    def training_losses(self, batch: Mapping[str, Any]) -> Losses:
        """All losses of one step: the source loss, then :meth:`adaptation_losses`."""
        yield "source", self.source_loss(batch["source"])
        yield from self.adaptation_losses(batch)

    # ------------------------------------------------------------------ the step
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        """Back-propagate each loss in turn, then step the optimiser(s) every k batches."""
        self.restore_rank_buffers()
        if not getattr(self, "_batch_checked", True):
            self.check_batch(batch)
            self._batch_checked = True
        accumulate = self.hparams.accumulate_grad_batches
        total = torch.zeros((), device=self.device)
        batch_size = batch["source"]["image"].shape[0]
        for name, loss in self.training_losses(batch):
            self.check_loss(name, loss)
            self.manual_backward(loss / accumulate)
            self.fold_gradients()
            total = total + loss.detach()
            self.log(f"train/loss_{name}", loss.detach(), batch_size=batch_size)
        self.log("train/loss", total, prog_bar=True, batch_size=batch_size)
        self._accumulated += 1
        if self._accumulated >= accumulate:
            self._accumulated = 0
            self.optimizer_steps()
            self.uda_step += 1
            self.after_optimizer_step()
            self.check_finite_state()
        return total

    def after_optimizer_step(self) -> None:
        """Hook run after each real optimiser step (``self.uda_step`` already incremented)."""

    # ------------------------------------------------------------------ optimisers
    def configure_optimizers(self) -> Any:
        optimizer = self.make_optimizer(self.segmentor_param_groups())
        scheduler = self.poly_scheduler(
            optimizer,
            warmup_steps=self.optim_settings.warmup_steps,
            warmup_ratio=self.optim_settings.warmup_ratio,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler}}

    # ------------------------------------------------------------------ fit
    def configure_callbacks(self) -> list[Any]:
        # Checked here because Lightning validates Trainer flags against manual optimisation right
        # after this hook, with an error that does not name the module argument to use instead.
        self.check_trainer_flags()
        return []

    def on_fit_start(self) -> None:
        # Lightning warns that, under manual optimisation, ModelCheckpoint(every_n_train_steps)
        # saves the state *after* the step. That is the state a resume needs here: the step
        # counter, optimisers, RNG and data position all describe the state after the step, and a
        # resumed run continues bit-identically (tests/methods/test_dacs.py,
        # test_resume_ddp.py). The warning does not apply, so it is silenced for this message.
        warnings.filterwarnings(
            "ignore",
            message="Using ModelCheckpoint with manual optimization and every_n_train_steps",
            category=UserWarning,
        )
        self.check_data_against_module()
        self.check_folding_against_precision()
        self._batch_checked = False
        # Different ranks must draw different mixing masks / augmentations.
        if self.trainer.world_size > 1 and not getattr(self, "_rng_restored", False):
            self.rng.manual_seed(self.hparams.seed + self.trainer.global_rank)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The resume state (``ExactResume``), then what predict and evaluate need to know about
        the run: classes, palette, input space, training crop (:mod:`lightning_uda.run_info`)."""
        super().on_save_checkpoint(checkpoint)
        checkpoint[RUN_INFO_KEY] = run_info(self)
