"""`UDAModule`: the LightningModule every adaptation method derives from.

The base owns what all methods share (see ``docs/design.md``): the segmentor (``self.model``), the
optimiser with backbone/head parameter groups and an iteration-based poly schedule, a private step
counter, the optional MCC regulariser, the run's input space (``normalization``) and logit
upsampling rule (``align_corners``), validation/test with per-class IoU (torchmetrics), and
prediction.

A method adds its losses by overriding :meth:`UDAModule.adaptation_losses`, a generator that
yields ``(name, weighted_loss)`` pairs. The base back-propagates each loss as soon as it is
yielded (``manual_backward``), so the graph of one loss is freed before the next forward runs and
peak memory stays near that of a single forward/backward (the DACS issue asks for exactly this:
source loss first, then the mixed loss).

Because of that, the base uses Lightning's *manual optimisation*. Gradient accumulation and
gradient clipping are therefore module arguments (``accumulate_grad_batches``,
``gradient_clip_val``) rather than Trainer arguments; the Trainer ones are rejected before
Lightning's own check (in :meth:`UDAModule.configure_callbacks`) with an error naming the module
argument to use. Clipping runs in :meth:`UDAModule.on_before_optimizer_step`, after AMP unscaling.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor, nn
from torchmetrics.classification import MulticlassJaccardIndex

from lightning_uda.constants import IGNORE_INDEX
from lightning_uda.inference import INFERENCE_MODES, sliding_window_logits
from lightning_uda.losses import MinimumClassConfusionLoss, cross_entropy, upsample_logits
from lightning_uda.models import build_segmentor, parameter_groups
from lightning_uda.normalization import InputNormalization, NormalizationLike, get_normalization
from lightning_uda.optim import FoldingSGD

Losses = Iterator[tuple[str, Tensor]]


def check_range(
    owner: str,
    name: str,
    value: float | None,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise ``ValueError`` naming ``owner``'s argument ``name`` if ``value`` is out of range.

    ``None`` values pass (optional arguments). Bounds are inclusive unless ``low_open`` /
    ``high_open``.
    """
    if value is None:
        return
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high or value != value:  # value != value: NaN
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        bounds = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        raise ValueError(f"{owner}: {name} must be in {bounds}, got {value!r}")


def first_non_finite(module: nn.Module) -> str | None:
    """Name of the first floating-point parameter or buffer of ``module`` holding a NaN or an
    infinity, or ``None`` when all are finite.

    One fused ``torch._foreach_norm(ord=inf)`` (the largest absolute value of each tensor, which
    is non-finite exactly when the tensor holds a non-finite value and cannot overflow) and a
    single host synchronisation; the tensors are searched one by one only when one is bad.
    """
    named = [
        (name, t)
        for name, t in (*module.named_parameters(), *module.named_buffers())
        if t.is_floating_point() and t.numel() > 0
    ]
    if not named:
        return None
    peaks = torch._foreach_norm([t.detach() for _, t in named], float("inf"))
    if bool(torch.isfinite(torch.stack([p.float() for p in peaks])).all()):
        return None
    return next(name for name, t in named if not bool(torch.isfinite(t.detach()).all()))


def poly_lr_factor(
    step: int,
    total_steps: int,
    power: float = 0.9,
    warmup_steps: int = 0,
    warmup_ratio: float | None = None,
) -> float:
    """Learning-rate multiplier of the poly schedule, ``(1 - step/total)**power``.

    DACS and AdvEnt decay the learning rate per iteration with power 0.9. ``warmup_steps`` adds a
    linear warm-up, in one of two forms:

    - ``warmup_ratio=None`` (default): the factor is ``(step + 1) / warmup_steps`` for the first
      ``warmup_steps`` steps, then the poly factor of the *current* step (so the peak is slightly
      below 1 when the warm-up ends: ``(1 - warmup/total)**power``).
    - ``warmup_ratio=r``: mmcv's linear warm-up (DAFormer's ``poly10warm``: 1,500 steps,
      r = 1e-6, power 1): the poly factor of the current step times
      ``1 - (1 - step/warmup_steps) · (1 - r)``, which starts at ``r`` and reaches the poly value
      exactly at the end of the warm-up.

    Args:
        step: optimiser steps taken so far (0-based).
        total_steps: the number of steps of the whole run.
        power: the poly exponent.
        warmup_steps: length of the linear warm-up (0 = none).
        warmup_ratio: starting fraction of mmcv's warm-up, or ``None`` for the first form.
    """
    poly = max(0.0, 1.0 - step / max(1, total_steps)) ** power
    if warmup_steps > 0 and step < warmup_steps:
        if warmup_ratio is None:
            return (step + 1) / warmup_steps
        return poly * (1.0 - (1.0 - step / warmup_steps) * (1.0 - warmup_ratio))
    return poly


class UDAModule(LightningModule):
    """Base LightningModule for domain-adaptive semantic segmentation.

    Batches (``docs/design.md``, "Data contract"): training ``{"source": {"image": B×3×H×W,
    "mask": B×H×W}, "target": {"image": B×3×H×W[, "mask"]}}`` (a target mask is for monitoring
    only and is never trained on); validation/test ``{"image", "mask"}``; predict
    ``{"image"[, "orig_size", "path"]}``. Images are in the run's input space
    (:attr:`normalization`).

    **Logged metrics.** ``val/mIoU`` (and ``test/mIoU``, ``val/IoU/<class>``, subset means such as
    ``val/mIoU16``) is the IoU of the *student* in percent, accumulated over the whole split
    (one confusion matrix, synced across ranks), void pixels (255) excluded, classes absent from
    both prediction and label left out of the mean. It is measured at the resolution of the
    labels the val dataset yields, with the logits upsampled to them; so the evaluation protocol
    is the val transform's: with ``preset("cityscapes_val")`` (protocol ``"full"``, the default)
    the network sees 1024×512 images and is scored against the full 2048×1024 labels (AdvEnt,
    DAFormer, MIC, the official benchmark); with ``protocol="dacs"`` labels are nearest-resized to
    1024×512 (DACS' evaluation). See ``lightning_uda.data.transforms``.

    Args:
        model: a ready segmentor (``forward(x) -> B×K×h×w`` logits, backbone under ``.encoder``).
            If ``None`` one is built with :func:`lightning_uda.models.build_segmentor` from
            ``arch``, ``encoder``, ``num_classes``, ``encoder_weights``, ``checkpoint`` and
            ``model_kwargs``.
        num_classes: number of output classes K (19 for Cityscapes train ids).
        arch: segmentor architecture ("deeplabv2", "tiny_unet" or an smp architecture name).
        encoder: backbone name for ``arch``.
        encoder_weights: ``None`` (default, nothing downloaded) or e.g. "imagenet" (opt-in).
        checkpoint: local path of a state dict to initialise the segmentor from.
        model_kwargs: extra keyword arguments for the architecture (e.g. DeepLabV2 ``dilations``).
        optimizer: "sgd" (DACS/AdvEnt recipe) or "adamw" (DAFormer style).
        lr: backbone learning rate; the head gets ``lr * head_lr_mult``.
        momentum: SGD momentum.
        weight_decay: weight decay of both groups.
        betas: AdamW betas.
        head_lr_mult: learning-rate multiplier of the head (10 in DACS/AdvEnt).
        poly_power: exponent of the per-iteration poly decay (0.9).
        warmup_steps: linear learning-rate warm-up steps (0 = none; see :func:`poly_lr_factor`).
        warmup_ratio: ``None`` (warm-up from ``1/warmup_steps``) or mmcv's warm-up starting at
            this fraction of the poly learning rate (DAFormer: 1e-6).
        no_decay_keys: parameter-name substrings whose parameters get no weight decay
            (DAFormer: ``("norm", "pos_block")``); empty = decay everywhere.
        total_steps: steps of the schedule; default ``trainer.max_steps`` (or Lightning's estimate).
        mcc_weight: weight of the Minimum Class Confusion loss on target pixels (0 = off); any
            method can add MCC as a regulariser this way.
        mcc_temperature: MCC temperature (2.5 in the paper).
        mcc_num_pixels: target pixels sampled per batch for MCC (bounds its memory).
        accumulate_grad_batches: batches per optimiser step.
        gradient_clip_val: clip the gradient norm of the segmentor to this value (None = off).
        fold_gradients: with SGD, add each loss's gradients to the momentum buffer right after its
            backward and drop them (:class:`~lightning_uda.optim.FoldingSGD`), so the next
            forward runs without a copy of the gradients beside its activations (MinEnt's peak
            RSS on the CPU benchmark: 1.40× → 1.18× SourceOnly). The same update up to the
            order of additions. Off by itself with gradient clipping, a 16-bit AMP loss scaler or
            momentum 0; turn it off for callbacks that read ``.grad`` before the step.
        class_names: names of the K classes for metric keys (default: from the datamodule).
        class_subsets: metric name → class ids to average, e.g. ``{"mIoU16": [...], "mIoU13":
            [...]}`` for SYNTHIA (default: from the datamodule, else all classes as "mIoU").
        ignore_index: label of void pixels (255).
        seed: seed of the module's own random generator (mixing masks, augmentation, sampling);
            each DDP rank offsets it by its rank.
        normalization: the run's input space, ``"imagenet"`` or ``"caffe"`` (BGR, 0–255,
            mean-only; the Caffe DeepLab-v2 weights) or an
            :class:`~lightning_uda.normalization.InputNormalization`. ``None`` (default) takes
            the segmentor's ``input_normalization`` attribute (``"caffe"`` for
            ``DeepLabV2(style="caffe")``), else ``"imagenet"``. Everything in the module that
            converts between pixels and tensors (strong augmentation, panels) uses it, and
            ``fit`` fails at the start if the datamodule's datasets normalise differently.
        align_corners: upsample logits with ``align_corners=True`` in the losses, pseudo-labels
            and evaluation, as DACS' and AdvEnt's code do (default ``False``, as mmseg/DAFormer).
        inference: how validation, test and predict run the student: ``"whole"`` (default; one
            forward on the whole image, as DACS, AdvEnt and DAFormer evaluate at 1024×512) or
            ``"slide"``: overlapping ``slide_window`` windows every ``slide_stride`` pixels,
            their logits averaged (:func:`lightning_uda.inference.sliding_window_logits`), for
            images larger than the training crop (e.g. full-resolution 2048×1024 Cityscapes).
        slide_window: ``(height, width)`` of a window (the training crop: 512×512).
        slide_stride: ``(height, width)`` between windows (341×341, 2/3 of the window).
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
        weight_decay: float = 5e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        head_lr_mult: float = 10.0,
        poly_power: float = 0.9,
        warmup_steps: int = 0,
        warmup_ratio: float | None = None,
        no_decay_keys: Sequence[str] = (),
        total_steps: int | None = None,
        mcc_weight: float = 0.0,
        mcc_temperature: float = 2.5,
        mcc_num_pixels: int = 4096,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        fold_gradients: bool = True,
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
        if optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}")
        if accumulate_grad_batches < 1:
            raise ValueError(f"accumulate_grad_batches must be >= 1, got {accumulate_grad_batches}")
        owner = type(self).__name__
        check_range(owner, "num_classes", num_classes, 1)
        check_range(owner, "lr", lr, 0, low_open=True)
        check_range(owner, "head_lr_mult", head_lr_mult, 0, low_open=True)
        check_range(owner, "momentum", momentum, 0, 1, high_open=True)
        check_range(owner, "weight_decay", weight_decay, 0)
        for i, beta in enumerate(betas):
            check_range(owner, f"betas[{i}]", beta, 0, 1, high_open=True)
        check_range(owner, "poly_power", poly_power, 0)
        check_range(owner, "warmup_steps", warmup_steps, 0)
        check_range(owner, "warmup_ratio", warmup_ratio, 0, 1)
        check_range(owner, "total_steps", total_steps, 1)
        check_range(owner, "mcc_weight", mcc_weight, 0)
        check_range(owner, "mcc_temperature", mcc_temperature, 0, low_open=True)
        check_range(owner, "mcc_num_pixels", mcc_num_pixels, 1)
        check_range(owner, "gradient_clip_val", gradient_clip_val, 0, low_open=True)
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
        if inference not in INFERENCE_MODES:
            raise ValueError(
                f"{owner}: inference must be one of {INFERENCE_MODES}, got {inference!r}"
            )
        for name, pair in (("slide_window", slide_window), ("slide_stride", slide_stride)):
            if len(pair) != 2 or min(int(v) for v in pair) < 1:
                raise ValueError(f"{owner}: {name} must be (height, width) >= 1, got {pair!r}")
        self.inference = inference
        self.slide_window = (int(slide_window[0]), int(slide_window[1]))
        self.slide_stride = (int(slide_stride[0]), int(slide_stride[1]))
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._class_names = list(class_names) if class_names is not None else None
        self._class_subsets = (
            {k: list(v) for k, v in class_subsets.items()} if class_subsets is not None else None
        )
        self.mcc_loss = (
            MinimumClassConfusionLoss(temperature=mcc_temperature, num_pixels=mcc_num_pixels)
            if mcc_weight > 0
            else None
        )
        # zero_division=nan: a class absent from both prediction and label has no IoU and is left
        # out of the mean (as Cityscapes' and mmseg's evaluation do), instead of counting as 0.
        metric_args = dict(
            num_classes=num_classes,
            ignore_index=ignore_index,
            average="none",
            zero_division=float("nan"),
        )
        self.val_iou = MulticlassJaccardIndex(**metric_args)
        self.test_iou = MulticlassJaccardIndex(**metric_args)
        #: Optimiser steps of the segmentor taken so far (Lightning's ``global_step`` counts one
        #: step per optimiser, which is wrong for methods with a discriminator).
        self.uda_step = 0
        self._accumulated = 0
        self.rng = torch.Generator().manual_seed(seed)
        #: Per-class IoU (percent, CPU) of the last evaluation, by prefix ("val", "test").
        self.last_iou: dict[str, Tensor] = {}
        #: ``K×K`` pixel confusion matrix (rows: label, columns: prediction; summed over the DDP
        #: ranks, void excluded) of the last evaluation, by prefix.
        self.last_confusion: dict[str, Tensor] = {}

    # ------------------------------------------------------------------ model and classes
    def forward(self, images: Tensor) -> Tensor:
        """Student logits ``B×K×h×w`` (not upsampled) for normalised images ``B×3×H×W``."""
        return self.model(images)

    def upsample(self, logits: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
        """``B×K×h×w`` logits → ``B×K×H×W`` with the module's ``align_corners`` rule."""
        return upsample_logits(logits, size, align_corners=self.align_corners)

    def infer(self, images: Tensor) -> Tensor:
        """Evaluation logits of the student: one forward (``inference="whole"``, at the model's
        output stride) or averaged sliding windows (``"slide"``, at the image resolution)."""
        if self.inference == "slide":
            return sliding_window_logits(
                self.model,
                images,
                self.slide_window,
                self.slide_stride,
                align_corners=self.align_corners,
            )
        return self.model(images)

    def segment(self, images: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Evaluation logits (:meth:`infer`) upsampled to ``size`` (default: the image size)."""
        return self.upsample(self.infer(images), size or tuple(images.shape[-2:]))

    @property
    def class_names(self) -> list[str]:
        """Class names for metric keys: given, else the datamodule's, else ``"0".."K-1"``."""
        if self._class_names is not None:
            return self._class_names
        names = getattr(self._datamodule(), "classes", None)
        if names is not None and len(names) == self.num_classes:
            return list(names)
        return [str(i) for i in range(self.num_classes)]

    @property
    def class_subsets(self) -> dict[str, list[int]]:
        """Metric name → class ids averaged into it (the first one is logged as ``mIoU`` too)."""
        if self._class_subsets is not None:
            return self._class_subsets
        subsets = getattr(self._datamodule(), "class_subsets", None)
        if subsets:
            return {k: list(v) for k, v in subsets.items()}
        return {"mIoU": list(range(self.num_classes))}

    def _datamodule(self) -> Any:
        trainer = self._trainer
        return getattr(trainer, "datamodule", None) if trainer is not None else None

    # ------------------------------------------------------------------ training
    def source_loss(self, source: Mapping[str, Tensor]) -> Tensor:
        """Supervised CE on the source batch (mean over valid pixels)."""
        logits = self.model(source["image"])
        return cross_entropy(
            logits,
            source["mask"],
            ignore_index=self.ignore_index,
            align_corners=self.align_corners,
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

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        """Back-propagate each loss in turn, then step the optimiser(s) every k batches."""
        self._restore_rank_buffers()
        if not getattr(self, "_batch_checked", True):
            self.check_batch(batch)
            self._batch_checked = True
        accumulate = self.hparams.accumulate_grad_batches
        total = torch.zeros((), device=self.device)
        batch_size = batch["source"]["image"].shape[0]
        for name, loss in self.training_losses(batch):
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"{type(self).__name__}: the '{name}' loss is {loss.item()} at step "
                    f"{self.uda_step}; lower the learning rate or check the inputs."
                )
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

    @property
    def folds_gradients(self) -> bool:
        """Whether :meth:`fold_gradients` folds (see the ``fold_gradients`` argument)."""
        if not self.hparams.fold_gradients or self.hparams.gradient_clip_val is not None:
            return False
        trainer = self._trainer
        plugin = getattr(trainer, "precision_plugin", None) if trainer is not None else None
        return getattr(plugin, "scaler", None) is None

    def fold_gradients(self) -> None:
        """Fold the gradients of the last backward into each :class:`FoldingSGD` optimiser's
        momentum buffer (no-op for other optimisers or when :attr:`folds_gradients` is off).

        Called after every ``manual_backward`` of :meth:`training_step`; a method that runs its
        own backward passes calls it after each of them.
        """
        if not self.folds_gradients:
            return
        optimizers = self.optimizers(use_pl_optimizer=False)
        for optimizer in optimizers if isinstance(optimizers, list) else [optimizers]:
            if isinstance(optimizer, FoldingSGD):
                optimizer.fold_gradients()

    def check_finite_state(self, part: str | None = None) -> None:
        """Raise if a parameter or buffer of the module (or of its submodule ``part``, e.g.
        ``"teacher"``) became non-finite.

        Called after every optimiser step, inside ``training_step``: Lightning runs the
        checkpoint callbacks of a step after it, so a diverged state never reaches a checkpoint.
        Covers every submodule (student, teacher, discriminators). Costs one fused reduction and
        one host synchronisation per step (measured on one CPU thread: 74 ms for DeepLabV2-R18
        student + teacher, about 2% of its DACS step at 256²).
        """
        module = self if part is None else getattr(self, part)
        bad = first_non_finite(module)
        if bad is None:
            return
        bad = bad if part is None else f"{part}.{bad}"
        raise FloatingPointError(
            f"{type(self).__name__}: {bad} holds NaN or inf after optimiser step {self.uda_step}; "
            "training stopped before this step could be checkpointed. "
            f"{self._last_good_checkpoint()} Lower the learning rate (or clip gradients with "
            "gradient_clip_val=...), check the inputs, and resume from that checkpoint."
        )

    def _last_good_checkpoint(self) -> str:
        trainer = self._trainer
        paths = []
        for callback in getattr(trainer, "checkpoint_callbacks", []) if trainer else []:
            for path in (getattr(callback, "last_model_path", ""), callback.best_model_path):
                if path and path not in paths:
                    paths.append(path)
        if not paths:
            return "No checkpoint was written before it."
        return f"The last good checkpoints: {', '.join(paths)}."

    def optimizer_steps(self) -> None:
        """Step and zero every optimiser (clipping: :meth:`on_before_optimizer_step`), step the
        schedulers."""
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        for opt in optimizers:
            opt.step()  # clipping happens in on_before_optimizer_step, after AMP unscaling
            opt.zero_grad(set_to_none=True)
        schedulers = self.lr_schedulers()
        if schedulers is not None:
            for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
                scheduler.step()
        self.log("train/lr", optimizers[0].param_groups[0]["lr"], batch_size=1)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Lightning's precision plugin calls this hook inside optimizer.step(), after it has
        # unscaled 16-bit AMP gradients; clipping before step() would clip scaled gradients.
        clip = self.hparams.gradient_clip_val
        if clip is None:
            return
        optimizers = self.optimizers(use_pl_optimizer=False)
        segmentor = optimizers[0] if isinstance(optimizers, list) else optimizers
        if optimizer is segmentor:  # e.g. AdvEnt's discriminators are not clipped
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")

    def after_optimizer_step(self) -> None:
        """Hook run after each real optimiser step (``self.uda_step`` already incremented)."""

    # ------------------------------------------------------------------ optimisation
    def total_steps(self) -> int:
        """Length of the poly schedule in optimiser steps."""
        if self.hparams.total_steps:
            return int(self.hparams.total_steps)
        trainer = self.trainer
        if trainer.max_steps and trainer.max_steps > 0:
            return int(trainer.max_steps)
        estimated = trainer.estimated_stepping_batches
        if not math.isfinite(estimated):
            raise ValueError(
                "The poly schedule needs a length: set Trainer(max_steps=N) or the module's "
                "total_steps=N (UDA training is iteration-based)."
            )
        return max(1, int(estimated) // self.hparams.accumulate_grad_batches)

    def segmentor_param_groups(self) -> list[dict[str, Any]]:
        """Backbone (``lr``) and head (``lr * head_lr_mult``) parameter groups.

        With ``no_decay_keys``, each group is split: parameters whose name (in the segmentor)
        contains one of the keys get weight decay 0 (mmcv's ``paramwise_cfg`` ``decay_mult=0``,
        matched by substring as there), in a group named ``<group>_no_decay``.
        """
        backbone, head = parameter_groups(self.model)
        lr = self.hparams.lr
        groups = [{"params": backbone, "lr": lr, "name": "backbone"}]
        if head:
            groups.append({"params": head, "lr": lr * self.hparams.head_lr_mult, "name": "head"})
        keys = tuple(self.hparams.no_decay_keys or ())
        if keys:
            names = {id(p): n for n, p in self.model.named_parameters()}
            split = []
            for group in groups:
                plain = [p for p in group["params"] if not any(k in names[id(p)] for k in keys)]
                free = [p for p in group["params"] if any(k in names[id(p)] for k in keys)]
                split.append({**group, "params": plain})
                split.append(
                    {
                        **group,
                        "params": free,
                        "name": f"{group['name']}_no_decay",
                        "weight_decay": 0.0,
                    }
                )
            groups = split
        return [g for g in groups if g["params"]]

    def make_optimizer(self, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        """The segmentor optimiser over ``groups`` (SGD or AdamW per ``optimizer``)."""
        hp = self.hparams
        if hp.optimizer == "sgd" and hp.momentum > 0:
            return FoldingSGD(groups, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        if hp.optimizer == "sgd":
            return torch.optim.SGD(
                groups, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay
            )
        return torch.optim.AdamW(groups, lr=hp.lr, betas=hp.betas, weight_decay=hp.weight_decay)

    def poly_scheduler(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_steps: int = 0,
        warmup_ratio: float | None = None,
    ) -> torch.optim.lr_scheduler.LambdaLR:
        """Per-step poly decay of every group of ``optimizer`` (see :func:`poly_lr_factor`)."""
        total = self.total_steps()
        power = self.hparams.poly_power
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: poly_lr_factor(
                step, total, power=power, warmup_steps=warmup_steps, warmup_ratio=warmup_ratio
            ),
        )

    def configure_optimizers(self) -> Any:
        optimizer = self.make_optimizer(self.segmentor_param_groups())
        scheduler = self.poly_scheduler(
            optimizer,
            warmup_steps=self.hparams.warmup_steps,
            warmup_ratio=self.hparams.warmup_ratio,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler}}

    def configure_callbacks(self) -> list[Any]:
        # Checked here because Lightning validates Trainer flags against manual optimisation right
        # after this hook, with an error that does not name the module argument to use instead.
        self._check_trainer_flags()
        return []

    def _check_trainer_flags(self) -> None:
        trainer = self._trainer
        if trainer is None:
            return
        if trainer.accumulate_grad_batches != 1:
            raise ValueError(
                f"{type(self).__name__} steps its optimisers itself (each loss is back-propagated "
                "separately), so Trainer(accumulate_grad_batches=...) cannot be used: pass "
                f"accumulate_grad_batches={trainer.accumulate_grad_batches} to the module instead."
            )
        if trainer.gradient_clip_val is not None:
            raise ValueError(
                f"{type(self).__name__} steps its optimisers itself, so Trainer("
                "gradient_clip_val=...) cannot be used: pass gradient_clip_val="
                f"{trainer.gradient_clip_val} to the module instead."
            )

    def require_unused_parameter_detection(self, why: str) -> None:
        """Under DDP, fail unless the strategy finds unused parameters, saying ``why`` the
        method needs it (methods that back-propagate their networks' losses separately)."""
        strategy = self.trainer.strategy
        if isinstance(strategy, DDPStrategy) and not getattr(strategy, "_ddp_kwargs", {}).get(
            "find_unused_parameters", False
        ):
            raise ValueError(
                f"{type(self).__name__} {why}: use "
                "Trainer(strategy='ddp_find_unused_parameters_true') (or DDPStrategy("
                "find_unused_parameters=True))."
            )

    def _check_input_space(self) -> None:
        """The datamodule's datasets must normalise pixels as the module (its weights) expects."""
        data_space = getattr(self._datamodule(), "normalization", None)
        if data_space is None:
            return
        data_space = get_normalization(data_space)
        if data_space != self.normalization:
            raise ValueError(
                f"{type(self).__name__} expects images in the {self.normalization.name!r} input "
                f"space ({self.normalization}) but the datamodule's datasets are normalised as "
                f"{data_space.name!r} ({data_space}). Use one setting for both: pass "
                f"normalization={self.normalization.name!r} to the datasets (or presets), or "
                f"normalization={data_space.name!r} to the module if its weights were trained "
                "on that space."
            )

    def _check_num_classes(self) -> None:
        """The model's ``num_classes`` must equal the datamodule's class count."""
        data_classes = getattr(self._datamodule(), "num_classes", None)
        if data_classes is None or int(data_classes) == self.num_classes:
            return
        raise ValueError(
            f"{type(self).__name__} was built with num_classes={self.num_classes} but the "
            f"datamodule's datasets have {data_classes} classes. Pass num_classes="
            f"{data_classes} (e.g. num_classes=datamodule.num_classes), or map the labels to "
            f"{self.num_classes} train ids."
        )

    def check_batch(self, batch: Mapping[str, Any]) -> None:
        """Check the first training batch against what the method needs (raise ``ValueError``).

        Runs once per ``fit``, on the first batch, so a bad data configuration fails at once
        rather than when a loss first needs it. The base checks the batch contract (source
        images ``B×3×H×W`` with ``B×H×W`` integer masks, target images ``B×3×H×W``); methods
        add their own needs and call ``super().check_batch(batch)``.
        """
        name = type(self).__name__
        for domain in ("source", "target"):
            part = batch.get(domain) if isinstance(batch, Mapping) else None
            if not isinstance(part, Mapping) or "image" not in part:
                raise ValueError(
                    f"{name}: training batches need batch['{domain}']['image'] (got keys "
                    f"{sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__}); "
                    "build them with UDADataModule."
                )
            image = part["image"]
            if image.dim() != 4 or image.shape[1] != 3:
                raise ValueError(
                    f"{name}: batch['{domain}']['image'] must be B×3×H×W, got {tuple(image.shape)}"
                )
        mask = batch["source"].get("mask")
        image = batch["source"]["image"]
        if mask is None or mask.dim() != 3 or mask.shape[0] != image.shape[0]:
            raise ValueError(
                f"{name}: batch['source']['mask'] must be B×H×W train ids for the "
                f"{image.shape[0]} source images, got "
                f"{None if mask is None else tuple(mask.shape)}"
            )
        if mask.is_floating_point():
            raise ValueError(f"{name}: source masks must hold integer train ids, got {mask.dtype}")

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
        self._check_input_space()
        self._check_num_classes()
        self._batch_checked = False
        # Different ranks must draw different mixing masks / augmentations.
        if self.trainer.world_size > 1 and not getattr(self, "_rng_restored", False):
            self.rng.manual_seed(self.hparams.seed + self.trainer.global_rank)

    # ------------------------------------------------------------------ checkpointing
    def _gather_rank_states(self, state: Tensor) -> list[Tensor]:
        """Every rank's copy of a CPU ``uint8`` RNG state (the checkpoint is written by rank 0).

        Each state is cloned into its own storage: ``all_gather`` returns one stacked tensor, and
        its rows saved as they are come back from ``torch.load`` as views of one shared storage,
        which ``torch.Generator.set_state`` misreads (``Invalid mt19937 state``, or a segfault).
        """
        if self._trainer is None or self.trainer.world_size == 1:
            return [state.clone()]
        gathered = self.all_gather(state.to(self.device))
        return [s.cpu().clone() for s in gathered]

    def _gather_rank_buffers(self) -> dict[str, Any] | None:
        """Every rank's floating-point segmentor buffers (BatchNorm statistics), flattened.

        Under DDP each rank's BatchNorm updates its running statistics from its own shard during
        a step, so the ranks' buffers differ when a checkpoint is written, and the state dict
        holds rank 0's only. Keeping each rank's copy lets a resumed run continue exactly (with
        ``SyncBatchNorm`` the copies are equal and this costs one small gather).
        """
        if self._trainer is None or self.trainer.world_size == 1:
            return None
        named = [(n, b) for n, b in self.model.named_buffers() if b.is_floating_point()]
        if not named:
            return None
        flat = torch.cat([b.detach().reshape(-1).float() for _, b in named])
        gathered = self.all_gather(flat)
        return {"names": [n for n, _ in named], "values": [v.cpu().clone() for v in gathered]}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainer = self._trainer
        for optimizer in trainer.optimizers if trainer is not None else []:
            # between accumulated batches the momentum buffers hold folded partial sums
            if isinstance(optimizer, FoldingSGD) and not optimizer.folded_sums_finite():
                raise FloatingPointError(
                    f"{type(self).__name__}: the gradients folded since optimiser step "
                    f"{self.uda_step} hold NaN or inf, so this checkpoint is not written. "
                    f"{self._last_good_checkpoint()} Lower the learning rate or check the "
                    "inputs, and resume from that checkpoint."
                )
        # Called on every rank; per-rank RNG states keep a resumed DDP run on the same stream.
        checkpoint["uda"] = {
            "uda_step": self.uda_step,
            "accumulated": self._accumulated,
            "rng": self._gather_rank_states(self.rng.get_state()),
            "torch_rng": self._gather_rank_states(torch.get_rng_state()),
            "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "rank_buffers": self._gather_rank_buffers(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("uda")
        if state is None:  # e.g. a checkpoint of a plain LightningModule: weights only
            return
        self.uda_step = int(state["uda_step"])
        self._accumulated = int(state["accumulated"])
        rank = self.trainer.global_rank if self._trainer is not None else 0
        if rank < len(state["rng"]):
            # clone: a state loaded from an older checkpoint may still be a view (see above)
            self.rng.set_state(state["rng"][rank].clone().contiguous())
            torch.set_rng_state(state["torch_rng"][rank].clone().contiguous())
            self._rng_restored = True
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda_rng"])
        buffers = state.get("rank_buffers")
        if buffers is not None and rank < len(buffers["values"]):
            # Applied at the start of the first training step: DDP broadcasts rank 0's buffers
            # when it wraps the module and again in its first forward, both after this hook
            # (see _gather_rank_buffers).
            self._pending_rank_buffers = (buffers["names"], buffers["values"][rank])

    def _restore_rank_buffers(self) -> None:
        pending = getattr(self, "_pending_rank_buffers", None)
        if pending is None:
            return
        self._pending_rank_buffers = None
        names, flat = pending
        own = dict(self.model.named_buffers())
        if [n for n in names if n not in own] or sum(own[n].numel() for n in names) != len(flat):
            return  # a different architecture: keep the state dict's (rank 0's) statistics
        offset = 0
        with torch.no_grad():
            for name in names:
                buffer = own[name]
                size = buffer.numel()
                buffer.copy_(flat[offset : offset + size].view_as(buffer).to(buffer))
                offset += size

    # ------------------------------------------------------------------ evaluation
    def _update_iou(self, metric: MulticlassJaccardIndex, batch: Mapping[str, Tensor]) -> None:
        mask = batch["mask"]
        logits = self.segment(batch["image"], size=tuple(mask.shape[-2:]))
        if not bool(torch.isfinite(logits).all()):
            bad = first_non_finite(self.model)
            raise FloatingPointError(
                f"{type(self).__name__}: the segmentor's logits are not finite"
                + (f" ({bad} holds NaN or inf)" if bad else " (the inputs may be)")
                + "; no IoU is reported for a model that diverged. Evaluate an earlier "
                "checkpoint."
            )
        metric.update(logits.argmax(dim=1), mask)

    def _log_iou(self, metric: MulticlassJaccardIndex, prefix: str) -> dict[str, float]:
        per_class = metric.compute() * 100.0  # percent, as the papers report
        with metric.sync_context():
            self.last_confusion[prefix] = metric.confmat.detach().cpu().clone()
        metric.reset()
        results: dict[str, float] = {}
        for name, iou in zip(self.class_names, per_class, strict=True):
            results[f"{prefix}/IoU/{name}"] = float(iou)
        for i, (subset_name, ids) in enumerate(self.class_subsets.items()):
            value = float(torch.nanmean(per_class[ids]))
            results[f"{prefix}/{subset_name}"] = value
            if i == 0 and subset_name != "mIoU":
                results[f"{prefix}/mIoU"] = value
        # NaN (a class absent from prediction and label) would poison loggers' plots; skip it.
        self.log_dict({k: v for k, v in results.items() if not math.isnan(v)}, sync_dist=False)
        self.last_iou[prefix] = per_class.cpu()
        return results

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        self._update_iou(self.val_iou, batch)

    def on_validation_epoch_end(self) -> None:
        self._log_iou(self.val_iou, "val")

    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        self._update_iou(self.test_iou, batch)

    def on_test_epoch_end(self) -> None:
        self._log_iou(self.test_iou, "test")

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        """Full-resolution train-id label maps.

        Returns ``{"pred": list of H_i×W_i long tensors, "path": list | None}``; each map has the
        item's ``orig_size`` when the batch carries it (so predictions can be written as
        Cityscapes labelId PNGs at the original resolution), else the image size.
        """
        images = batch["image"]
        logits = self.infer(images)
        sizes = batch.get("orig_size")
        preds = []
        for i in range(images.shape[0]):
            size = tuple(int(s) for s in sizes[i]) if sizes is not None else images.shape[-2:]
            preds.append(self.upsample(logits[i : i + 1], tuple(size)).argmax(dim=1)[0])
        return {"pred": preds, "path": batch.get("path")}
