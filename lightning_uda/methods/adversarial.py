"""What adversarial methods share: domain labels and losses, freezing, and adversary optimisers.

AdvEnt, AdaptSegNet, DANN and LSD-seg each pit the segmentor against a network that tells the
domains apart. The pure functions here are their common objective pieces (domain labels
source 0 / target 1, BCE-with-logits against a constant label, the discriminator's
``½ BCE(D(s), 0) + ½ BCE(D(t), 1)``, its accuracy, and :func:`frozen`). :class:`AdversarialMixin`
is the common *step* of the methods whose adversaries have their own optimisers (AdvEnt,
AdaptSegNet, LSD-seg); DANN trains its domain classifier in the segmentor's own backward through
gradient reversal, so it uses the functions only.

**One iteration of an** :class:`AdversarialMixin` **method.** :meth:`UDAModule.training_step`
back-propagates the segmentor's losses one at a time (the adversaries frozen, :func:`frozen`) and
steps the segmentor every ``accumulate_grad_batches`` batches; then
:meth:`AdversarialMixin.adversary_updates` back-propagates each adversary's loss on inputs
detached from the segmentor and steps the adversary's optimiser in the same batches. The
adversaries' losses use values computed before the segmentor's step and their weights are not
touched by it, so this is the same update as the papers' code (backward everything, then step
every network), except that each optimiser's gradients are scaled and unscaled with the same AMP
loss scale (``16-mixed`` updates the scale after every optimiser step). With
``accumulate_grad_batches = k > 1`` under ``16-mixed``, an adversary's first k − 1 micro-batches
were scaled before the segmentor's step updated the scale, so on the rare steps where the scale
changes (growth every 2000 clean steps, or an inf) their gradients are unscaled by a factor 2 off
for that step; Lightning's AMP plugin updates the scale once per optimiser step, so no order is
exact there.

**Iterations, not optimiser steps.** Lightning 2.x counts ``trainer.global_step`` (and stops at
``Trainer(max_steps=N)``) by the calls of ``LightningOptimizer.step()`` in manual optimisation:
stepping several optimisers that way would count several steps per iteration, so ``max_steps=N``
would stop early and the poly schedules (built for N) would stop part-way. The segmentor's
optimiser is therefore stepped through ``LightningOptimizer.step()`` (one count per iteration) and
the adversaries' through ``trainer.strategy.optimizer_step()``, the call
``LightningOptimizer.step()`` itself delegates to, which applies the precision plugin (AMP
gradient unscaling and inf/NaN skipping, ``on_before_optimizer_step`` hooks) but not the loop's
step counter. So ``max_steps=N`` means N iterations, ``global_step == uda_step``, and step-based
checkpointing and logging count iterations (``tests/methods/test_advent.py`` checks it, and why).

**Clipping and checkpoints.** ``gradient_clip_val`` clips the segmentor only (the adversaries
are not clipped, as in AdvEnt). The adversaries are submodules of the LightningModule and their
optimisers and schedulers are ordinary Lightning ones, so all of them move to the device and are
saved in / restored from checkpoints with the segmentor.

**DDP** needs ``strategy="ddp_find_unused_parameters_true"``: each backward reaches one network
only; the mixin fails at the start of ``fit`` with that fix otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_uda.methods.base import check_range

__all__ = [
    "SOURCE_DOMAIN",
    "TARGET_DOMAIN",
    "AdversarialMixin",
    "check_betas",
    "discriminator_loss",
    "domain_accuracy",
    "domain_bce",
    "frozen",
]

#: Domain labels of a binary domain classifier (AdvEnt's convention; tllib's DANN uses source 1,
#: target 0, which with the symmetric loss only flips the sign of the logit).
SOURCE_DOMAIN = 0.0
TARGET_DOMAIN = 1.0


def domain_bce(logits: Tensor, domain: float) -> Tensor:
    """BCE-with-logits of domain logits (any shape, e.g. ``B×1×h×w``) against the constant label
    ``domain`` everywhere, averaged over all elements."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, domain))


def discriminator_loss(
    source_logits: Tensor,
    target_logits: Tensor,
    criterion: Callable[[Tensor, float], Tensor] = domain_bce,
) -> Tensor:
    """The discriminator's objective ``½ criterion(D(s), source) + ½ criterion(D(t), target)``.

    Each domain's term is a mean over its own logits, so each domain weighs ½ whatever its crop
    size (AdvEnt's D step; DANN's domain loss, as tllib's ``DomainAdversarialLoss``).

    Args:
        source_logits: ``D``'s logits on source inputs (``B_s×1×h_s×w_s``).
        target_logits: ``D``'s logits on target inputs (``B_t×1×h_t×w_t``).
        criterion: scores logits against a constant label (default :func:`domain_bce`).
    """
    return 0.5 * (criterion(source_logits, SOURCE_DOMAIN) + criterion(target_logits, TARGET_DOMAIN))


@torch.no_grad()
def domain_accuracy(source_logits: Tensor, target_logits: Tensor) -> Tensor:
    """Mean of the two domains' accuracies of a domain classifier (0-d, in [0, 1]; a position
    counts as target when its logit is >= 0). 0.5 is chance."""
    accuracies = [
        ((logits >= 0).to(logits.dtype) == label).float().mean()
        for logits, label in ((source_logits, SOURCE_DOMAIN), (target_logits, TARGET_DOMAIN))
    ]
    return 0.5 * (accuracies[0] + accuracies[1])


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Turn off ``requires_grad`` of ``module``'s parameters inside the block (then restore it).

    A forward pass run inside the block builds no graph to those parameters, so a later backward
    gives them no gradient (AdvEnt: "only train segnet, don't accumulate grads in discriminators").
    """
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def check_betas(owner: str, name: str, betas: Sequence[float]) -> None:
    """Raise ``ValueError`` naming ``owner``'s argument ``name`` unless ``betas`` is a pair of
    Adam betas in [0, 1)."""
    if len(betas) != 2:
        raise ValueError(f"{owner}: {name} must be a pair (beta1, beta2), got {betas!r}")
    for i, beta in enumerate(betas):
        check_range(owner, f"{name}[{i}]", beta, 0, 1, high_open=True)


def _no_closure() -> None:
    """Closure for a manual optimiser step: the gradients are already there."""
    return None


class AdversarialMixin:
    """Adversary networks with their own optimisers, updated after the segmentor in each
    iteration (see the module docstring for the order, the step counting and DDP).

    Mix into a :class:`~lightning_uda.methods.UDAModule` subclass before it
    (``class AdvEntModule(AdversarialMixin, MultiLevelModule)``). The method:

    - computes its segmentor losses in :meth:`~UDAModule.training_losses` (or
      ``adaptation_losses``), running its adversaries inside :func:`frozen`, and keeps what the
      adversaries' losses need, detached;
    - implements :meth:`adversary_updates`: back-propagate each adversary's loss with
      :meth:`adversary_backward`, step it with :meth:`adversary_optimizer_step` when asked;
    - returns the segmentor's optimiser configuration first from ``configure_optimizers``, then
      one :meth:`adversary_optimizer` per adversary.
    """

    # ------------------------------------------------------------------ the method's part
    def adversary_updates(self, batch: Mapping[str, Any], step: bool) -> None:
        """Back-propagate the adversaries' losses of this batch and, if ``step``, step their
        optimisers. Runs after the segmentor's backward (and step, if ``step``)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the iteration
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        """The segmentor's losses and step (:meth:`UDAModule.training_step`), then
        :meth:`adversary_updates` (stepping in the batches where the segmentor stepped)."""
        self._segmentor_stepped = False
        total = super().training_step(batch, batch_idx)  # type: ignore[misc]
        self.adversary_updates(batch, step=self._segmentor_stepped)
        return total

    def optimizer_steps(self) -> None:
        """Step the segmentor only (called by :meth:`UDAModule.training_step` every
        ``accumulate_grad_batches`` batches); the adversaries step in :meth:`adversary_updates`."""
        self.segmentor_optimizer_step()
        self._segmentor_stepped = True

    def segmentor_optimizer_step(self) -> None:
        """Step (through ``LightningOptimizer``: one ``global_step``; clipped in
        ``on_before_optimizer_step``) and zero the segmentor's optimiser, step its poly schedule."""
        optimizer = self.optimizers()[0]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler = self._scheduler_of(optimizer.optimizer)
        if scheduler is not None:
            scheduler.step()
        self.log("train/lr", optimizer.param_groups[0]["lr"], batch_size=1)

    def adversary_backward(self, name: str, loss: Tensor, hint: str) -> None:
        """Back-propagate an adversary's ``loss`` (scaled for gradient accumulation), after
        checking it is finite (``hint``: the argument to lower when it is not)."""
        self.check_loss(name, loss, lower=hint)
        self.manual_backward(loss / self.hparams.accumulate_grad_batches)

    def adversary_optimizer_step(self, index: int, name: str) -> None:
        """Step and zero optimiser ``index`` (an adversary's) and step its schedule if it has one;
        log its learning rate as ``train/lr_<name>``.

        Goes through the strategy (precision plugin included) but not ``LightningOptimizer``, so
        Lightning's step counter keeps counting iterations.
        """
        optimizer = self.optimizers(use_pl_optimizer=False)[index]
        self.trainer.strategy.optimizer_step(optimizer, _no_closure, model=self)
        optimizer.zero_grad(set_to_none=True)
        scheduler = self._scheduler_of(optimizer)
        if scheduler is not None:
            scheduler.step()
        self.log(f"train/lr_{name}", optimizer.param_groups[0]["lr"], batch_size=1)

    def _scheduler_of(self, optimizer: torch.optim.Optimizer) -> Any:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return None
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            if scheduler.optimizer is optimizer:
                return scheduler
        return None

    # ------------------------------------------------------------------ optimisation
    def adversary_optimizer(
        self, parameters: Iterable[nn.Parameter], lr: float, betas: Iterable[float], poly: bool
    ) -> dict[str, Any]:
        """Lightning's configuration of an adversary's Adam (no weight decay), with the
        segmentor's per-iteration poly decay (no warm-up) if ``poly``, else a constant rate."""
        optimizer = torch.optim.Adam(parameters, lr=lr, betas=tuple(betas))
        if not poly:
            return {"optimizer": optimizer}
        scheduler = self.poly_scheduler(optimizer, warmup_steps=0)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler}}

    def on_fit_start(self) -> None:
        super().on_fit_start()  # type: ignore[misc]
        self.require_unused_parameter_detection(
            "back-propagates the segmentor's and its adversaries' losses separately, so each "
            "backward leaves the other networks without gradients"
        )
