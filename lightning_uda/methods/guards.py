"""`TrainingGuards`: the checks that make a bad run fail early, with an error naming the fix.

- the first training batch against the data contract (:meth:`TrainingGuards.check_batch`);
- the datamodule's input space and class count against the module's, at the start of ``fit``;
- Trainer flags that manual optimisation cannot honour (accumulation, clipping), named with the
  module argument to use instead;
- DDP's unused-parameter detection for methods that need it;
- every loss finite before its backward, and every parameter and buffer finite after each
  optimiser step (:meth:`TrainingGuards.check_finite_state`), so a diverged state never reaches
  a checkpoint.

A mixin of :class:`~lightning_uda.methods.UDAModule`: it reads the module's ``num_classes``,
``normalization``, ``uda_step`` and its trainer, and owns no state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor, nn

from lightning_uda.normalization import get_normalization


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


class TrainingGuards:
    """Mixin of :class:`~lightning_uda.methods.UDAModule`: batch, data and finite-state checks."""

    # ------------------------------------------------------------------ data
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

    def check_data_against_module(self) -> None:
        """The datamodule's input space and class count must be the module's (start of fit)."""
        datamodule = self._datamodule()
        data_space = getattr(datamodule, "normalization", None)
        if data_space is not None:
            data_space = get_normalization(data_space)
            if data_space != self.normalization:
                raise ValueError(
                    f"{type(self).__name__} expects images in the {self.normalization.name!r} "
                    f"input space ({self.normalization}) but the datamodule's datasets are "
                    f"normalised as {data_space.name!r} ({data_space}). Use one setting for both: "
                    f"pass normalization={self.normalization.name!r} to the datasets (or "
                    f"presets), or normalization={data_space.name!r} to the module if its "
                    "weights were trained on that space."
                )
        data_classes = getattr(datamodule, "num_classes", None)
        if data_classes is not None and int(data_classes) != self.num_classes:
            raise ValueError(
                f"{type(self).__name__} was built with num_classes={self.num_classes} but the "
                f"datamodule's datasets have {data_classes} classes. Pass num_classes="
                f"{data_classes} (e.g. num_classes=datamodule.num_classes), or map the labels "
                f"to {self.num_classes} train ids."
            )

    # ------------------------------------------------------------------ trainer
    def check_trainer_flags(self) -> None:
        """Trainer flags that manual optimisation cannot honour, named with the module
        argument that replaces them (called from ``configure_callbacks``, before Lightning's own
        check, whose error does not name the module argument)."""
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

    # ------------------------------------------------------------------ finite state
    def check_loss(self, name: str, loss: Tensor, lower: str = "the learning rate") -> None:
        """Raise ``FloatingPointError`` if the loss ``name`` is not finite (before its backward),
        naming what to ``lower`` (e.g. an adversary's ``discriminator_lr``)."""
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{type(self).__name__}: the '{name}' loss is {loss.item()} at step "
                f"{self.uda_step}; lower {lower} or check the inputs."
            )

    def check_finite_state(self, part: str | None = None) -> None:
        """Raise if a parameter or buffer of the module (or of its submodule ``part``, e.g.
        ``"teacher"``) became non-finite.

        Called after every optimiser step, inside ``training_step``: Lightning runs the
        checkpoint callbacks of a step after it, so a diverged state never reaches a checkpoint.
        Covers every submodule (student, teacher, discriminators); one host synchronisation per
        step (its cost: ``benchmarks/README.md``).
        """
        module = self if part is None else getattr(self, part)
        bad = first_non_finite(module)
        if bad is None:
            return
        bad = bad if part is None else f"{part}.{bad}"
        raise FloatingPointError(
            f"{type(self).__name__}: {bad} holds NaN or inf after optimiser step {self.uda_step}; "
            "training stopped before this step could be checkpointed. "
            f"{self.last_good_checkpoint()} Lower the learning rate (or clip gradients with "
            "gradient_clip_val=...), check the inputs, and resume from that checkpoint."
        )

    def last_good_checkpoint(self) -> str:
        """A sentence naming the checkpoints written so far (for error messages)."""
        trainer = self._trainer
        paths = []
        for callback in getattr(trainer, "checkpoint_callbacks", []) if trainer else []:
            for path in (getattr(callback, "last_model_path", ""), callback.best_model_path):
                if path and path not in paths:
                    paths.append(path)
        if not paths:
            return "No checkpoint was written before it."
        return f"The last good checkpoints: {', '.join(paths)}."
